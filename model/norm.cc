#include "model/norm.h"

#include <utility>

#include "kernels/ops/norm.h"

namespace fathom::model {

RmsNorm::RmsNorm(std::string name, int64_t dim, float eps, Device device)
    : weight(make_parameter(std::move(name), {dim}, device, /*weight_decay=*/false)), eps_(eps) {
  init_constant(weight, 1.0f);
}

void RmsNorm::forward(const Tensor& x, Tensor& y, Saved& saved) const {
  saved.x = x;
  saved.rstd = Tensor::empty({x.dim(0)}, DType::kF32, x.device());
  rmsnorm_forward(x, weight.value, eps_, y, saved.rstd);
}

void RmsNorm::recompute(const Saved& saved, Tensor& y) const {
  Tensor rstd = Tensor::empty({saved.x.dim(0)}, DType::kF32, saved.x.device());
  rmsnorm_forward(saved.x, weight.value, eps_, y, rstd);
}

void RmsNorm::backward(const Tensor& dy, const Saved& saved, Tensor& dx) {
  rmsnorm_backward(dy, saved.x, weight.value, saved.rstd, dx, weight.grad);
}

}  // namespace fathom::model
