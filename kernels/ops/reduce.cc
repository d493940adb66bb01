#include "kernels/ops/reduce.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/check.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"
#include "kernels/ops/elementwise.h"

namespace fathom {

void reduce_rows(const Tensor& x, Reduce op, Tensor& out) {
  constexpr const char* kOp = "reduce_rows";
  check_float_dtype(kOp, "x", x);
  FATHOM_CHECK(x.ndim() >= 1) << kOp << ": x must be (T, D), got " << x.str();
  check_dtype(kOp, "out", out, DType::kF32);
  const Shape& xs = x.shape();
  const Shape leading(xs.begin(), xs.end() - 1);
  int64_t rows = 1;
  for (int64_t s : leading) rows *= s;
  FATHOM_CHECK(out.shape() == leading || (out.ndim() == 1 && out.dim(0) == rows))
      << kOp << ": out must have shape " << shape_str({rows})
      << (leading.size() == 1 ? std::string() : " or " + shape_str(leading)) << " for x " << x.str()
      << ", got " << out.str();
  check_same_device(kOp, {&x, &out});
  if (x.is_cuda()) {
    cuda::reduce_rows(x, op, out);
  } else {
    cpu::reduce_rows(x, op, out);
  }
}

double reduce_all(const Tensor& x, Reduce op) {
  check_float_dtype("reduce_all", "x", x);
  return x.is_cuda() ? cuda::reduce_all(x, op) : cpu::reduce_all(x, op);
}

double global_norm(absl::Span<const Tensor* const> tensors) {
  double sum = 0.0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    FATHOM_CHECK(tensors[i] != nullptr) << "global_norm: tensor " << i << " is null";
    FATHOM_CHECK(tensors[i]->defined()) << "global_norm: tensor " << i << " is undefined";
    FATHOM_CHECK(tensors[i]->dtype() == DType::kF32 || tensors[i]->dtype() == DType::kBF16)
        << "global_norm: tensor " << i << " must be f32 or bf16, got " << tensors[i]->str();
    sum += reduce_all(*tensors[i], Reduce::kSumSquares);
  }
  return std::sqrt(sum);
}

double clip_grad_norm(absl::Span<Tensor* const> grads, double max_norm) {
  FATHOM_CHECK(max_norm > 0.0 && !std::isnan(max_norm))
      << "clip_grad_norm: max_norm must be > 0, got " << max_norm << " for " << grads.size()
      << " gradients";
  const double norm = global_norm(absl::Span<const Tensor* const>(grads.data(), grads.size()));
  if (!std::isfinite(norm)) return norm;
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    for (Tensor* g : grads) scale(*g, static_cast<float>(coef));
  }
  return norm;
}

}  // namespace fathom
