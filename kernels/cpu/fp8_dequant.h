// Dequantization into f32 scratch for other CPU kernels (the FP8 GEMMs dequantize, then sgemm).
// Not for use outside kernels/cpu/.
#pragma once

#include "kernels/fp8.h"

namespace fathom::cpu {

// out (q.shape() floats) = q.data * scale, OpenMP-parallel over rows for large tensors.
void dequantize_fp8_f32(const Fp8Tensor& q, float* out);

}  // namespace fathom::cpu
