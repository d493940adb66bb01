// AdamW on f32 master weights with f32 or bf16 moments: one thread per parameter.
#include "kernels/cuda/common.cuh"

namespace fathom::cuda {
namespace {

__global__ void adamw_kernel(float* param, const float* grad, FloatPtr m, FloatPtr v, int64_t n,
                             AdamWStep s) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = grad[i];
    const float mi = s.beta1 * load(m, i) + (1.0f - s.beta1) * g;
    const float vi = s.beta2 * load(v, i) + (1.0f - s.beta2) * g * g;
    store(m, i, mi);
    store(v, i, vi);
    // The update uses the f32 moments before they are rounded for storage, like the CPU.
    const float denom = sqrtf(vi * s.inv_bias_correction2) + s.eps;
    const float p = param[i];
    param[i] = p - s.lr * ((mi * s.inv_bias_correction1) / denom + s.weight_decay * p);
  }
}

}  // namespace

void launch_adamw(float* param, const float* grad, FloatPtr m, FloatPtr v, int64_t n,
                  const AdamWStep& step, cudaStream_t stream) {
  if (n == 0) return;
  adamw_kernel<<<grid_for(n), kThreads, 0, stream>>>(param, grad, m, v, n, step);
  FATHOM_CUDA_CHECK_LAUNCH();
}

}  // namespace fathom::cuda
