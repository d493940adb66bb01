// FP8 E4M3 block quantization on the host. Must stay bit-identical to kernels/cuda/: the amax is
// an fmaxf reduction of |x| (order does not matter for max), scale = amax / 448 in f32, and each
// element is float_to_fp8e4m3(x / scale) with IEEE division and saturation (here through the
// branch-free encode_e4m3_saturating, equal to it for every float).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/fp8_dequant.h"
#include "kernels/cpu/fp8_encode.h"
#include "kernels/cpu/ops.h"
#include "kernels/dtype.h"

namespace fathom::cpu {
namespace {

constexpr int64_t kBlock = kFp8BlockSize;

// The scale for a block whose largest magnitude is amax.
float block_scale(float amax, bool pow2) {
  float scale = amax / kFp8E4M3Max;
  // An all-zero block gets scale 1; so does one whose amax / 448 underflows f32 (its values are
  // below 448 * 2^-149 and quantize to 0 either way).
  if (!(scale > 0.0f)) return 1.0f;
  if (pow2 && std::isfinite(scale)) {
    // scale = m * 2^e with m in [0.5, 1): the next power of two up is 2^e, or scale itself when
    // m == 0.5. frexp/ldexp are exact.
    int e = 0;
    const float m = std::frexp(scale, &e);
    scale = m == 0.5f ? scale : std::ldexp(1.0f, e);
  }
  return scale;
}

// fmaxf(amax, |v|) for an amax that is not NaN (it starts at 0 and fmaxf never returns NaN
// then): a NaN v compares false and is skipped, as fmaxf skips it.
inline float max_abs(float amax, float v) {
  const float a = std::fabs(v);
  return a > amax ? a : amax;
}

// The fmaxf reduction of |x[0, n)| from 0. Eight running maxima, merged at the end, let the
// compiler vectorise it (a max does not depend on the order).
template <typename T>
float block_amax(const T* x, int64_t n) {
  constexpr int kLanes = 8;
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lanes[j] = max_abs(lanes[j], to_float(x[i + j]));
  }
  for (; i < n; ++i) lanes[0] = max_abs(lanes[0], to_float(x[i]));
  float amax = 0.0f;
  for (float lane : lanes) amax = max_abs(amax, lane);
  return amax;
}

template <typename T>
void quantize_1x128(const T* x, int64_t rows, int64_t k, bool pow2, fp8e4m3* q, float* scales) {
  const int64_t kb = (k + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (rows * k > (1 << 15))
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < kb; ++b) {
      const int64_t begin = r * k + b * kBlock;
      const int64_t end = r * k + std::min(k, (b + 1) * kBlock);
      const float scale = block_scale(block_amax(x + begin, end - begin), pow2);
      scales[r * kb + b] = scale;
      for (int64_t i = begin; i < end; ++i) {
        q[i].bits = encode_e4m3_saturating(to_float(x[i]) / scale);
      }
    }
  }
}

// x: (batch, m, k); one scale per 128x128 block of each batch entry.
template <typename T>
void quantize_128x128(const T* x, int64_t batch, int64_t m, int64_t k, bool pow2, fp8e4m3* q,
                      float* scales) {
  const int64_t mb = (m + kBlock - 1) / kBlock;
  const int64_t kb = (k + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(dynamic) if (batch * m * k > (1 << 15))
  for (int64_t task = 0; task < batch * mb; ++task) {
    const int64_t g = task / mb;
    const int64_t row0 = (task % mb) * kBlock;
    const int64_t row1 = std::min(m, row0 + kBlock);
    std::vector<float> amax(static_cast<size_t>(kb), 0.0f);
    for (int64_t r = row0; r < row1; ++r) {
      const T* row = x + (g * m + r) * k;
      for (int64_t b = 0; b < kb; ++b) {
        const int64_t begin = b * kBlock;
        amax[b] = max_abs(amax[b], block_amax(row + begin, std::min(k, begin + kBlock) - begin));
      }
    }
    float* block_scales = scales + task * kb;
    for (int64_t b = 0; b < kb; ++b) block_scales[b] = block_scale(amax[b], pow2);
    for (int64_t r = row0; r < row1; ++r) {
      const int64_t offset = (g * m + r) * k;
      for (int64_t b = 0; b < kb; ++b) {
        const float scale = block_scales[b];
        const int64_t end = offset + std::min(k, (b + 1) * kBlock);
        for (int64_t i = offset + b * kBlock; i < end; ++i) {
          q[i].bits = encode_e4m3_saturating(to_float(x[i]) / scale);
        }
      }
    }
  }
}

template <typename T>
void quantize_typed(const Tensor& x, Fp8Tensor& out, bool pow2) {
  const int64_t k = x.dim(-1);
  fp8e4m3* q = out.data.data<fp8e4m3>();
  float* scales = out.scales.data<float>();
  if (out.block == ScaleBlock::k1x128) {
    const int64_t rows = k == 0 ? 0 : x.numel() / k;
    quantize_1x128(x.data<T>(), rows, k, pow2, q, scales);
  } else {
    const int64_t m = x.dim(-2);
    const int64_t batch = m * k == 0 ? 0 : x.numel() / (m * k);
    quantize_128x128(x.data<T>(), batch, m, k, pow2, q, scales);
  }
}

// out = q * (the scale of the element's block).
template <typename T>
void dequantize_typed(const Fp8Tensor& q, T* y) {
  const fp8e4m3* data = q.data.data<fp8e4m3>();
  const float* scales = q.scales.data<float>();
  const int64_t k = q.data.dim(-1);
  if (k == 0 || q.data.numel() == 0) return;
  const int64_t kb = (k + kBlock - 1) / kBlock;
  const int64_t rows = q.data.numel() / k;
  // Rows of the (rows, k) view; for 128x128 blocks, row r of batch entry g = r / m uses scale row
  // g * mb + (r % m) / 128.
  const int64_t m = q.block == ScaleBlock::k1x128 ? 1 : q.data.dim(-2);
  const int64_t mb = (m + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (q.data.numel() > (1 << 15))
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t scale_row = q.block == ScaleBlock::k1x128 ? r : (r / m) * mb + (r % m) / kBlock;
    const float* row_scales = scales + scale_row * kb;
    for (int64_t i = 0; i < k; ++i) {
      y[r * k + i] = from_float<T>(fp8e4m3_to_float(data[r * k + i]) * row_scales[i / kBlock]);
    }
  }
}

}  // namespace

void quantize_fp8_into(const Tensor& x, Fp8Tensor& out, Fp8Options options) {
  if (x.dtype() == DType::kF32) {
    quantize_typed<float>(x, out, options.pow2_scales);
  } else {
    quantize_typed<bf16>(x, out, options.pow2_scales);
  }
}

void dequantize_fp8(const Fp8Tensor& q, Tensor& out) {
  if (out.dtype() == DType::kF32) {
    dequantize_typed(q, out.data<float>());
  } else {
    dequantize_typed(q, out.data<bf16>());
  }
}

void dequantize_fp8_f32(const Fp8Tensor& q, float* out) {
  dequantize_typed(q, out);
}

}  // namespace fathom::cpu
