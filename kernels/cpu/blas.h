// Row-major f32 GEMM through OpenBLAS for the CPU backend, with the degenerate sizes BLAS rejects
// (k == 0, zero leading dims) handled here.
//
// OpenBLAS is its OpenMP build (see the top-level CMakeLists.txt): it shares OpenMP's thread
// pool, so OpenMP loops and sgemm calls can follow each other freely, and an sgemm called from
// inside an OpenMP parallel region runs on the calling thread alone.
// Not for use outside kernels/cpu/.
#pragma once

#include <cblas.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/check.h"

namespace fathom::cpu {

// C (m x n, row stride ldc) = alpha * op(A) op(B) + beta * C, where op(A) is m x k and op(B) is
// k x n; A is stored (m, k) with row stride lda, or (k, m) when trans_a; B likewise.
// beta == 0 overwrites C without reading it.
inline void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                  int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i) {
      float* row = c + i * ldc;
      if (beta == 0.0f) {
        std::fill_n(row, n, 0.0f);
      } else if (beta != 1.0f) {
        for (int64_t j = 0; j < n; ++j) row[j] *= beta;
      }
    }
    return;
  }
  FATHOM_CHECK(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX &&
               ldc <= INT_MAX)
      << "sgemm: sizes m=" << m << " n=" << n << " k=" << k << " exceed the BLAS int range";
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

// [begin, end) of part i when n items are split into `parts` nearly equal contiguous parts.
inline int64_t split_begin(int64_t n, int64_t parts, int64_t i) {
  return n / parts * i + std::min(i, n % parts);
}

}  // namespace fathom::cpu
