#include "model/mlp.h"

#include "kernels/ops/elementwise.h"

namespace fathom::model {

Mlp::Mlp(const std::string& prefix, int64_t dim, int64_t inter_dim, TrainingPrecision precision,
         Device device)
    : w1(prefix + ".w1.weight", inter_dim, dim, precision, device),
      w2(prefix + ".w2.weight", dim, inter_dim, precision, device),
      w3(prefix + ".w3.weight", inter_dim, dim, precision, device) {}

void Mlp::forward(const Tensor& x, Tensor& y, Saved& saved) const {
  const int64_t t = x.dim(0);
  const int64_t inter = w1.out_features();
  saved.x = x;
  saved.gate = Tensor::empty({t, inter}, DType::kF32, x.device());
  saved.up = Tensor::empty({t, inter}, DType::kF32, x.device());
  saved.hidden = Tensor::empty({t, inter}, DType::kF32, x.device());
  w1.forward(x, saved.gate);
  w3.forward(x, saved.up);
  swiglu_forward(saved.gate, saved.up, saved.hidden);
  w2.forward(saved.hidden, y);
}

void Mlp::backward(const Tensor& dy, const Saved& saved, Tensor& dx, WeightGradStore* store) {
  const int64_t t = dy.dim(0);
  const int64_t inter = w1.out_features();
  Tensor dhidden = Tensor::empty({t, inter}, DType::kF32, dy.device());
  w2.backward_input(dy, dhidden);
  w2.backward_weight_or_defer(dy, saved.hidden, store);
  Tensor dgate = Tensor::empty({t, inter}, DType::kF32, dy.device());
  Tensor dup = Tensor::empty({t, inter}, DType::kF32, dy.device());
  swiglu_backward(dhidden, saved.gate, saved.up, dgate, dup);
  w1.backward_input(dgate, dx);
  Tensor dx_up = Tensor::empty(dx.shape(), DType::kF32, dx.device());
  w3.backward_input(dup, dx_up);
  axpy(1.0f, dx_up, dx);
  w1.backward_weight_or_defer(dgate, saved.x, store);
  w3.backward_weight_or_defer(dup, saved.x, store);
}

void Mlp::append_parameters(ParameterList& out) {
  w1.append_parameters(out);
  w2.append_parameters(out);
  w3.append_parameters(out);
}

void Mlp::init(uint64_t seed, double std) {
  init_normal(w1.weight, seed, std);
  init_normal(w2.weight, seed, std);
  init_normal(w3.weight, seed, std);
}

}  // namespace fathom::model
