// SwiGLU feed-forward network: y = w2(silu(w1 x) * w3 x). The dense FFN of the first
// n_dense_layers blocks, and the shared experts of an MoE block (one SwiGLU whose hidden size is
// n_shared_experts * moe_inter_dim). w1, w3: (inter, dim); w2: (dim, inter); all Linears in the
// run's precision.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/tensor.h"
#include "model/linear.h"
#include "model/module.h"

namespace fathom::model {

class Mlp {
 public:
  // prefix: "layers.0.ffn" gives parameters "layers.0.ffn.w1.weight", ... .
  Mlp(const std::string& prefix, int64_t dim, int64_t inter_dim, TrainingPrecision precision,
      Device device);

  struct Saved {
    Tensor x;       // (T, dim)
    Tensor gate;    // w1 x  (T, inter)
    Tensor up;      // w3 x  (T, inter)
    Tensor hidden;  // silu(gate) * up, the input of w2
  };
  // x: (T, dim) f32 -> y: (T, dim) f32 (=).
  void forward(const Tensor& x, Tensor& y, Saved& saved) const;
  // dx (=); weight gradients (+=) now or deferred into `store`.
  void backward(const Tensor& dy, const Saved& saved, Tensor& dx, WeightGradStore* store);

  void append_parameters(ParameterList& out);
  // Normal(0, std) weights keyed by (seed, name).
  void init(uint64_t seed, double std);

  Linear w1, w2, w3;
};

}  // namespace fathom::model
