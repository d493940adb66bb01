// Row-major GEMMs through cuBLASLt: dense (f32 with FP32 compute, TF32 off; bf16 with FP32
// accumulation), strided-batched, and FP8 E4M3 with the Hopper block-scaling modes.
//
// One cuBLASLt handle per device, created lazily under a mutex (thread-safe). The workspace comes
// from the caching allocator on the calling thread's current stream for each call, so concurrent
// streams never share one. Calls enqueue on `stream` and return without synchronising; errors
// throw fathom::Error naming the call and the shapes. Not for use outside kernels/cuda/.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fathom::cuda {

enum class BlasType : uint8_t { kF32, kBF16, kF8E4M3 };

// C = alpha * op(A) op(B) + beta * C for `batch` matrices, all row-major:
//   op(A): (m, k), stored (m, k) with row stride lda, or (k, m) when trans_a;
//   op(B): (k, n), stored (k, n) with row stride ldb, or (n, k) when trans_b;
//   C: (m, n), contiguous (ldc == n) so k == 0 can be served by a memset.
// Batch entry i starts at a + i * stride_a (elements) and so on. (cuda::gemm never passes a zero
// stride for a shared B: it folds the batch into m, or loops.)
// Types: A and B both f32 (C f32) or both bf16 (C f32 or bf16). beta is 0 or 1.
struct RowMajorGemm {
  bool trans_a = false;
  bool trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  int64_t lda = 0, stride_a = 0;
  const void* b = nullptr;
  int64_t ldb = 0, stride_b = 0;
  void* c = nullptr;
  int64_t stride_c = 0;
  BlasType ab_type = BlasType::kF32;
  BlasType c_type = BlasType::kF32;
  int64_t batch = 1;
  float alpha = 1.0f;
  float beta = 0.0f;
};
void gemm_row_major(const RowMajorGemm& g, int device, cudaStream_t stream);

// FP8 "TN" GEMM: C (m, n) = dequant(A) dequant(B)^T (+ C when accumulate), A (m, k) and
// B (n, k) E4M3 row-major, FP32 accumulation, C f32 or bf16 (contiguous).
// Scales in cuBLASLt's layouts (kernels/cuda/ops_gemm.cc converts ours):
//   a_scales: 1x128 blocks, (ceil(k / 128), m) row-major (m contiguous);
//   b_scales: 1x128 blocks: (ceil(k / 128), n) row-major; 128x128 blocks: (ceil(n / 128), L4)
//   row-major with L4 = ceil(k / 128) rounded up to a multiple of 4.
// Returns false without enqueuing anything when cuBLASLt has no kernel for the shape (callers then
// fall back to a BF16 GEMM on dequantized operands). Needs m and n multiples of 4, k a multiple of
// 16 and 16-byte aligned pointers (fp8_gemm_supported() checks this).
struct Fp8Gemm {
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  const float* a_scales = nullptr;
  const void* b = nullptr;
  const float* b_scales = nullptr;
  bool b_block128x128 = false;
  void* c = nullptr;
  BlasType c_type = BlasType::kF32;
  bool accumulate = false;
};
bool fp8_gemm_supported(const Fp8Gemm& g);
bool fp8_gemm_tn(const Fp8Gemm& g, int device, cudaStream_t stream);

// Process-wide counts of fp8_gemm_tn calls served by cuBLASLt and of those that returned false
// (fallback), so tests and benchmarks can tell which path ran.
struct Fp8GemmStats {
  int64_t cublaslt = 0;
  int64_t fallback = 0;
};
Fp8GemmStats fp8_gemm_stats();

}  // namespace fathom::cuda
