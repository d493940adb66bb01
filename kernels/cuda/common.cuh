// Device helpers shared by the kernels in kernels/cuda/*.cu: f32/bf16 loads and stores, warp and
// block reductions, and grid sizing for grid-stride loops. Include from .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launchers.h"

namespace fathom::cuda {

constexpr int kThreads = 256;
// Grid-stride loops cap their grid here; more work loops inside the kernel.
constexpr int64_t kMaxBlocks = 65536;

// Blocks for a grid-stride loop over `n` items, `per_block` items per block and pass.
inline unsigned grid_for(int64_t n, int64_t per_block = kThreads) {
  const int64_t blocks = (n + per_block - 1) / per_block;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(blocks, kMaxBlocks)));
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

__device__ __forceinline__ float load(ConstFloatPtr p, int64_t i) {
  return p.bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(p.ptr)[i])
                : static_cast<const float*>(p.ptr)[i];
}

__device__ __forceinline__ float load(FloatPtr p, int64_t i) {
  return p.bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(p.ptr)[i])
                : static_cast<const float*>(p.ptr)[i];
}

__device__ __forceinline__ void store(FloatPtr p, int64_t i, float v) {
  if (p.bf16) {
    static_cast<__nv_bfloat16*>(p.ptr)[i] = __float2bfloat16_rn(v);
  } else {
    static_cast<float*>(p.ptr)[i] = v;
  }
}

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
  __device__ __forceinline__ double operator()(double a, double b) const { return fmax(a, b); }
};

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Reduction over the whole block; every thread receives the result. blockDim.x must be a multiple
// of 32 and every thread of the block must call it (it synchronises). Safe to call repeatedly.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T identity) {
  __shared__ T partial[32];
  __shared__ T result;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_reduce(v, op);
  __syncthreads();  // earlier readers of partial / result are done
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int warps = static_cast<int>(blockDim.x >> 5);
    T w = lane < warps ? partial[lane] : identity;
    w = warp_reduce(w, op);
    if (lane == 0) result = w;
  }
  __syncthreads();
  return result;
}

}  // namespace fathom::cuda
