#include "kernels/ops/attention.h"

#include <cmath>

#include "kernels/check.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"

namespace fathom {
namespace {

// q (B, S, H, Dqk), k (B, S, Hkv, Dqk), v (B, S, Hkv, Dv) of one float dtype, H % Hkv == 0.
void check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
               const AttentionOptions& options) {
  check_float_dtype(op, "q", q);
  check_float_dtype(op, "k", k);
  check_float_dtype(op, "v", v);
  FATHOM_CHECK(q.dtype() == k.dtype() && q.dtype() == v.dtype())
      << op << ": q, k and v must have one dtype, got q " << q.str() << ", k " << k.str() << ", v "
      << v.str();
  FATHOM_CHECK(q.ndim() == 4 && k.ndim() == 4 && v.ndim() == 4)
      << op << ": q, k, v must be 4-D (B, S, heads, head_dim), got q " << q.str() << ", k "
      << k.str() << ", v " << v.str();
  FATHOM_CHECK(k.dim(0) == q.dim(0) && v.dim(0) == q.dim(0) && k.dim(1) == q.dim(1) &&
               v.dim(1) == q.dim(1) && k.dim(2) == v.dim(2) && k.dim(3) == q.dim(3) &&
               q.dim(3) >= 1 && k.dim(2) >= 1 && q.dim(2) % k.dim(2) == 0)
      << op << ": expected q (B, S, H, Dqk), k (B, S, Hkv, Dqk), v (B, S, Hkv, Dv) with "
      << "Dqk >= 1 and H a multiple of Hkv; got q " << q.str() << ", k " << k.str() << ", v "
      << v.str();
  FATHOM_CHECK(std::isfinite(options.scale) && options.scale >= 0.0f)
      << op << ": scale must be finite and >= 0 (0 means 1/sqrt(Dqk)), got " << options.scale;
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                       const AttentionOptions& options, Tensor& out, Tensor& lse) {
  constexpr const char* kOp = "attention_forward";
  check_qkv(kOp, q, k, v, options);
  check_dtype(kOp, "out", out, q.dtype());
  check_shape(kOp, "out", out, {q.dim(0), q.dim(1), q.dim(2), v.dim(3)});
  check_dtype(kOp, "lse", lse, DType::kF32);
  check_shape(kOp, "lse", lse, {q.dim(0), q.dim(2), q.dim(1)});
  check_same_device(kOp, {&q, &k, &v, &out, &lse});
  if (q.is_cuda()) {
    cuda::attention_forward(q, k, v, options, out, lse);
  } else {
    cpu::attention_forward(q, k, v, options, out, lse);
  }
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, const AttentionOptions& options,
                        Tensor& dq, Tensor& dk, Tensor& dv) {
  constexpr const char* kOp = "attention_backward";
  check_qkv(kOp, q, k, v, options);
  const Shape out_shape{q.dim(0), q.dim(1), q.dim(2), v.dim(3)};
  check_dtype(kOp, "out", out, q.dtype());
  check_shape(kOp, "out", out, out_shape);
  check_dtype(kOp, "dout", dout, q.dtype());
  check_shape(kOp, "dout", dout, out_shape);
  check_dtype(kOp, "lse", lse, DType::kF32);
  check_shape(kOp, "lse", lse, {q.dim(0), q.dim(2), q.dim(1)});
  check_dtype(kOp, "dq", dq, q.dtype());
  check_shape(kOp, "dq", dq, q.shape());
  check_dtype(kOp, "dk", dk, k.dtype());
  check_shape(kOp, "dk", dk, k.shape());
  check_dtype(kOp, "dv", dv, v.dtype());
  check_shape(kOp, "dv", dv, v.shape());
  check_same_device(kOp, {&q, &k, &v, &out, &lse, &dout, &dq, &dk, &dv});
  if (q.is_cuda()) {
    cuda::attention_backward(q, k, v, out, lse, dout, options, dq, dk, dv);
  } else {
    cpu::attention_backward(q, k, v, out, lse, dout, options, dq, dk, dv);
  }
}

}  // namespace fathom
