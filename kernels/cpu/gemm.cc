// Dense and grouped GEMM on the host: OpenBLAS sgemm (using every thread) on f32; bf16 operands
// are staged to f32 and FP8 operands dequantized to f32 first.
#include "kernels/cpu/blas.h"
#include "kernels/cpu/f32_staging.h"
#include "kernels/cpu/fp8_dequant.h"
#include "kernels/cpu/ops.h"

namespace fathom::cpu {

void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOptions& options) {
  const bool batched = a.ndim() == 3;
  const int64_t batch = batched ? a.dim(0) : 1;
  const int64_t m = c.dim(-2);
  const int64_t n = c.dim(-1);
  const int64_t k = options.trans_a ? a.dim(-2) : a.dim(-1);
  if (c.numel() == 0) return;
  const Tensor a32 = as_f32(a);
  const Tensor b32 = as_f32(b);
  Tensor c32 = f32_output(c, options.accumulate);
  const float beta = options.accumulate ? 1.0f : 0.0f;
  const float* pa = a32.data<float>();
  const float* pb = b32.data<float>();
  float* pc = c32.data<float>();
  const int64_t lda = a.dim(-1);
  const int64_t ldb = b.dim(-1);
  if (b.ndim() == 2 && !options.trans_a) {
    // A shared B: the batch is one (batch * m) x k product.
    sgemm(false, options.trans_b, batch * m, n, k, options.alpha, pa, lda, pb, ldb, beta, pc, n);
  } else {
    const int64_t b_stride = b.ndim() == 3 ? k * n : 0;
    for (int64_t i = 0; i < batch; ++i) {
      sgemm(options.trans_a, options.trans_b, m, n, k, options.alpha, pa + i * m * k, lda,
            pb + i * b_stride, ldb, beta, pc + i * m * n, n);
    }
  }
  store_f32_output(c32, c);
}

void gemm_fp8(const Fp8Tensor& a, const Fp8Tensor& b, Tensor& c, bool accumulate) {
  Tensor a32 = Tensor::empty(a.shape(), DType::kF32);
  Tensor b32 = Tensor::empty(b.shape(), DType::kF32);
  dequantize_fp8_f32(a, a32.data<float>());
  dequantize_fp8_f32(b, b32.data<float>());
  GemmOptions options;
  options.trans_b = true;
  options.accumulate = accumulate;
  cpu::gemm(a32, b32, c, options);
}

void grouped_gemm_fp8(const Fp8Tensor& x, const Fp8Tensor& w, absl::Span<const int64_t> counts,
                      Tensor& y) {
  Tensor x32 = Tensor::empty(x.shape(), DType::kF32);
  dequantize_fp8_f32(x, x32.data<float>());
  const int64_t n = w.shape()[1];
  const int64_t k = w.shape()[2];
  Tensor w32 = Tensor::empty({n, k}, DType::kF32);
  GemmOptions gemm_options;
  gemm_options.trans_b = true;
  int64_t row = 0;
  for (size_t g = 0; g < counts.size(); ++g) {
    if (counts[g] > 0) {
      // One expert at a time: its 128x128 blocks never straddle experts.
      Fp8Tensor w_g;
      w_g.block = ScaleBlock::k128x128;
      w_g.data = w.data.narrow(static_cast<int64_t>(g), 1).view({n, k});
      w_g.scales =
          w.scales.narrow(static_cast<int64_t>(g), 1).view({w.scales.dim(1), w.scales.dim(2)});
      dequantize_fp8_f32(w_g, w32.data<float>());
      Tensor y_g = y.narrow(row, counts[g]);
      cpu::gemm(x32.narrow(row, counts[g]), w32, y_g, gemm_options);
    }
    row += counts[g];
  }
}

}  // namespace fathom::cpu
