// RMSNorm: y = x / sqrt(mean(x^2) + eps) * w, over the last dim.
#pragma once

#include "kernels/tensor.h"

namespace fathom {

// x: (T, D) f32/bf16 (leading dims flattened);  w: (D) f32;  y: like x;
// rstd: (T) f32, 1 / sqrt(mean(x^2) + eps), saved for backward.
void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd);
// dx (=) like x;  dw (+=) (D) f32.
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor& dw);

}  // namespace fathom
