#include "model/embedding.h"

#include <utility>

#include "kernels/ops/index.h"

namespace fathom::model {

Embedding::Embedding(std::string name, int64_t vocab_size, int64_t dim, Device device)
    : weight(make_parameter(std::move(name), {vocab_size, dim}, device)) {}

void Embedding::forward(const Tensor& ids, Tensor& out) const {
  embedding_forward(ids, weight.value, out);
}

void Embedding::backward_weight_or_defer(const Tensor& ids, const Tensor& dout,
                                         WeightGradStore* store) {
  run_or_defer(store, [this, ids, dout] { embedding_backward(ids, dout, weight.grad); });
}

}  // namespace fathom::model
