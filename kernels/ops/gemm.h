// Matrix multiplication: dense GEMM (f32 / bf16 / FP8 block-scaled) and grouped GEMM over
// experts in the contiguous layout.
//
// Layouts are row-major. All outputs are written (`=`) unless `accumulate` is set, in which
// case the product is added to the existing contents (`+=`), as weight gradients need.
// CPU: OpenBLAS sgemm (bf16 inputs are converted to f32 first). CUDA: cuBLASLt.
#pragma once

#include <cstdint>

#include "absl/types/span.h"
#include "kernels/fp8.h"
#include "kernels/tensor.h"

namespace fathom {

struct GemmOptions {
  bool trans_a = false;     // use A^T
  bool trans_b = false;     // use B^T
  bool accumulate = false;  // C += alpha * op(A) op(B) instead of C = ...
  float alpha = 1.0f;
};

// C = alpha * op(A) @ op(B)  (+ C when accumulate)
//   op(A): (M, K), stored (M, K) or, with trans_a, (K, M).   op(B): (K, N), stored (K, N) or (N, K).
//   C: (M, N).
// Batched: A and C 3-D with the same leading batch dim; B 3-D with that batch dim, or 2-D and
// shared by every batch entry.
// dtypes: A and B both f32 or both bf16; C f32 or bf16. All on one device.
void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOptions& options = {});

// C = dequant(A) @ dequant(B)^T  (+ C when accumulate)   -- the "TN" form both FP8 GEMMs use.
//   A: (M, K) quantized k1x128 (activations, or gradients along the reduced dim).
//   B: (N, K) quantized k128x128 (weights, stored [out, in]) or k1x128 (for the weight-gradient
//      GEMM, where both operands are activations transposed so K is the token dim).
//   C: (M, N) f32 or bf16.
// CPU: dequantize, then sgemm. CUDA: cuBLASLt FP8 E4M3 with CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F
// (k1x128) and CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F (k128x128), FP32 accumulation.
void gemm_fp8(const Fp8Tensor& a, const Fp8Tensor& b, Tensor& c, bool accumulate = false);

struct GroupedGemmOptions {
  bool trans_w = true;      // y = x @ w[g]^T (forward with weights stored [out, in])
  bool accumulate = false;
};

// Contiguous layout: x's rows are grouped by expert; group g owns counts[g] consecutive rows
// (sum(counts) == x.dim(0); a group may be empty).
//   x: (T, K);  w: (G, N, K) when trans_w, else (G, K, N);  y: (T, N).
//   y[rows of g] = x[rows of g] @ op(w[g])
// counts live on the host (they are known after the dispatch exchange). dtypes as gemm.
void grouped_gemm(const Tensor& x, const Tensor& w, absl::Span<const int64_t> counts, Tensor& y,
                  const GroupedGemmOptions& options = {});

// Weight gradient of grouped_gemm with trans_w: dw[g] (+)= dy[rows of g]^T @ x[rows of g].
//   dy: (T, N);  x: (T, K);  dw: (G, N, K) f32.
void grouped_gemm_weight_grad(const Tensor& dy, const Tensor& x, absl::Span<const int64_t> counts,
                              Tensor& dw, bool accumulate);

// FP8 grouped GEMM: y[rows of g] = dequant(x)[rows of g] @ dequant(w[g])^T.
//   x: (T, K) k1x128;  w: (G, N, K) k128x128 (blocks never straddle experts);  y: (T, N).
void grouped_gemm_fp8(const Fp8Tensor& x, const Fp8Tensor& w, absl::Span<const int64_t> counts,
                      Tensor& y);

}  // namespace fathom
