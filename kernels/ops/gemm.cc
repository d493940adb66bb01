#include "kernels/ops/gemm.h"

#include "kernels/check.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"

namespace fathom {
namespace {

// Shared checks of an FP8 operand: E4M3 data of `ndim` dims, f32 scales of the block's shape.
void check_fp8_operand(const char* op, const char* name, const Fp8Tensor& t, int ndim) {
  check_dtype(op, name, t.data, DType::kF8E4M3);
  check_dtype(op, name, t.scales, DType::kF32);
  FATHOM_CHECK(t.data.ndim() == ndim)
      << op << ": " << name << " must be " << ndim << "-D, got " << t.data.str();
  const Shape want = fp8_scale_shape(t.data.shape(), t.block);
  FATHOM_CHECK(t.scales.shape() == want)
      << op << ": " << name << " scales must have shape " << shape_str(want) << " for "
      << t.data.str() << (t.block == ScaleBlock::k1x128 ? " (1x128)" : " (128x128)") << ", got "
      << t.scales.str();
}

// counts: one per group, non-negative, summing to rows.
void check_counts(const char* op, absl::Span<const int64_t> counts, int64_t groups, int64_t rows) {
  FATHOM_CHECK(static_cast<int64_t>(counts.size()) == groups)
      << op << ": " << counts.size() << " counts for " << groups << " groups";
  int64_t total = 0;
  for (size_t g = 0; g < counts.size(); ++g) {
    FATHOM_CHECK(counts[g] >= 0) << op << ": count " << counts[g] << " of group " << g
                                 << " is negative; counts " << shape_str(counts);
    total += counts[g];
  }
  FATHOM_CHECK(total == rows) << op << ": counts " << shape_str(counts) << " sum to " << total
                              << ", but there are " << rows << " rows";
}

// gemm on the tensors' device, for callers that have checked the arguments already.
void gemm_unchecked(const Tensor& a, const Tensor& b, Tensor& c, const GemmOptions& options) {
  if (c.is_cuda()) {
    cuda::gemm(a, b, c, options);
  } else {
    cpu::gemm(a, b, c, options);
  }
}

}  // namespace

void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOptions& options) {
  constexpr const char* kOp = "gemm";
  check_float_dtype(kOp, "a", a);
  check_float_dtype(kOp, "b", b);
  check_float_dtype(kOp, "c", c);
  FATHOM_CHECK(a.dtype() == b.dtype())
      << kOp << ": a and b must have one dtype, got " << a.str() << " and " << b.str();
  check_same_device(kOp, {&a, &b, &c});
  FATHOM_CHECK(a.ndim() == 2 || a.ndim() == 3) << kOp << ": a must be 2-D or 3-D, got " << a.str();
  FATHOM_CHECK(b.ndim() == 2 || (b.ndim() == 3 && a.ndim() == 3 && b.dim(0) == a.dim(0)))
      << kOp << ": b must be 2-D, or 3-D with a's batch dim, got a " << a.str() << ", b "
      << b.str();
  const int batched = a.ndim() == 3 ? 1 : 0;
  const int64_t m = options.trans_a ? a.dim(batched + 1) : a.dim(batched);
  const int64_t k = options.trans_a ? a.dim(batched) : a.dim(batched + 1);
  const int bb = b.ndim() - 2;
  const int64_t kb = options.trans_b ? b.dim(bb + 1) : b.dim(bb);
  const int64_t n = options.trans_b ? b.dim(bb) : b.dim(bb + 1);
  FATHOM_CHECK(k == kb) << kOp << ": inner dims differ: op(a) is " << m << "x" << k << ", op(b) is "
                        << kb << "x" << n << " (a " << a.str() << ", b " << b.str() << ", trans_a "
                        << options.trans_a << ", trans_b " << options.trans_b << ")";
  Shape want_c = batched ? Shape{a.dim(0), m, n} : Shape{m, n};
  FATHOM_CHECK(c.shape() == want_c)
      << kOp << ": c must have shape " << shape_str(want_c) << " for a " << a.str() << ", b "
      << b.str() << ", got " << c.str();
  gemm_unchecked(a, b, c, options);
}

void gemm_fp8(const Fp8Tensor& a, const Fp8Tensor& b, Tensor& c, bool accumulate) {
  constexpr const char* kOp = "gemm_fp8";
  check_fp8_operand(kOp, "a", a, 2);
  check_fp8_operand(kOp, "b", b, 2);
  FATHOM_CHECK(a.block == ScaleBlock::k1x128)
      << kOp << ": a must be quantized with 1x128 blocks, got 128x128 for " << a.data.str();
  check_float_dtype(kOp, "c", c);
  check_same_device(kOp, {&a.data, &a.scales, &b.data, &b.scales, &c});
  FATHOM_CHECK(a.data.dim(1) == b.data.dim(1))
      << kOp << ": a (M, K) and b (N, K) must share K, got a " << a.data.str() << ", b "
      << b.data.str();
  check_shape(kOp, "c", c, {a.data.dim(0), b.data.dim(0)});
  if (c.is_cuda()) {
    cuda::gemm_fp8(a, b, c, accumulate);
  } else {
    cpu::gemm_fp8(a, b, c, accumulate);
  }
}

void grouped_gemm(const Tensor& x, const Tensor& w, absl::Span<const int64_t> counts, Tensor& y,
                  const GroupedGemmOptions& options) {
  constexpr const char* kOp = "grouped_gemm";
  check_float_dtype(kOp, "x", x);
  check_float_dtype(kOp, "w", w);
  check_float_dtype(kOp, "y", y);
  FATHOM_CHECK(x.dtype() == w.dtype())
      << kOp << ": x and w must have one dtype, got " << x.str() << " and " << w.str();
  check_same_device(kOp, {&x, &w, &y});
  FATHOM_CHECK(x.ndim() == 2) << kOp << ": x must be (T, K), got " << x.str();
  FATHOM_CHECK(w.ndim() == 3) << kOp << ": w must be 3-D (G, N, K) or (G, K, N), got " << w.str();
  const int64_t k = options.trans_w ? w.dim(2) : w.dim(1);
  const int64_t n = options.trans_w ? w.dim(1) : w.dim(2);
  FATHOM_CHECK(x.dim(1) == k) << kOp << ": x " << x.str() << " and w " << w.str()
                              << " disagree on K (trans_w " << options.trans_w << ")";
  check_shape(kOp, "y", y, {x.dim(0), n});
  check_counts(kOp, counts, w.dim(0), x.dim(0));
  // One dense GEMM per non-empty group, on both backends: at the group sizes of training (hundreds
  // of tokens per expert) each GEMM is large enough to run near peak on its own.
  const GemmOptions gemm_options{.trans_b = options.trans_w, .accumulate = options.accumulate};
  int64_t row = 0;
  for (size_t g = 0; g < counts.size(); ++g) {
    if (counts[g] > 0) {
      const Tensor w_g = w.narrow(static_cast<int64_t>(g), 1).view({w.dim(1), w.dim(2)});
      Tensor y_g = y.narrow(row, counts[g]);
      gemm_unchecked(x.narrow(row, counts[g]), w_g, y_g, gemm_options);
    }
    row += counts[g];
  }
}

void grouped_gemm_weight_grad(const Tensor& dy, const Tensor& x, absl::Span<const int64_t> counts,
                              Tensor& dw, bool accumulate) {
  constexpr const char* kOp = "grouped_gemm_weight_grad";
  check_float_dtype(kOp, "dy", dy);
  check_float_dtype(kOp, "x", x);
  check_dtype(kOp, "dw", dw, DType::kF32);
  FATHOM_CHECK(dy.dtype() == x.dtype())
      << kOp << ": dy and x must have one dtype, got " << dy.str() << " and " << x.str();
  check_same_device(kOp, {&dy, &x, &dw});
  FATHOM_CHECK(dy.ndim() == 2 && x.ndim() == 2 && dy.dim(0) == x.dim(0))
      << kOp << ": dy (T, N) and x (T, K) must share T, got dy " << dy.str() << ", x " << x.str();
  FATHOM_CHECK(dw.ndim() == 3 && dw.dim(1) == dy.dim(1) && dw.dim(2) == x.dim(1))
      << kOp << ": dw must be (G, " << dy.dim(1) << ", " << x.dim(1) << ") for dy " << dy.str()
      << ", x " << x.str() << ", got " << dw.str();
  check_counts(kOp, counts, dw.dim(0), x.dim(0));
  const GemmOptions gemm_options{.trans_a = true, .accumulate = accumulate};
  int64_t row = 0;
  for (size_t g = 0; g < counts.size(); ++g) {
    // An empty group still writes dw[g] (zeros, a GEMM with K = 0) unless accumulating.
    Tensor dw_g = dw.narrow(static_cast<int64_t>(g), 1).view({dw.dim(1), dw.dim(2)});
    gemm_unchecked(dy.narrow(row, counts[g]), x.narrow(row, counts[g]), dw_g, gemm_options);
    row += counts[g];
  }
}

void grouped_gemm_fp8(const Fp8Tensor& x, const Fp8Tensor& w, absl::Span<const int64_t> counts,
                      Tensor& y) {
  constexpr const char* kOp = "grouped_gemm_fp8";
  check_fp8_operand(kOp, "x", x, 2);
  check_fp8_operand(kOp, "w", w, 3);
  FATHOM_CHECK(x.block == ScaleBlock::k1x128)
      << kOp << ": x must be quantized with 1x128 blocks, got 128x128 for " << x.data.str();
  FATHOM_CHECK(w.block == ScaleBlock::k128x128)
      << kOp << ": w must be quantized with 128x128 blocks, got 1x128 for " << w.data.str();
  check_float_dtype(kOp, "y", y);
  check_same_device(kOp, {&x.data, &x.scales, &w.data, &w.scales, &y});
  FATHOM_CHECK(x.data.dim(1) == w.data.dim(2))
      << kOp << ": x (T, K) and w (G, N, K) must share K, got x " << x.data.str() << ", w "
      << w.data.str();
  check_shape(kOp, "y", y, {x.data.dim(0), w.data.dim(1)});
  check_counts(kOp, counts, w.data.dim(0), x.data.dim(0));
  if (y.is_cuda()) {
    cuda::grouped_gemm_fp8(x, w, counts, y);
  } else {
    cpu::grouped_gemm_fp8(x, w, counts, y);
  }
}

}  // namespace fathom
