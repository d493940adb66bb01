// cuBLASLt calls behind kernels/cuda/blas.h.
//
// Row-major C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T: cuBLASLt's "A"
// is our B, its "B" is our A, and the row-major buffers are read as their column-major transposes.
#include "kernels/cuda/blas.h"

#include <cublasLt.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <mutex>
#include <unordered_map>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/tensor.h"

namespace fathom::cuda {
namespace {

// cuBLAS recommends 32 MiB on Hopper.
constexpr size_t kWorkspaceBytes = size_t{32} << 20;

std::atomic<int64_t> fp8_lt_calls{0};
std::atomic<int64_t> fp8_fallback_calls{0};

cublasLtHandle_t handle_for(int device) {
  static std::mutex mutex;
  // Never destroyed: handles outlive every op, and tearing them down at exit races the driver.
  static auto* handles = new std::unordered_map<int, cublasLtHandle_t>();
  std::lock_guard<std::mutex> lock(mutex);
  auto it = handles->find(device);
  if (it != handles->end()) return it->second;
  cublasLtHandle_t handle = nullptr;
  FATHOM_CUBLAS_CHECK(cublasLtCreate(&handle));
  handles->emplace(device, handle);
  return handle;
}

cudaDataType_t cuda_type(BlasType t) {
  switch (t) {
    case BlasType::kF32: return CUDA_R_32F;
    case BlasType::kBF16: return CUDA_R_16BF;
    case BlasType::kF8E4M3: return CUDA_R_8F_E4M3;
  }
  return CUDA_R_32F;
}

size_t type_bytes(BlasType t) {
  switch (t) {
    case BlasType::kF32: return 4;
    case BlasType::kBF16: return 2;
    case BlasType::kF8E4M3: return 1;
  }
  return 4;
}

const char* type_name(BlasType t) {
  switch (t) {
    case BlasType::kF32: return "f32";
    case BlasType::kBF16: return "bf16";
    case BlasType::kF8E4M3: return "f8e4m3";
  }
  return "?";
}

// Largest power of two <= 256 dividing the address and (for batches) the batch stride in bytes:
// what the heuristic may assume about every matrix of the operand.
uint32_t alignment(const void* ptr, int64_t stride_bytes) {
  const uint64_t bits = reinterpret_cast<uintptr_t>(ptr) | static_cast<uint64_t>(stride_bytes);
  uint32_t a = 256;
  while (a > 1 && bits % a != 0) a /= 2;
  return a;
}

class MatmulDesc {
 public:
  MatmulDesc() {
    FATHOM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  }
  ~MatmulDesc() { cublasLtMatmulDescDestroy(desc_); }
  MatmulDesc(const MatmulDesc&) = delete;
  MatmulDesc& operator=(const MatmulDesc&) = delete;
  template <typename T>
  void set(cublasLtMatmulDescAttributes_t attr, const T& value) {
    FATHOM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, attr, &value, sizeof(value)));
  }
  cublasLtMatmulDesc_t get() const { return desc_; }

 private:
  cublasLtMatmulDesc_t desc_ = nullptr;
};

class Layout {
 public:
  // Column-major rows x cols with leading dimension ld; batch > 1 adds a strided batch.
  Layout(BlasType type, int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride) {
    FATHOM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(
        &layout_, cuda_type(type), static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld));
    if (batch > 1) {
      const int32_t count = static_cast<int32_t>(batch);
      FATHOM_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
          layout_, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
      FATHOM_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
          layout_, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
    }
  }
  ~Layout() { cublasLtMatrixLayoutDestroy(layout_); }
  Layout(const Layout&) = delete;
  Layout& operator=(const Layout&) = delete;
  cublasLtMatrixLayout_t get() const { return layout_; }

 private:
  cublasLtMatrixLayout_t layout_ = nullptr;
};

class Preference {
 public:
  Preference(uint32_t align_a, uint32_t align_b, uint32_t align_c) {
    FATHOM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref_));
    const uint64_t workspace = kWorkspaceBytes;
    set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, workspace);
    set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a);
    set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b);
    set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c);
    set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_c);
  }
  ~Preference() { cublasLtMatmulPreferenceDestroy(pref_); }
  Preference(const Preference&) = delete;
  Preference& operator=(const Preference&) = delete;
  cublasLtMatmulPreference_t get() const { return pref_; }

 private:
  template <typename T>
  void set(cublasLtMatmulPreferenceAttributes_t attr, const T& value) {
    FATHOM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref_, attr, &value, sizeof(value)));
  }
  cublasLtMatmulPreference_t pref_ = nullptr;
};

// The column-major problem cuBLASLt sees, D = alpha op(A) op(B) + beta D (C aliases D).
struct LtProblem {
  cublasOperation_t op_a, op_b;
  int64_t m, n, k;
  const void* a;
  BlasType a_type;
  int64_t a_rows, a_cols, lda, stride_a;
  const void* b;
  BlasType b_type;
  int64_t b_rows, b_cols, ldb, stride_b;
  void* d;
  BlasType d_type;
  int64_t ldd, stride_d;
  int64_t batch;
  float alpha, beta;
};

// Finds an algorithm and enqueues the matmul. Returns false when the heuristic offers none; with
// `lenient`, also when it rejects the problem as invalid (the FP8 block-scaled path falls back
// then). Throws on any other failure.
bool lt_matmul(const LtProblem& p, MatmulDesc& desc, bool lenient, int device,
               cudaStream_t stream) {
  desc.set(CUBLASLT_MATMUL_DESC_TRANSA, p.op_a);
  desc.set(CUBLASLT_MATMUL_DESC_TRANSB, p.op_b);
  const Layout a(p.a_type, p.a_rows, p.a_cols, p.lda, p.batch, p.stride_a);
  const Layout b(p.b_type, p.b_rows, p.b_cols, p.ldb, p.batch, p.stride_b);
  const Layout d(p.d_type, p.m, p.n, p.ldd, p.batch, p.stride_d);
  const int64_t batched = p.batch > 1 ? 1 : 0;
  const Preference pref(
      alignment(p.a, batched * p.stride_a * static_cast<int64_t>(type_bytes(p.a_type))),
      alignment(p.b, batched * p.stride_b * static_cast<int64_t>(type_bytes(p.b_type))),
      alignment(p.d, batched * p.stride_d * static_cast<int64_t>(type_bytes(p.d_type))));
  cublasLtHandle_t handle = handle_for(device);
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      handle, desc.get(), a.get(), b.get(), d.get(), d.get(), pref.get(), 1, &result, &found);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || (status == CUBLAS_STATUS_SUCCESS && found == 0) ||
      (lenient && status == CUBLAS_STATUS_INVALID_VALUE)) {
    return false;
  }
  FATHOM_CUBLAS_CHECK(status);
  Tensor workspace =
      Tensor::empty({static_cast<int64_t>(kWorkspaceBytes)}, DType::kU8, Device::cuda(device));
  FATHOM_CUBLAS_CHECK(cublasLtMatmul(handle, desc.get(), &p.alpha, p.a, a.get(), p.b, b.get(),
                                     &p.beta, p.d, d.get(), p.d, d.get(), &result.algo,
                                     workspace.raw_data(), kWorkspaceBytes, stream));
  return true;
}

}  // namespace

void gemm_row_major(const RowMajorGemm& g, int device, cudaStream_t stream) {
  FATHOM_CHECK(g.ab_type != BlasType::kF8E4M3 &&
               (g.ab_type == BlasType::kBF16 || g.c_type == BlasType::kF32))
      << "gemm_row_major: unsupported types " << type_name(g.ab_type) << " x "
      << type_name(g.ab_type) << " -> " << type_name(g.c_type);
  FATHOM_CHECK(g.beta == 0.0f || g.beta == 1.0f) << "gemm_row_major: beta must be 0 or 1";
  FATHOM_CHECK(g.batch <= INT32_MAX) << "gemm_row_major: batch " << g.batch << " is too large";
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
  if (g.k == 0) {
    // An empty sum: C = 0, or C unchanged when accumulating.
    if (g.beta == 0.0f) {
      FATHOM_CHECK(g.batch == 1 || g.stride_c == g.m * g.n)
          << "gemm_row_major: k == 0 needs a contiguous batch of C";
      FATHOM_CUDA_CHECK(cudaMemsetAsync(
          g.c, 0, static_cast<size_t>(g.batch * g.m * g.n) * type_bytes(g.c_type), stream));
    }
    return;
  }
  LtProblem p{};
  // cuBLASLt A := our B. Row-major (k, n) is column-major (n x k) = op(B)^T: no transpose;
  // row-major (n, k) is column-major (k x n), transposed.
  p.op_a = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  p.a = g.b;
  p.a_type = g.ab_type;
  p.a_rows = g.trans_b ? g.k : g.n;
  p.a_cols = g.trans_b ? g.n : g.k;
  p.lda = g.ldb;
  p.stride_a = g.stride_b;
  // cuBLASLt B := our A. Row-major (m, k) is column-major (k x m) = op(A)^T.
  p.op_b = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  p.b = g.a;
  p.b_type = g.ab_type;
  p.b_rows = g.trans_a ? g.m : g.k;
  p.b_cols = g.trans_a ? g.k : g.m;
  p.ldb = g.lda;
  p.stride_b = g.stride_a;
  p.d = g.c;
  p.d_type = g.c_type;
  p.ldd = g.n;
  p.stride_d = g.stride_c;
  p.m = g.n;
  p.n = g.m;
  p.k = g.k;
  p.batch = g.batch;
  p.alpha = g.alpha;
  p.beta = g.beta;
  MatmulDesc desc;
  FATHOM_CHECK(lt_matmul(p, desc, /*lenient=*/false, device, stream))
      << "gemm_row_major: cuBLASLt has no algorithm for " << type_name(g.ab_type) << " -> "
      << type_name(g.c_type) << " m=" << g.m << " n=" << g.n << " k=" << g.k
      << " trans_a=" << g.trans_a << " trans_b=" << g.trans_b << " lda=" << g.lda
      << " ldb=" << g.ldb << " batch=" << g.batch;
}

bool fp8_gemm_supported(const Fp8Gemm& g) {
  const int64_t c_align = g.c_type == BlasType::kF32 ? 4 : 8;  // 16 bytes of C per row stride
  return g.m % 4 == 0 && g.n % 4 == 0 && g.k % 16 == 0 && g.n % c_align == 0 &&
         alignment(g.a, 0) >= 16 && alignment(g.b, 0) >= 16 && alignment(g.c, 0) >= 16 &&
         alignment(g.a_scales, 0) >= 16 && alignment(g.b_scales, 0) >= 16;
}

bool fp8_gemm_tn(const Fp8Gemm& g, int device, cudaStream_t stream) {
  if (g.m == 0 || g.n == 0 || g.k == 0 || !fp8_gemm_supported(g)) {
    fp8_fallback_calls.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  LtProblem p{};
  // cuBLASLt A := our B (n, k) row-major = column-major (k x n), transposed ("T");
  // cuBLASLt B := our A (m, k) row-major = column-major (k x m), not transposed ("N").
  p.op_a = CUBLAS_OP_T;
  p.a = g.b;
  p.a_type = BlasType::kF8E4M3;
  p.a_rows = g.k;
  p.a_cols = g.n;
  p.lda = g.k;
  p.op_b = CUBLAS_OP_N;
  p.b = g.a;
  p.b_type = BlasType::kF8E4M3;
  p.b_rows = g.k;
  p.b_cols = g.m;
  p.ldb = g.k;
  p.d = g.c;
  p.d_type = g.c_type;
  p.ldd = g.n;
  p.m = g.n;
  p.n = g.m;
  p.k = g.k;
  p.batch = 1;
  p.alpha = 1.0f;
  p.beta = g.accumulate ? 1.0f : 0.0f;
  MatmulDesc desc;
  const int32_t a_mode = g.b_block128x128 ? CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F
                                          : CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  const int32_t b_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  desc.set(CUBLASLT_MATMUL_DESC_A_SCALE_MODE, a_mode);
  desc.set(CUBLASLT_MATMUL_DESC_B_SCALE_MODE, b_mode);
  const void* a_scale = g.b_scales;
  const void* b_scale = g.a_scales;
  desc.set(CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, a_scale);
  desc.set(CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, b_scale);
  const bool done = lt_matmul(p, desc, /*lenient=*/true, device, stream);
  (done ? fp8_lt_calls : fp8_fallback_calls).fetch_add(1, std::memory_order_relaxed);
  return done;
}

Fp8GemmStats fp8_gemm_stats() {
  return Fp8GemmStats{fp8_lt_calls.load(std::memory_order_relaxed),
                      fp8_fallback_calls.load(std::memory_order_relaxed)};
}

}  // namespace fathom::cuda
