// Fused output head + cross-entropy on the host, one vocabulary chunk at a time: the only
// T x chunk buffer is the chunk's logits, so memory stays O(T * chunk_size).
//
// One OpenMP region runs the whole op: each thread owns a slice of the tokens (its logits rows,
// softmax and dh rows) and, in the backward, a slice of each chunk's vocabulary rows (dw rows),
// calling single-threaded sgemm (see kernels/cpu/blas.h).
#include <omp.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/f32_staging.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace fathom::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void check_targets(const char* op, const Tensor& targets, int64_t vocab, int32_t ignore_index) {
  const int32_t* t = targets.data<int32_t>();
  for (int64_t i = 0; i < targets.numel(); ++i) {
    FATHOM_CHECK(t[i] == ignore_index || (t[i] >= 0 && t[i] < vocab))
        << op << ": targets[" << i << "] = " << t[i] << " is outside [0, " << vocab
        << ") and is not ignore_index " << ignore_index << " (targets " << targets.str() << ")";
  }
}

// Sizes go to BLAS as int; checked before the OpenMP region, where nothing may throw.
void check_blas_sizes(const char* op, int64_t t_count, int64_t d, int64_t chunk) {
  FATHOM_CHECK(t_count <= INT_MAX && d <= INT_MAX && chunk <= INT_MAX)
      << op << ": T=" << t_count << ", D=" << d << ", chunk=" << chunk
      << " exceed the BLAS int range";
}

// The f32 rows [v0, v0 + rows) of w: a pointer into w, or (bf16) `scratch`, which the threads of
// the calling region fill together. Ends with a barrier when it converts.
const float* weight_chunk(const Tensor& w, int64_t v0, int64_t rows, float* scratch, int64_t thread,
                          int64_t threads) {
  const int64_t d = w.dim(1);
  if (w.dtype() == DType::kF32) return w.data<float>() + v0 * d;
  const int64_t r0 = split_begin(rows, threads, thread),
                r1 = split_begin(rows, threads, thread + 1);
  convert_to_f32(w.data<bf16>() + (v0 + r0) * d, scratch + r0 * d, (r1 - r0) * d);
#pragma omp barrier
  return scratch;
}

}  // namespace

void fused_linear_cross_entropy_forward(const Tensor& h, const Tensor& w, const Tensor& targets,
                                        Tensor& loss, Tensor& lse,
                                        const CrossEntropyOptions& options) {
  constexpr const char* kOp = "fused_linear_cross_entropy_forward";
  const int64_t t_count = h.dim(0);
  const int64_t d = h.dim(1);
  const int64_t vocab = w.dim(0);
  const int32_t ignore = options.ignore_index;
  check_targets(kOp, targets, vocab, ignore);
  if (t_count == 0) return;
  const int64_t chunk = std::min(options.chunk_size, vocab);
  check_blas_sizes(kOp, t_count, d, chunk);
  const Tensor h32 = as_f32(h);
  Tensor logits = Tensor::empty({t_count, chunk}, DType::kF32);
  Tensor w_scratch = Tensor::empty({w.dtype() == DType::kF32 ? 0 : chunk, d}, DType::kF32);
  const int32_t* tgt = targets.data<int32_t>();
  const float* hp = h32.data<float>();
  float* z = logits.data<float>();
  float* loss_out = loss.data<float>();
  float* lse_out = lse.data<float>();
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
    const int64_t t0 = split_begin(t_count, threads, thread);
    const int64_t t1 = split_begin(t_count, threads, thread + 1);
    // Online log-sum-exp per token: running max and the sum of exp(logit - max).
    std::vector<float> run_max(t1 - t0, kNegInf), target_logit(t1 - t0, 0.0f);
    std::vector<double> run_sum(t1 - t0, 0.0);
    for (int64_t v0 = 0; v0 < vocab; v0 += chunk) {
      const int64_t rows = std::min(chunk, vocab - v0);
      const float* wc = weight_chunk(w, v0, rows, w_scratch.data<float>(), thread, threads);
      // Row stride `chunk` whatever the chunk's size: each thread's rows stay its own.
      float* zt = z + t0 * chunk;
      sgemm(false, true, t1 - t0, rows, d, 1.0f, hp + t0 * d, d, wc, d, 0.0f, zt, chunk);
      for (int64_t t = t0; t < t1; ++t) {
        const float* row = zt + (t - t0) * chunk;
        const int64_t i = t - t0;
        const float m = std::max(run_max[i], row_max(row, rows));
        if (m == kNegInf) continue;  // every logit so far is -inf
        run_sum[i] =
            run_sum[i] * std::exp(static_cast<double>(run_max[i]) - m) + exp_sum(row, rows, m);
        run_max[i] = m;
        if (tgt[t] != ignore && tgt[t] >= v0 && tgt[t] < v0 + rows) {
          target_logit[i] = row[tgt[t] - v0];
        }
      }
      // The next chunk's bf16 conversion overwrites w_scratch.
      if (w.dtype() != DType::kF32) {
#pragma omp barrier
      }
    }
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t - t0;
      lse_out[t] = static_cast<float>(run_max[i] + std::log(run_sum[i]));
      loss_out[t] = tgt[t] == ignore ? 0.0f : lse_out[t] - target_logit[i];
    }
  }
}

void fused_linear_cross_entropy_backward(const Tensor& h, const Tensor& w, const Tensor& targets,
                                         const Tensor& lse, const Tensor& dloss, Tensor& dh,
                                         Tensor& dw, const CrossEntropyOptions& options) {
  constexpr const char* kOp = "fused_linear_cross_entropy_backward";
  const int64_t t_count = h.dim(0);
  const int64_t d = h.dim(1);
  const int64_t vocab = w.dim(0);
  const int32_t ignore = options.ignore_index;
  check_targets(kOp, targets, vocab, ignore);
  if (t_count == 0) return;
  const int64_t chunk = std::min(options.chunk_size, vocab);
  check_blas_sizes(kOp, t_count, d, chunk);
  const Tensor h32 = as_f32(h);
  Tensor dh32 = f32_output(dh, /*load=*/false);
  Tensor logits = Tensor::empty({t_count, chunk}, DType::kF32);
  Tensor w_scratch = Tensor::empty({w.dtype() == DType::kF32 ? 0 : chunk, d}, DType::kF32);
  const int32_t* tgt = targets.data<int32_t>();
  const float* lse_in = lse.data<float>();
  const float* dl = dloss.data<float>();
  const float* hp = h32.data<float>();
  float* dhp = dh32.data<float>();
  float* dwp = dw.data<float>();
  float* g = logits.data<float>();
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
    const int64_t t0 = split_begin(t_count, threads, thread);
    const int64_t t1 = split_begin(t_count, threads, thread + 1);
    std::fill(dhp + t0 * d, dhp + t1 * d, 0.0f);
    for (int64_t v0 = 0; v0 < vocab; v0 += chunk) {
      const int64_t rows = std::min(chunk, vocab - v0);
      const float* wc = weight_chunk(w, v0, rows, w_scratch.data<float>(), thread, threads);
      sgemm(false, true, t1 - t0, rows, d, 1.0f, hp + t0 * d, d, wc, d, 0.0f, g + t0 * rows, rows);
      // g = (softmax - onehot) * dloss: the gradient of the loss with respect to the logits.
      for (int64_t t = t0; t < t1; ++t) {
        float* row = g + t * rows;
        if (tgt[t] == ignore) {
          std::fill_n(row, rows, 0.0f);
          continue;
        }
        exp_inplace(row, rows, lse_in[t], dl[t]);
        if (tgt[t] >= v0 && tgt[t] < v0 + rows) row[tgt[t] - v0] -= dl[t];
      }
      // dh (my tokens) += g wc
      sgemm(false, false, t1 - t0, d, rows, 1.0f, g + t0 * rows, rows, wc, d, 1.0f, dhp + t0 * d,
            d);
#pragma omp barrier
      // dw (my vocabulary rows of the chunk) += g^T h over every token.
      const int64_t c0 = split_begin(rows, threads, thread);
      const int64_t c1 = split_begin(rows, threads, thread + 1);
      sgemm(true, false, c1 - c0, d, t_count, 1.0f, g + c0, rows, hp, d, 1.0f, dwp + (v0 + c0) * d,
            d);
#pragma omp barrier
    }
  }
  store_f32_output(dh32, dh);
}

}  // namespace fathom::cpu
