#include "trainer/optimizer.h"

#include <cmath>
#include <utility>

#include "kernels/ops/elementwise.h"
#include "kernels/ops/optim.h"
#include "kernels/ops/reduce.h"

namespace fathom::trainer {

AdamW::AdamW(model::ParameterList params, const AdamWOptions& options)
    : params_(std::move(params)), options_(options) {
  FATHOM_CHECK(options.moments == DType::kF32 || options.moments == DType::kBF16)
      << "AdamW: moments must be f32 or bf16";
  for (model::Parameter* p : params_) {
    m_.push_back(Tensor::zeros(p->value.shape(), options.moments, p->value.device()));
    v_.push_back(Tensor::zeros(p->value.shape(), options.moments, p->value.device()));
  }
}

StepResult AdamW::step(double lr) {
  std::vector<Tensor*> grads;
  for (model::Parameter* p : params_) grads.push_back(&p->grad);
  StepResult result;
  if (options_.grad_clip > 0) {
    result.grad_norm = clip_grad_norm(grads, options_.grad_clip);
  } else {
    std::vector<const Tensor*> cgrads(grads.begin(), grads.end());
    result.grad_norm = global_norm(cgrads);
  }
  if (!std::isfinite(result.grad_norm)) {
    result.skipped = true;
    return result;
  }
  ++steps_;
  for (size_t i = 0; i < params_.size(); ++i) {
    model::Parameter& p = *params_[i];
    AdamWConfig config;
    config.lr = static_cast<float>(lr);
    config.beta1 = static_cast<float>(options_.beta1);
    config.beta2 = static_cast<float>(options_.beta2);
    config.eps = static_cast<float>(options_.eps);
    config.weight_decay = p.weight_decay ? static_cast<float>(options_.weight_decay) : 0.0f;
    config.step = steps_;
    adamw_update(p.value, p.grad, m_[i], v_[i], config);
    ++p.version;
  }
  return result;
}

void AdamW::zero_grad() {
  for (model::Parameter* p : params_) fill(p->grad, 0.0f);
}

}  // namespace fathom::trainer
