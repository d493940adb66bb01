// CPU RMSNorm (kernels/ops/norm.h). Rows run in parallel; the weight gradient is summed over
// fixed row chunks and then over chunks in order, so it does not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu/ops.h"

namespace fathom::cpu {
namespace {

constexpr int64_t kParallelMin = 1 << 15;
// The weight gradient is reduced over at most this many row chunks.
constexpr int64_t kMaxChunks = 256;
constexpr int64_t kMinChunkRows = 16;

template <typename T>
void rmsnorm_forward_typed(const T* x, const float* w, float eps, T* y, float* rstd, int64_t rows,
                           int64_t d) {
#pragma omp parallel for schedule(static) if (rows > 1 && rows * d >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * d;
    T* yr = y + r * d;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < d; ++j) {
      const float v = to_float(xr[j]);
      ss += v * v;
    }
    const float s = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
    rstd[r] = s;
    for (int64_t j = 0; j < d; ++j) yr[j] = from_float<T>(to_float(xr[j]) * s * w[j]);
  }
}

// With y = x r w and r = (mean(x^2) + eps)^-1/2:
//   dx_j = r w_j dy_j - x_j r^3 / D * sum_k dy_k w_k x_k;   dw_j += sum_t dy_tj x_tj r_t.
template <typename T>
void rmsnorm_backward_typed(const T* dy, const T* x, const float* w, const float* rstd, T* dx,
                            float* dw, int64_t rows, int64_t d) {
  const int64_t chunk_rows = std::max(kMinChunkRows, (rows + kMaxChunks - 1) / kMaxChunks);
  const int64_t chunks = (rows + chunk_rows - 1) / chunk_rows;
  std::vector<float> partial(static_cast<size_t>(chunks * d));
  const bool parallel = rows * d >= kParallelMin;

#pragma omp parallel for schedule(static) if (parallel && chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    float* pw = partial.data() + c * d;
    std::fill(pw, pw + d, 0.0f);
    const int64_t end = std::min(rows, (c + 1) * chunk_rows);
    for (int64_t r = c * chunk_rows; r < end; ++r) {
      const T* dyr = dy + r * d;
      const T* xr = x + r * d;
      T* dxr = dx + r * d;
      const float s = rstd[r];
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < d; ++j) dot += to_float(dyr[j]) * w[j] * to_float(xr[j]);
      const float k = dot * s * s * s / static_cast<float>(d);
      for (int64_t j = 0; j < d; ++j) {
        const float xv = to_float(xr[j]);
        const float g = to_float(dyr[j]);
        dxr[j] = from_float<T>(s * w[j] * g - xv * k);
        pw[j] += g * xv * s;
      }
    }
  }

  // Sum the chunk partials in chunk order, columns in parallel.
  constexpr int64_t kCols = 256;
  const int64_t col_blocks = (d + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (parallel && col_blocks > 1)
  for (int64_t b = 0; b < col_blocks; ++b) {
    const int64_t j0 = b * kCols;
    const int64_t j1 = std::min(d, j0 + kCols);
    for (int64_t c = 0; c < chunks; ++c) {
      const float* pw = partial.data() + c * d;
      for (int64_t j = j0; j < j1; ++j) dw[j] += pw[j];
    }
  }
}

}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) {
  const int64_t d = w.numel();
  if (x.numel() == 0 || d == 0) return;
  const int64_t rows = x.numel() / d;
  if (x.dtype() == DType::kBF16) {
    rmsnorm_forward_typed(x.data<bf16>(), w.data<float>(), eps, y.data<bf16>(), rstd.data<float>(),
                          rows, d);
  } else {
    rmsnorm_forward_typed(x.data<float>(), w.data<float>(), eps, y.data<float>(),
                          rstd.data<float>(), rows, d);
  }
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor& dw) {
  const int64_t d = w.numel();
  if (x.numel() == 0 || d == 0) return;
  const int64_t rows = x.numel() / d;
  if (x.dtype() == DType::kBF16) {
    rmsnorm_backward_typed(dy.data<bf16>(), x.data<bf16>(), w.data<float>(), rstd.data<float>(),
                           dx.data<bf16>(), dw.data<float>(), rows, d);
  } else {
    rmsnorm_backward_typed(dy.data<float>(), x.data<float>(), w.data<float>(), rstd.data<float>(),
                           dx.data<float>(), dw.data<float>(), rows, d);
  }
}

}  // namespace fathom::cpu
