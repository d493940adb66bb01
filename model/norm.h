// RMSNorm layer (eps from the model config; DeepSeek uses 1e-6), weight initialised to 1.
//
// The weight gradient is computed together with dx by one fused kernel and is not deferred: it
// costs O(T * dim), negligible next to any GEMM's weight gradient.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/tensor.h"
#include "model/module.h"

namespace fathom::model {

class RmsNorm {
 public:
  RmsNorm(std::string name, int64_t dim, float eps, Device device);

  struct Saved {
    Tensor x;     // the input (shared, not copied)
    Tensor rstd;  // (T) f32
  };
  // x: (T, dim) f32 -> y: (T, dim) f32 (=).
  void forward(const Tensor& x, Tensor& y, Saved& saved) const;
  // y again from what forward saved: for activation recomputation, where the caller drops y after
  // forward and rebuilds it in backward.
  void recompute(const Saved& saved, Tensor& y) const;
  // dx (=);  weight.grad (+=).
  void backward(const Tensor& dy, const Saved& saved, Tensor& dx);

  int64_t dim() const { return weight.value.dim(0); }
  void append_parameters(ParameterList& out) { out.push_back(&weight); }

  Parameter weight;

 private:
  float eps_;
};

}  // namespace fathom::model
