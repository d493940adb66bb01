// FP8 block quantization (SPEC.md section 2): E4M3 values with one FP32 scale per block.
//
// - Activations and activation gradients: 1x128 tiles along the last dim (K).
// - Weights: 128x128 blocks over the last two dims.
// scale = amax(block) / 448, so the block's largest magnitude maps to the E4M3 maximum;
// q = e4m3(x / scale) (IEEE division, round to nearest even, saturating); x ~= q * scale.
// An all-zero block gets scale 1. With pow2_scales the scale is rounded up to a power of two
// (2^ceil(log2(amax / 448))), which makes the dequantization exact in any later rescaling.
// The CPU and CUDA paths produce bit-identical data and scales.
//
// A last dim that is not a multiple of 128 gives a ragged final tile/block; its scale is computed
// over the valid elements only.
#pragma once

#include <cstdint>

#include "kernels/tensor.h"

namespace fathom {

enum class ScaleBlock : uint8_t {
  k1x128,    // scales: (rows, ceil(K / 128)) where rows = product of leading dims
  k128x128,  // scales: (batch..., ceil(M / 128), ceil(K / 128)) for data (batch..., M, K)
};

constexpr int64_t kFp8BlockSize = 128;

struct Fp8Options {
  bool pow2_scales = false;
};

// E4M3 data with its scales.
struct Fp8Tensor {
  Tensor data;    // f8e4m3, the shape of the source tensor
  Tensor scales;  // f32, see ScaleBlock
  ScaleBlock block = ScaleBlock::k1x128;

  const Shape& shape() const { return data.shape(); }
  Device device() const { return data.device(); }
};

// Shape of the scale tensor for data of `shape`.
Shape fp8_scale_shape(absl::Span<const int64_t> shape, ScaleBlock block);

// x: f32 or bf16, >= 1-D (k1x128) or >= 2-D (k128x128). Result on x's device.
Fp8Tensor quantize_fp8(const Tensor& x, ScaleBlock block, Fp8Options options = {});
// Into preallocated out.data / out.scales (shapes as above, block taken from out.block).
void quantize_fp8_into(const Tensor& x, Fp8Tensor& out, Fp8Options options = {});
// out: f32 or bf16 with q's shape; out = q.data * scale.
void dequantize_fp8(const Fp8Tensor& q, Tensor& out);

}  // namespace fathom
