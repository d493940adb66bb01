// AdamW update on FP32 master weights with FP32 or BF16 moments (SPEC.md section 2).
#pragma once

#include <cstdint>

#include "kernels/tensor.h"

namespace fathom {

struct AdamWConfig {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;
  int64_t step = 1;  // 1-based step number, for bias correction
};

// Decoupled weight decay, bias-corrected moments:
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= lr * (m / (1-b1^t) / (sqrt(v / (1-b2^t)) + eps) + wd * p)
// param, grad: f32, same shape;  m, v: both f32 or both bf16 (computed in f32, stored rounded
// to nearest even).
void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                  const AdamWConfig& config);

}  // namespace fathom
