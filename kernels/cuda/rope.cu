// Rotary position embedding applied in place: one thread per rotated pair.
#include "kernels/cuda/common.cuh"

namespace fathom::cuda {
namespace {

__global__ void rope_kernel(FloatPtr x, const int32_t* positions, const float* cos_table,
                            const float* sin_table, int64_t max_position, int64_t tokens,
                            int64_t heads, int64_t head_dim, int64_t rot_dim, bool half_style,
                            bool inverse) {
  const int64_t half = rot_dim / 2;
  const int64_t pairs = tokens * heads * half;
  const int64_t offset = head_dim - rot_dim;  // rotated dims are the last rot_dim of each head
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < pairs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = p % half;
    const int64_t th = p / half;  // token * heads + head
    const int64_t t = th / heads;
    const int64_t base = th * head_dim + offset;
    const int64_t a = half_style ? base + i : base + 2 * i;
    const int64_t b = half_style ? base + i + half : base + 2 * i + 1;
    const int32_t pos = positions[t];
    if (pos < 0 || pos >= max_position) {
      store(x, a, NAN);
      store(x, b, NAN);
      continue;
    }
    const float c = cos_table[pos * half + i];
    const float s = inverse ? -sin_table[pos * half + i] : sin_table[pos * half + i];
    const float xa = load(x, a);
    const float xb = load(x, b);
    store(x, a, xa * c - xb * s);
    store(x, b, xa * s + xb * c);
  }
}

}  // namespace

void launch_rope(FloatPtr x, const int32_t* positions, const float* cos, const float* sin,
                 int64_t max_position, int64_t tokens, int64_t heads, int64_t head_dim,
                 int64_t rot_dim, bool half_style, bool inverse, cudaStream_t stream) {
  const int64_t pairs = tokens * heads * (rot_dim / 2);
  if (pairs == 0) return;
  rope_kernel<<<grid_for(pairs), kThreads, 0, stream>>>(
      x, positions, cos, sin, max_position, tokens, heads, head_dim, rot_dim, half_style, inverse);
  FATHOM_CUDA_CHECK_LAUNCH();
}

}  // namespace fathom::cuda
