// AdamW over a model's parameters (SPEC.md section 2): FP32 master weights and gradients, FP32 or
// BF16 moments, decoupled weight decay on matrices only, global-norm gradient clipping.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/tensor.h"
#include "model/module.h"

namespace fathom::trainer {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;  // max global gradient norm; <= 0 disables clipping
  DType moments = DType::kF32;  // kF32 or kBF16
};

struct StepResult {
  double grad_norm = 0;  // before clipping
  bool skipped = false;  // a non-finite gradient norm: parameters and moments left untouched
};

class AdamW {
 public:
  // Moments are allocated zero on each parameter's device. The parameters must outlive this.
  AdamW(model::ParameterList params, const AdamWOptions& options);

  // Clips the gradients, then updates every parameter with learning rate lr and bumps its
  // version. A non-finite norm skips the update (and does not count as a step).
  StepResult step(double lr);
  // Sets every gradient to 0.
  void zero_grad();

  // Steps taken so far (the bias-correction t of the next step is steps() + 1).
  int64_t steps() const { return steps_; }
  void set_steps(int64_t steps) { steps_ = steps; }
  const model::ParameterList& parameters() const { return params_; }
  // The first and second moment of parameter i (checkpoint names "optim.m.<name>",
  // "optim.v.<name>").
  Tensor& m(size_t i) { return m_[i]; }
  Tensor& v(size_t i) { return v_[i]; }

 private:
  model::ParameterList params_;
  AdamWOptions options_;
  std::vector<Tensor> m_;
  std::vector<Tensor> v_;
  int64_t steps_ = 0;
};

}  // namespace fathom::trainer
