// Dequantization for other CPU kernels (the FP8 GEMMs), with the choice of running serially:
// an OpenMP loop right before a threaded sgemm slows the sgemm down (kernels/cpu/blas.h).
// Not for use outside kernels/cpu/.
#pragma once

#include "kernels/fp8.h"

namespace fathom::cpu {

// out (q.shape() floats) = q.data * scale, with OpenMP when `parallel`.
void dequantize_fp8_f32(const Fp8Tensor& q, float* out, bool parallel);

}  // namespace fathom::cpu
