#include "kernels/ops/elementwise.h"

#include "kernels/check.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"

namespace fathom {
namespace {

bool is_int_index(DType d) { return d == DType::kI32 || d == DType::kI64; }

// `t` has the dtype and shape of `like`.
void check_like(const char* op, const char* name, const Tensor& t, const char* like_name,
                const Tensor& like) {
  check_defined(op, name, t);
  FATHOM_CHECK(t.dtype() == like.dtype() && t.shape() == like.shape())
      << op << ": " << name << " must match " << like_name << " " << like.str() << ", got "
      << t.str();
}

}  // namespace

void cast(const Tensor& src, Tensor& dst) {
  constexpr const char* kOp = "cast";
  check_defined(kOp, "src", src);
  check_defined(kOp, "dst", dst);
  FATHOM_CHECK(src.shape() == dst.shape())
      << kOp << ": src and dst must have one shape, got " << src.str() << " and " << dst.str();
  const bool floats = dtype_is_float(src.dtype()) && dtype_is_float(dst.dtype());
  const bool ints = is_int_index(src.dtype()) && is_int_index(dst.dtype());
  FATHOM_CHECK(floats || ints || src.dtype() == dst.dtype())
      << kOp << ": converts between float dtypes or between i32 and i64, got " << src.str()
      << " -> " << dst.str();
  check_same_device(kOp, {&src, &dst});
  if (src.is_cuda()) {
    cuda::cast(src, dst);
  } else {
    cpu::cast(src, dst);
  }
}

void fill(Tensor& t, float value) {
  check_defined("fill", "t", t);
  if (t.is_cuda()) {
    cuda::fill(t, value);
  } else {
    cpu::fill(t, value);
  }
}

void axpy(float alpha, const Tensor& x, Tensor& y) {
  constexpr const char* kOp = "axpy";
  check_float_dtype(kOp, "x", x);
  check_like(kOp, "y", y, "x", x);
  check_same_device(kOp, {&x, &y});
  if (x.is_cuda()) {
    cuda::axpy(alpha, x, y);
  } else {
    cpu::axpy(alpha, x, y);
  }
}

void scale(Tensor& t, float alpha) {
  check_float_dtype("scale", "t", t);
  if (t.is_cuda()) {
    cuda::scale(t, alpha);
  } else {
    cpu::scale(t, alpha);
  }
}

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& y) {
  constexpr const char* kOp = "swiglu_forward";
  check_float_dtype(kOp, "gate", gate);
  check_like(kOp, "up", up, "gate", gate);
  check_like(kOp, "y", y, "gate", gate);
  check_same_device(kOp, {&gate, &up, &y});
  if (gate.is_cuda()) {
    cuda::swiglu_forward(gate, up, y);
  } else {
    cpu::swiglu_forward(gate, up, y);
  }
}

void swiglu_backward(const Tensor& dy, const Tensor& gate, const Tensor& up, Tensor& dgate,
                     Tensor& dup) {
  constexpr const char* kOp = "swiglu_backward";
  check_float_dtype(kOp, "gate", gate);
  check_like(kOp, "dy", dy, "gate", gate);
  check_like(kOp, "up", up, "gate", gate);
  check_like(kOp, "dgate", dgate, "gate", gate);
  check_like(kOp, "dup", dup, "gate", gate);
  check_same_device(kOp, {&dy, &gate, &up, &dgate, &dup});
  if (gate.is_cuda()) {
    cuda::swiglu_backward(dy, gate, up, dgate, dup);
  } else {
    cpu::swiglu_backward(dy, gate, up, dgate, dup);
  }
}

void sigmoid_forward(const Tensor& x, Tensor& y) {
  constexpr const char* kOp = "sigmoid_forward";
  check_float_dtype(kOp, "x", x);
  check_like(kOp, "y", y, "x", x);
  check_same_device(kOp, {&x, &y});
  if (x.is_cuda()) {
    cuda::sigmoid_forward(x, y);
  } else {
    cpu::sigmoid_forward(x, y);
  }
}

void sigmoid_backward(const Tensor& dy, const Tensor& y, Tensor& dx) {
  constexpr const char* kOp = "sigmoid_backward";
  check_float_dtype(kOp, "y", y);
  check_like(kOp, "dy", dy, "y", y);
  check_like(kOp, "dx", dx, "y", y);
  check_same_device(kOp, {&dy, &y, &dx});
  if (y.is_cuda()) {
    cuda::sigmoid_backward(dy, y, dx);
  } else {
    cpu::sigmoid_backward(dy, y, dx);
  }
}

void softmax_forward(const Tensor& x, Tensor& y) {
  constexpr const char* kOp = "softmax_forward";
  check_float_dtype(kOp, "x", x);
  FATHOM_CHECK(x.ndim() >= 1) << kOp << ": x needs at least one dim, got " << x.str();
  check_like(kOp, "y", y, "x", x);
  check_same_device(kOp, {&x, &y});
  if (x.is_cuda()) {
    cuda::softmax_forward(x, y);
  } else {
    cpu::softmax_forward(x, y);
  }
}

void softmax_backward(const Tensor& dy, const Tensor& y, Tensor& dx) {
  constexpr const char* kOp = "softmax_backward";
  check_float_dtype(kOp, "y", y);
  FATHOM_CHECK(y.ndim() >= 1) << kOp << ": y needs at least one dim, got " << y.str();
  check_like(kOp, "dy", dy, "y", y);
  check_like(kOp, "dx", dx, "y", y);
  check_same_device(kOp, {&dy, &y, &dx});
  if (y.is_cuda()) {
    cuda::softmax_backward(dy, y, dx);
  } else {
    cpu::softmax_backward(dy, y, dx);
  }
}

}  // namespace fathom
