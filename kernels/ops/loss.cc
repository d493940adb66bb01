#include "kernels/ops/loss.h"

#include "kernels/check.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"

namespace fathom {
namespace {

// The checks forward and backward share: h (T, D), w (V, D) of one float dtype, targets (T) i32.
void check_head(const char* op, const Tensor& h, const Tensor& w, const Tensor& targets,
                const CrossEntropyOptions& options) {
  check_float_dtype(op, "h", h);
  check_float_dtype(op, "w", w);
  FATHOM_CHECK(h.dtype() == w.dtype())
      << op << ": h and w must have one dtype, got " << h.str() << " and " << w.str();
  FATHOM_CHECK(h.ndim() == 2) << op << ": h must be (T, D), got " << h.str();
  FATHOM_CHECK(w.ndim() == 2 && w.dim(1) == h.dim(1) && w.dim(0) >= 1)
      << op << ": w must be (V, " << h.dim(1) << ") with V >= 1 for h " << h.str() << ", got "
      << w.str();
  check_dtype(op, "targets", targets, DType::kI32);
  check_shape(op, "targets", targets, {h.dim(0)});
  FATHOM_CHECK(options.chunk_size >= 1)
      << op << ": chunk_size must be >= 1, got " << options.chunk_size;
}

}  // namespace

void fused_linear_cross_entropy_forward(const Tensor& h, const Tensor& w, const Tensor& targets,
                                        Tensor& loss, Tensor& lse,
                                        const CrossEntropyOptions& options) {
  constexpr const char* kOp = "fused_linear_cross_entropy_forward";
  check_head(kOp, h, w, targets, options);
  check_dtype(kOp, "loss", loss, DType::kF32);
  check_shape(kOp, "loss", loss, {h.dim(0)});
  check_dtype(kOp, "lse", lse, DType::kF32);
  check_shape(kOp, "lse", lse, {h.dim(0)});
  check_same_device(kOp, {&h, &w, &targets, &loss, &lse});
  if (h.is_cuda()) {
    cuda::fused_linear_cross_entropy_forward(h, w, targets, loss, lse, options);
  } else {
    cpu::fused_linear_cross_entropy_forward(h, w, targets, loss, lse, options);
  }
}

void fused_linear_cross_entropy_backward(const Tensor& h, const Tensor& w, const Tensor& targets,
                                         const Tensor& lse, const Tensor& dloss, Tensor& dh,
                                         Tensor& dw, const CrossEntropyOptions& options) {
  constexpr const char* kOp = "fused_linear_cross_entropy_backward";
  check_head(kOp, h, w, targets, options);
  check_dtype(kOp, "lse", lse, DType::kF32);
  check_shape(kOp, "lse", lse, {h.dim(0)});
  check_dtype(kOp, "dloss", dloss, DType::kF32);
  check_shape(kOp, "dloss", dloss, {h.dim(0)});
  check_dtype(kOp, "dh", dh, h.dtype());
  check_shape(kOp, "dh", dh, h.shape());
  check_dtype(kOp, "dw", dw, DType::kF32);
  check_shape(kOp, "dw", dw, w.shape());
  check_same_device(kOp, {&h, &w, &targets, &lse, &dloss, &dh, &dw});
  if (h.is_cuda()) {
    cuda::fused_linear_cross_entropy_backward(h, w, targets, lse, dloss, dh, dw, options);
  } else {
    cpu::fused_linear_cross_entropy_backward(h, w, targets, lse, dloss, dh, dw, options);
  }
}

}  // namespace fathom
