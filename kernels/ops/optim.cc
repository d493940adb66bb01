#include "kernels/ops/optim.h"

#include <cmath>

#include "kernels/check.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"

namespace fathom {

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                  const AdamWConfig& config) {
  constexpr const char* kOp = "adamw_update";
  check_dtype(kOp, "param", param, DType::kF32);
  check_dtype(kOp, "grad", grad, DType::kF32);
  check_shape(kOp, "grad", grad, param.shape());
  check_float_dtype(kOp, "m", m);
  check_shape(kOp, "m", m, param.shape());
  check_dtype(kOp, "v", v, m.dtype());
  check_shape(kOp, "v", v, param.shape());
  check_same_device(kOp, {&param, &grad, &m, &v});
  FATHOM_CHECK(config.step >= 1) << kOp << ": step must be >= 1 (1-based), got " << config.step
                                 << " for param " << param.str();
  FATHOM_CHECK(config.beta1 >= 0.0f && config.beta1 < 1.0f && config.beta2 >= 0.0f &&
               config.beta2 < 1.0f)
      << kOp << ": betas must be in [0, 1), got " << config.beta1 << " and " << config.beta2
      << " for param " << param.str();
  FATHOM_CHECK(config.eps > 0.0f && config.lr >= 0.0f && config.weight_decay >= 0.0f &&
               std::isfinite(config.lr) && std::isfinite(config.weight_decay))
      << kOp << ": needs eps > 0, lr >= 0 and weight_decay >= 0, got eps " << config.eps << ", lr "
      << config.lr << ", weight_decay " << config.weight_decay << " for param " << param.str();
  if (param.is_cuda()) {
    cuda::adamw_update(param, grad, m, v, config);
  } else {
    cpu::adamw_update(param, grad, m, v, config);
  }
}

}  // namespace fathom
