// CPU rotary embedding (kernels/ops/rope.h): each (token, head) row rotates its last `dim`
// values by the table's angles for the token's position.
#include <cstdint>

#include "kernels/cpu/ops.h"

namespace fathom::cpu {
namespace {

constexpr int64_t kParallelMin = 1 << 15;

// (a, b) -> (a cos - b sin, a sin + b cos); the inverse negates sin.
template <typename T>
void rope_typed(T* x, const int32_t* positions, const float* cos, const float* sin, int64_t tokens,
                int64_t heads, int64_t head_dim, int64_t half, RopeStyle style, float sign) {
  const int64_t offset = head_dim - 2 * half;
#pragma omp parallel for schedule(static) if (tokens > 1 && tokens * heads * half >= kParallelMin)
  for (int64_t t = 0; t < tokens; ++t) {
    const float* c = cos + static_cast<int64_t>(positions[t]) * half;
    const float* s = sin + static_cast<int64_t>(positions[t]) * half;
    for (int64_t h = 0; h < heads; ++h) {
      T* row = x + (t * heads + h) * head_dim + offset;
      if (style == RopeStyle::kInterleaved) {
        for (int64_t i = 0; i < half; ++i) {
          const float a = to_float(row[2 * i]);
          const float b = to_float(row[2 * i + 1]);
          const float si = sign * s[i];
          row[2 * i] = from_float<T>(a * c[i] - b * si);
          row[2 * i + 1] = from_float<T>(a * si + b * c[i]);
        }
      } else {
        T* lo = row;
        T* hi = row + half;
        for (int64_t i = 0; i < half; ++i) {
          const float a = to_float(lo[i]);
          const float b = to_float(hi[i]);
          const float si = sign * s[i];
          lo[i] = from_float<T>(a * c[i] - b * si);
          hi[i] = from_float<T>(a * si + b * c[i]);
        }
      }
    }
  }
}

}  // namespace

void rope_apply(Tensor& x, const Tensor& positions, const RopeTable& table, bool inverse) {
  if (x.numel() == 0) return;
  const int64_t half = table.cos.dim(1);
  const float sign = inverse ? -1.0f : 1.0f;
  const int32_t* pos = positions.data<int32_t>();
  const float* c = table.cos.data<float>();
  const float* s = table.sin.data<float>();
  if (x.dtype() == DType::kBF16) {
    rope_typed(x.data<bf16>(), pos, c, s, x.dim(0), x.dim(1), x.dim(2), half, table.style, sign);
  } else {
    rope_typed(x.data<float>(), pos, c, s, x.dim(0), x.dim(1), x.dim(2), half, table.style, sign);
  }
}

}  // namespace fathom::cpu
