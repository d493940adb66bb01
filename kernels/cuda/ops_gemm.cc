// The CUDA GEMM family (dense, FP8 block-scaled, grouped) and the fused linear cross-entropy,
// built on the cuBLASLt wrapper of blas.h plus the kernels of fp8.cu and loss.cu.
#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/cuda/blas.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/tensor_args.h"

namespace fathom::cuda {
namespace {

BlasType blas_type(const Tensor& t) {
  return t.dtype() == DType::kBF16 ? BlasType::kBF16 : BlasType::kF32;
}

// Start of row `row` of `t`, read as rows of `row_elems` elements.
const void* row_ptr(const Tensor& t, int64_t row, int64_t row_elems) {
  return static_cast<const char*>(t.raw_data()) +
         static_cast<size_t>(row * row_elems) * dtype_size(t.dtype());
}

void check_targets(const char* op, const Tensor& targets, int64_t vocab, int32_t ignore_index) {
  // Host copy of the targets (synchronises): a bad target is an error, as on the CPU.
  const std::vector<int32_t> t = targets.to_vector<int32_t>();
  for (size_t i = 0; i < t.size(); ++i) {
    FATHOM_CHECK(t[i] == ignore_index || (t[i] >= 0 && t[i] < vocab))
        << op << ": targets[" << i << "] = " << t[i] << " is outside [0, " << vocab
        << ") and is not ignore_index " << ignore_index << " (targets " << targets.str() << ")";
  }
}

// Our scales in the layouts cuBLASLt reads (see Fp8Gemm in blas.h).
Tensor lt_scales(const Fp8Tensor& t, cudaStream_t stream) {
  const int64_t rows = t.scales.dim(0);
  const int64_t blocks_k = t.scales.dim(1);
  if (t.block == ScaleBlock::k1x128) {
    Tensor out = Tensor::empty({blocks_k, rows}, DType::kF32, t.device());
    launch_transpose_f32(t.scales.data<float>(), rows, blocks_k, out.data<float>(), stream);
    return out;
  }
  const int64_t ld = (blocks_k + 3) / 4 * 4;
  Tensor out = Tensor::empty({rows, ld}, DType::kF32, t.device());
  launch_pad_rows_f32(t.scales.data<float>(), rows, blocks_k, ld, out.data<float>(), stream);
  return out;
}

Tensor dequantized_bf16(const Fp8Tensor& t, cudaStream_t stream) {
  Tensor out = Tensor::empty(t.shape(), DType::kBF16, t.device());
  const bool blocks2d = t.block == ScaleBlock::k128x128;
  launch_dequantize(static_cast<const uint8_t*>(t.data.raw_data()), t.scales.data<float>(),
                    t.data.dim(0), t.data.dim(1), blocks2d ? t.data.dim(0) : 1, blocks2d,
                    out_ptr(out), stream);
  return out;
}

}  // namespace

void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOptions& options) {
  if (c.numel() == 0) return;
  const int device = c.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(c);
  const int64_t batch = a.ndim() == 3 ? a.dim(0) : 1;
  RowMajorGemm g;
  g.trans_a = options.trans_a;
  g.trans_b = options.trans_b;
  g.m = c.dim(-2);
  g.n = c.dim(-1);
  g.k = options.trans_a ? a.dim(-2) : a.dim(-1);
  g.a = a.raw_data();
  g.lda = a.dim(-1);
  g.stride_a = g.m * g.k;
  g.b = b.raw_data();
  g.ldb = b.dim(-1);
  g.stride_b = g.k * g.n;
  g.stride_c = g.m * g.n;
  g.ab_type = blas_type(a);
  g.batch = batch;
  g.alpha = options.alpha;
  g.beta = options.accumulate ? 1.0f : 0.0f;
  // Runs the product into c_ptr. A B shared by the whole batch is never given to cuBLASLt as a
  // zero batch stride: without trans_a the batch is one (batch * m) x k product (as on the CPU),
  // with trans_a one GEMM per batch entry.
  auto run = [&](void* c_ptr, BlasType c_type) {
    g.c = c_ptr;
    g.c_type = c_type;
    if (batch == 1 || b.ndim() == 3) {
      gemm_row_major(g, device, stream);
    } else if (!options.trans_a) {
      RowMajorGemm folded = g;
      folded.m = batch * g.m;
      folded.batch = 1;
      gemm_row_major(folded, device, stream);
    } else {
      for (int64_t i = 0; i < batch; ++i) {
        RowMajorGemm one = g;
        one.batch = 1;
        one.a = static_cast<const char*>(g.a) +
                static_cast<size_t>(i * g.stride_a) * dtype_size(a.dtype());
        one.c = static_cast<char*>(c_ptr) +
                static_cast<size_t>(i * g.stride_c) * (c_type == BlasType::kF32 ? 4 : 2);
        gemm_row_major(one, device, stream);
      }
    }
  };
  if (a.dtype() == DType::kF32 && c.dtype() == DType::kBF16) {
    // cuBLASLt has no f32 x f32 -> bf16: compute in f32 scratch, then round into c.
    Tensor c32 = Tensor::empty(c.shape(), DType::kF32, c.device());
    if (options.accumulate) {
      launch_cast(c.raw_data(), ElemType::kBF16, c32.raw_data(), ElemType::kF32, c.numel(), stream);
    }
    run(c32.raw_data(), BlasType::kF32);
    launch_cast(c32.raw_data(), ElemType::kF32, c.raw_data(), ElemType::kBF16, c.numel(), stream);
    return;
  }
  run(c.raw_data(), blas_type(c));
}

void gemm_fp8(const Fp8Tensor& a, const Fp8Tensor& b, Tensor& c, bool accumulate) {
  if (c.numel() == 0) return;
  const int device = c.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(c);
  const int64_t m = a.data.dim(0);
  const int64_t k = a.data.dim(1);
  const int64_t n = b.data.dim(0);
  if (k > 0) {
    const Tensor a_scales = lt_scales(a, stream);
    const Tensor b_scales = lt_scales(b, stream);
    Fp8Gemm g;
    g.m = m;
    g.n = n;
    g.k = k;
    g.a = a.data.raw_data();
    g.a_scales = a_scales.data<float>();
    g.b = b.data.raw_data();
    g.b_scales = b_scales.data<float>();
    g.b_block128x128 = b.block == ScaleBlock::k128x128;
    g.c = c.raw_data();
    g.c_type = blas_type(c);
    g.accumulate = accumulate;
    if (fp8_gemm_tn(g, device, stream)) return;
  }
  // Fallback for shapes cuBLASLt's block-scaled FP8 kernels do not take (M or N not a multiple
  // of 4, K not a multiple of 16, unaligned pointers, or no algorithm offered): dequantize both
  // operands to bf16 and run the BF16 GEMM with FP32 accumulation. The bf16 operands round the
  // dequantized values (exactly representable with pow2 scales).
  const Tensor a16 = dequantized_bf16(a, stream);
  const Tensor b16 = dequantized_bf16(b, stream);
  GemmOptions options;
  options.trans_b = true;
  options.accumulate = accumulate;
  cuda::gemm(a16, b16, c, options);
}

void grouped_gemm_fp8(const Fp8Tensor& x, const Fp8Tensor& w, absl::Span<const int64_t> counts,
                      Tensor& y) {
  const int64_t n = w.data.dim(1);
  const int64_t k = w.data.dim(2);
  int64_t row = 0;
  for (size_t g = 0; g < counts.size(); ++g) {
    if (counts[g] > 0) {
      Fp8Tensor x_g;
      x_g.block = ScaleBlock::k1x128;
      x_g.data = x.data.narrow(row, counts[g]);
      x_g.scales = x.scales.narrow(row, counts[g]);
      Fp8Tensor w_g;  // one expert: its 128x128 blocks never straddle experts
      w_g.block = ScaleBlock::k128x128;
      w_g.data = w.data.narrow(static_cast<int64_t>(g), 1).view({n, k});
      w_g.scales =
          w.scales.narrow(static_cast<int64_t>(g), 1).view({w.scales.dim(1), w.scales.dim(2)});
      Tensor y_g = y.narrow(row, counts[g]);
      cuda::gemm_fp8(x_g, w_g, y_g, /*accumulate=*/false);
    }
    row += counts[g];
  }
}

namespace {

// logits (tokens, rows) f32 = h @ w[v0 : v0 + rows]^T: one vocabulary chunk of the head, shared by
// the cross-entropy forward and its backward (which recomputes it).
void chunk_logits(const Tensor& h, const Tensor& w, int64_t v0, int64_t rows, Tensor& logits,
                  int device, cudaStream_t stream) {
  const int64_t d = h.dim(1);
  RowMajorGemm g;
  g.trans_b = true;
  g.m = h.dim(0);
  g.n = rows;
  g.k = d;
  g.a = h.raw_data();
  g.lda = d;
  g.b = row_ptr(w, v0, d);
  g.ldb = d;
  g.c = logits.raw_data();
  g.ab_type = blas_type(h);
  g.c_type = BlasType::kF32;
  gemm_row_major(g, device, stream);
}

}  // namespace

void fused_linear_cross_entropy_forward(const Tensor& h, const Tensor& w, const Tensor& targets,
                                        Tensor& loss, Tensor& lse,
                                        const CrossEntropyOptions& options) {
  constexpr const char* kOp = "fused_linear_cross_entropy_forward";
  const int64_t tokens = h.dim(0);
  const int64_t vocab = w.dim(0);
  const int device = h.device().index;
  DeviceGuard guard(device);
  check_targets(kOp, targets, vocab, options.ignore_index);
  if (tokens == 0) return;
  cudaStream_t stream = stream_of(h);
  const int64_t chunk = std::min(options.chunk_size, vocab);
  Tensor logits = Tensor::empty({tokens, chunk}, DType::kF32, h.device());
  Tensor state = Tensor::empty({3, tokens}, DType::kF32, h.device());
  Tensor run_max = state.narrow(0, 1);
  Tensor run_sum = state.narrow(1, 1);
  Tensor target_logit = state.narrow(2, 1);
  cuda::fill(run_max, -std::numeric_limits<float>::infinity());
  cuda::fill(run_sum, 0.0f);
  cuda::fill(target_logit, 0.0f);
  for (int64_t v0 = 0; v0 < vocab; v0 += chunk) {
    const int64_t rows = std::min(chunk, vocab - v0);
    chunk_logits(h, w, v0, rows, logits, device, stream);
    launch_ce_chunk_forward(logits.data<float>(), tokens, rows, v0, targets.data<int32_t>(),
                            options.ignore_index, run_max.data<float>(), run_sum.data<float>(),
                            target_logit.data<float>(), stream);
  }
  launch_ce_finish(run_max.data<float>(), run_sum.data<float>(), target_logit.data<float>(),
                   targets.data<int32_t>(), options.ignore_index, tokens, loss.data<float>(),
                   lse.data<float>(), stream);
}

void fused_linear_cross_entropy_backward(const Tensor& h, const Tensor& w, const Tensor& targets,
                                         const Tensor& lse, const Tensor& dloss, Tensor& dh,
                                         Tensor& dw, const CrossEntropyOptions& options) {
  constexpr const char* kOp = "fused_linear_cross_entropy_backward";
  const int64_t tokens = h.dim(0);
  const int64_t d = h.dim(1);
  const int64_t vocab = w.dim(0);
  const int device = h.device().index;
  DeviceGuard guard(device);
  check_targets(kOp, targets, vocab, options.ignore_index);
  if (tokens == 0) return;
  cudaStream_t stream = stream_of(h);
  const int64_t chunk = std::min(options.chunk_size, vocab);
  const bool bf16 = h.dtype() == DType::kBF16;
  Tensor logits = Tensor::empty({tokens, chunk}, DType::kF32, h.device());
  // The chunk gradient in the operands' dtype for the GEMMs (f32: in place over the logits).
  Tensor grad = bf16 ? Tensor::empty({tokens, chunk}, DType::kBF16, h.device()) : logits;
  // dh accumulates over chunks in f32.
  Tensor dh32 = dh.dtype() == DType::kF32 ? dh : Tensor::empty(dh.shape(), DType::kF32, h.device());
  for (int64_t v0 = 0; v0 < vocab; v0 += chunk) {
    const int64_t rows = std::min(chunk, vocab - v0);
    chunk_logits(h, w, v0, rows, logits, device, stream);
    launch_ce_chunk_backward(logits.data<float>(), tokens, rows, v0, targets.data<int32_t>(),
                             options.ignore_index, lse.data<float>(), dloss.data<float>(),
                             FloatPtr{grad.raw_data(), bf16}, stream);
    RowMajorGemm gh;  // dh (+)= grad (tokens, rows) @ w_chunk (rows, d)
    gh.m = tokens;
    gh.n = d;
    gh.k = rows;
    gh.a = grad.raw_data();
    gh.lda = rows;
    gh.b = row_ptr(w, v0, d);
    gh.ldb = d;
    gh.c = dh32.raw_data();
    gh.ab_type = blas_type(h);
    gh.c_type = BlasType::kF32;
    gh.beta = v0 == 0 ? 0.0f : 1.0f;
    gemm_row_major(gh, device, stream);
    RowMajorGemm gw;  // dw[v0 : v0 + rows] += grad^T (rows, tokens) @ h (tokens, d)
    gw.trans_a = true;
    gw.m = rows;
    gw.n = d;
    gw.k = tokens;
    gw.a = grad.raw_data();
    gw.lda = rows;
    gw.b = h.raw_data();
    gw.ldb = d;
    gw.c = static_cast<char*>(dw.raw_data()) + static_cast<size_t>(v0 * d) * sizeof(float);
    gw.ab_type = blas_type(h);
    gw.c_type = BlasType::kF32;
    gw.beta = 1.0f;
    gemm_row_major(gw, device, stream);
  }
  if (dh.dtype() != DType::kF32) {
    launch_cast(dh32.raw_data(), ElemType::kF32, dh.raw_data(), ElemType::kBF16, dh.numel(),
                stream);
  }
}

}  // namespace fathom::cuda
