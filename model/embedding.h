// Token embedding (not scaled, not tied to the output head; SPEC.md section 1). Kept in f32 in
// every precision mode.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/tensor.h"
#include "model/module.h"

namespace fathom::model {

class Embedding {
 public:
  Embedding(std::string name, int64_t vocab_size, int64_t dim, Device device);

  // ids: (T) i32 in [0, vocab_size) -> out: (T, dim) f32 (=). An out-of-range id throws naming it.
  void forward(const Tensor& ids, Tensor& out) const;
  // weight.grad[ids[t]] += dout[t], now or deferred into `store`.
  void backward_weight_or_defer(const Tensor& ids, const Tensor& dout, WeightGradStore* store);

  int64_t vocab_size() const { return weight.value.dim(0); }
  int64_t dim() const { return weight.value.dim(1); }
  void append_parameters(ParameterList& out) { out.push_back(&weight); }

  Parameter weight;
};

}  // namespace fathom::model
