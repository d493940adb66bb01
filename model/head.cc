#include "model/head.h"

#include "kernels/ops/gemm.h"
#include "kernels/ops/loss.h"

namespace fathom::model {
namespace {

CrossEntropyOptions ce_options() {
  CrossEntropyOptions options;
  options.ignore_index = OutputHead::kIgnoreIndex;
  return options;
}

}  // namespace

OutputHead::OutputHead(int64_t vocab_size, int64_t dim, Device device)
    : weight(make_parameter("head.weight", {vocab_size, dim}, device)) {}

Tensor OutputHead::forward(const Tensor& h, const Tensor& targets, Saved& saved) const {
  const int64_t t = h.dim(0);
  Tensor loss = Tensor::empty({t}, DType::kF32, h.device());
  saved.h = h;
  saved.targets = targets;
  saved.lse = Tensor::empty({t}, DType::kF32, h.device());
  fused_linear_cross_entropy_forward(h, weight.value, targets, loss, saved.lse, ce_options());
  return loss;
}

void OutputHead::backward(const Tensor& dloss, const Saved& saved, Tensor& dh) {
  fused_linear_cross_entropy_backward(saved.h, weight.value, saved.targets, saved.lse, dloss, dh,
                                      weight.grad, ce_options());
}

Tensor OutputHead::logits(const Tensor& h) const {
  Tensor out = Tensor::empty({h.dim(0), weight.value.dim(0)}, DType::kF32, h.device());
  gemm(h, weight.value, out, {.trans_b = true});
  return out;
}

}  // namespace fathom::model
