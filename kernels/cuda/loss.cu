// Cross-entropy over one vocabulary chunk of logits at a time (the GEMMs run in cuBLASLt):
// an online log-sum-exp for the forward, softmax - onehot for the backward.
#include "kernels/cuda/common.cuh"

namespace fathom::cuda {
namespace {

// One block per token row.
__global__ void ce_chunk_forward_kernel(const float* logits, int64_t tokens, int64_t cols,
                                        int64_t v0, const int32_t* targets, int32_t ignore_index,
                                        float* run_max, float* run_sum, float* target_logit) {
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const float* row = logits + t * cols;
    float m = -INFINITY;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, row[c]);
    m = block_reduce(m, MaxOp(), -INFINITY);
    const float old_max = run_max[t];
    const float new_max = fmaxf(old_max, m);
    if (new_max == -INFINITY) continue;  // every logit so far is -inf (uniform in the block)
    float s = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += expf(row[c] - new_max);
    s = block_reduce(s, SumOp(), 0.0f);
    if (threadIdx.x == 0) {
      run_sum[t] = run_sum[t] * expf(old_max - new_max) + s;
      run_max[t] = new_max;
      const int64_t target = targets[t];
      if (target != ignore_index && target >= v0 && target < v0 + cols) {
        target_logit[t] = row[target - v0];
      }
    }
  }
}

__global__ void ce_finish_kernel(const float* run_max, const float* run_sum,
                                 const float* target_logit, const int32_t* targets,
                                 int32_t ignore_index, int64_t tokens, float* loss, float* lse) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < tokens;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float l = run_max[t] + logf(run_sum[t]);
    lse[t] = l;
    loss[t] = targets[t] == ignore_index ? 0.0f : l - target_logit[t];
  }
}

__global__ void ce_chunk_backward_kernel(const float* logits, int64_t tokens, int64_t cols,
                                         int64_t v0, const int32_t* targets, int32_t ignore_index,
                                         const float* lse, const float* dloss, FloatPtr grad) {
  const int64_t n = tokens * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / cols;
    const int64_t target = targets[t];
    float g = 0.0f;
    if (target != ignore_index) {
      const float d = dloss[t];
      g = expf(logits[i] - lse[t]) * d;
      if (target == v0 + i % cols) g -= d;
    }
    store(grad, i, g);
  }
}

}  // namespace

void launch_ce_chunk_forward(const float* logits, int64_t tokens, int64_t cols, int64_t v0,
                             const int32_t* targets, int32_t ignore_index, float* run_max,
                             float* run_sum, float* target_logit, cudaStream_t stream) {
  if (tokens == 0 || cols == 0) return;
  ce_chunk_forward_kernel<<<grid_for(tokens, 1), kThreads, 0, stream>>>(
      logits, tokens, cols, v0, targets, ignore_index, run_max, run_sum, target_logit);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void launch_ce_finish(const float* run_max, const float* run_sum, const float* target_logit,
                      const int32_t* targets, int32_t ignore_index, int64_t tokens, float* loss,
                      float* lse, cudaStream_t stream) {
  if (tokens == 0) return;
  ce_finish_kernel<<<grid_for(tokens), kThreads, 0, stream>>>(
      run_max, run_sum, target_logit, targets, ignore_index, tokens, loss, lse);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void launch_ce_chunk_backward(const float* logits, int64_t tokens, int64_t cols, int64_t v0,
                              const int32_t* targets, int32_t ignore_index, const float* lse,
                              const float* dloss, FloatPtr grad, cudaStream_t stream) {
  const int64_t n = tokens * cols;
  if (n == 0) return;
  ce_chunk_backward_kernel<<<grid_for(n), kThreads, 0, stream>>>(logits, tokens, cols, v0, targets,
                                                                 ignore_index, lse, dloss, grad);
  FATHOM_CUDA_CHECK_LAUNCH();
}

}  // namespace fathom::cuda
