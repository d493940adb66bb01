#include "kernels/ops/norm.h"

#include <cmath>

#include "kernels/check.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"

namespace fathom {
namespace {

// x (..., D) f32/bf16 and w (D) f32; returns the row count T.
int64_t check_rows(const char* op, const Tensor& x, const Tensor& w) {
  check_float_dtype(op, "x", x);
  FATHOM_CHECK(x.ndim() >= 1) << op << ": x must be (T, D), got " << x.str();
  const int64_t d = x.dim(-1);
  check_dtype(op, "w", w, DType::kF32);
  check_shape(op, "w", w, {d});
  return d == 0 ? 0 : x.numel() / d;
}

void check_like(const char* op, const char* name, const Tensor& t, const Tensor& x) {
  check_defined(op, name, t);
  FATHOM_CHECK(t.dtype() == x.dtype() && t.shape() == x.shape())
      << op << ": " << name << " must match x " << x.str() << ", got " << t.str();
}

}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) {
  constexpr const char* kOp = "rmsnorm_forward";
  const int64_t rows = check_rows(kOp, x, w);
  FATHOM_CHECK(eps > 0.0f && std::isfinite(eps))
      << kOp << ": eps must be positive and finite, got " << eps << " for x " << x.str();
  check_like(kOp, "y", y, x);
  check_dtype(kOp, "rstd", rstd, DType::kF32);
  check_shape(kOp, "rstd", rstd, {rows});
  check_same_device(kOp, {&x, &w, &y, &rstd});
  if (x.is_cuda()) {
    cuda::rmsnorm_forward(x, w, eps, y, rstd);
  } else {
    cpu::rmsnorm_forward(x, w, eps, y, rstd);
  }
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor& dw) {
  constexpr const char* kOp = "rmsnorm_backward";
  const int64_t rows = check_rows(kOp, x, w);
  check_like(kOp, "dy", dy, x);
  check_dtype(kOp, "rstd", rstd, DType::kF32);
  check_shape(kOp, "rstd", rstd, {rows});
  check_like(kOp, "dx", dx, x);
  check_dtype(kOp, "dw", dw, DType::kF32);
  check_shape(kOp, "dw", dw, w.shape());
  check_same_device(kOp, {&dy, &x, &w, &rstd, &dx, &dw});
  if (x.is_cuda()) {
    cuda::rmsnorm_backward(dy, x, w, rstd, dx, dw);
  } else {
    cpu::rmsnorm_backward(dy, x, w, rstd, dx, dw);
  }
}

}  // namespace fathom
