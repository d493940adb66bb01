// Linear layers in the three training precisions (model/precision.h): a dense Linear y = x W^T
// and the GroupedLinear of the routed experts (one weight per expert, tokens in the contiguous
// layout of kernels/ops/gemm.h).
//
// Weights are stored [out, in] (DeepSeek's layout) as f32 master Parameters. Under bf16 / fp8 the
// layer keeps a working copy of the weights (bf16, or E4M3 with 128x128 scales, plus the transposed
// copy the input-gradient GEMM needs), rebuilt when Parameter::version changes.
//
// FP8 (SPEC.md section 2), with 1x128 tiles along the reduced dim of every activation operand:
//   forward       y  = q(x) q(W)^T                         x tiles along in
//   input grad    dx = q(dy) q(W^T)^T                      dy tiles along out
//   weight grad   dW += q(dy^T) q(x^T)^T                   both tiled along tokens
// Nothing is saved by forward except what the caller keeps (x); backward takes x again.
#pragma once

#include <cstdint>
#include <string>

#include "absl/types/span.h"
#include "kernels/fp8.h"
#include "kernels/tensor.h"
#include "model/module.h"
#include "model/precision.h"

namespace fathom::model {

// The low-precision copies of a weight that its GEMMs read: bf16, or E4M3 of W and of W^T (last
// two dims swapped) with 128x128 block scales. Rebuilt when the parameter's version changes.
struct WorkingWeights {
  void refresh(const Parameter& weight, TrainingPrecision precision);

  uint64_t version = ~uint64_t{0};
  Tensor bf16;
  Fp8Tensor q;   // W, 128x128
  Fp8Tensor tq;  // W^T, 128x128
};

class Linear {
 public:
  // weight: (out_features, in_features), zero until initialised.
  Linear(std::string name, int64_t out_features, int64_t in_features,
         TrainingPrecision precision, Device device);

  // x: (T, in) f32  ->  y: (T, out) f32 (=).
  void forward(const Tensor& x, Tensor& y) const;
  // dy: (T, out) f32  ->  dx: (T, in) f32 (=).
  void backward_input(const Tensor& dy, Tensor& dx) const;
  // weight.grad += dy^T x.
  void backward_weight(const Tensor& dy, const Tensor& x);
  // backward_weight now, or deferred into `store` (dy and x are captured by reference count).
  void backward_weight_or_defer(const Tensor& dy, const Tensor& x, WeightGradStore* store);

  int64_t in_features() const { return weight.value.dim(1); }
  int64_t out_features() const { return weight.value.dim(0); }
  TrainingPrecision precision() const { return precision_; }
  void append_parameters(ParameterList& out) { out.push_back(&weight); }

  Parameter weight;

 private:
  TrainingPrecision precision_;
  mutable WorkingWeights working_;
};

// Routed experts' weights as one (G, out, in) tensor; group g's rows of x use expert g.
class GroupedLinear {
 public:
  GroupedLinear(std::string name, int64_t groups, int64_t out_features, int64_t in_features,
                TrainingPrecision precision, Device device);

  // x: (T, in) f32, rows grouped by expert (counts[g] rows each, host counts summing to T)
  // -> y: (T, out) f32 (=).
  void forward(const Tensor& x, absl::Span<const int64_t> counts, Tensor& y) const;
  // dy: (T, out) -> dx: (T, in) (=).
  void backward_input(const Tensor& dy, absl::Span<const int64_t> counts, Tensor& dx) const;
  // weight.grad[g] += dy[rows of g]^T x[rows of g].
  void backward_weight(const Tensor& dy, const Tensor& x, absl::Span<const int64_t> counts);
  void backward_weight_or_defer(const Tensor& dy, const Tensor& x,
                                absl::Span<const int64_t> counts, WeightGradStore* store);

  int64_t groups() const { return weight.value.dim(0); }
  int64_t out_features() const { return weight.value.dim(1); }
  int64_t in_features() const { return weight.value.dim(2); }
  void append_parameters(ParameterList& out) { out.push_back(&weight); }

  Parameter weight;

 private:
  TrainingPrecision precision_;
  mutable WorkingWeights working_;  // per expert: (G, out, in) and (G, in, out)
};

// x (rows, cols) f32/bf16 -> E4M3 of x^T (cols, rows) with 1x128 tiles along rows: the operand
// layout of the FP8 weight-gradient GEMM, whose reduced dim is the token dim.
Fp8Tensor quantize_transposed_1x128(const Tensor& x);

}  // namespace fathom::model
