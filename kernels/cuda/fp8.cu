// FP8 E4M3 block quantization, bit-identical to kernels/cpu/fp8.cc: amax is an fmaxf reduction of
// |x| over the valid elements (max is order-independent), scale = amax / 448 with IEEE division,
// an all-zero block gets 1, pow2 rounds the scale up to 2^ceil(log2) with exact frexpf/ldexpf,
// and q = e4m3(x / scale) rounded to nearest even with saturation to +-448.
// Also the scale-layout conversions the cuBLASLt FP8 GEMM needs.
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "kernels/cuda/common.cuh"

namespace fathom::cuda {
namespace {

constexpr int64_t kBlock = 128;

__device__ __forceinline__ float block_scale(float amax, bool pow2) {
  float scale = __fdiv_rn(amax, 448.0f);
  if (!(scale > 0.0f)) return 1.0f;  // all-zero block, or a quotient that underflowed
  if (pow2 && isfinite(scale)) {
    int e = 0;
    const float m = frexpf(scale, &e);
    scale = m == 0.5f ? scale : ldexpf(1.0f, e);
  }
  return scale;
}

__device__ __forceinline__ uint8_t to_e4m3(float x, float scale) {
  return __nv_cvt_float_to_fp8(__fdiv_rn(x, scale), __NV_SATFINITE, __NV_E4M3);
}

__device__ __forceinline__ float from_e4m3(uint8_t q) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(q, __NV_E4M3)));
}

// One warp per 1x128 tile; lane l holds columns l, l + 32, l + 64, l + 96 of the tile.
__global__ void quantize_1x128_kernel(ConstFloatPtr x, int64_t rows, int64_t k, bool pow2,
                                      uint8_t* q, float* scales) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = blockDim.x / 32;
  const int64_t kb = (k + kBlock - 1) / kBlock;
  const int64_t tiles = rows * kb;
  for (int64_t t = blockIdx.x * warps + threadIdx.x / 32; t < tiles; t += gridDim.x * warps) {
    const int64_t r = t / kb;
    const int64_t b = t % kb;
    float v[4];
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t c = b * kBlock + lane + 32 * j;
      v[j] = c < k ? load(x, r * k + c) : 0.0f;
      amax = fmaxf(amax, fabsf(v[j]));
    }
    amax = warp_reduce(amax, MaxOp());
    const float scale = block_scale(amax, pow2);
    if (lane == 0) scales[r * kb + b] = scale;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t c = b * kBlock + lane + 32 * j;
      if (c < k) q[r * k + c] = to_e4m3(v[j], scale);
    }
  }
}

// One block per 128x128 block of one batch entry; thread t covers column t % 128 of the block
// and every (blockDim / 128)-th row. blockDim must be a multiple of 128.
__global__ void quantize_128x128_kernel(ConstFloatPtr x, int64_t batch, int64_t m, int64_t k,
                                        bool pow2, uint8_t* q, float* scales) {
  const int64_t mb = (m + kBlock - 1) / kBlock;
  const int64_t kb = (k + kBlock - 1) / kBlock;
  const int64_t blocks = batch * mb * kb;
  const int64_t row_step = blockDim.x / kBlock;
  for (int64_t t = blockIdx.x; t < blocks; t += gridDim.x) {
    const int64_t g = t / (mb * kb);
    const int64_t ib = (t / kb) % mb;
    const int64_t jb = t % kb;
    const int64_t r1 = min(m, (ib + 1) * kBlock);
    const int64_t c = jb * kBlock + threadIdx.x % kBlock;
    const int64_t first_row = ib * kBlock + threadIdx.x / kBlock;
    float amax = 0.0f;
    if (c < k) {
      for (int64_t r = first_row; r < r1; r += row_step) {
        amax = fmaxf(amax, fabsf(load(x, (g * m + r) * k + c)));
      }
    }
    amax = block_reduce(amax, MaxOp(), 0.0f);
    const float scale = block_scale(amax, pow2);
    if (threadIdx.x == 0) scales[(g * mb + ib) * kb + jb] = scale;
    if (c < k) {
      for (int64_t r = first_row; r < r1; r += row_step) {
        const int64_t i = (g * m + r) * k + c;
        q[i] = to_e4m3(load(x, i), scale);
      }
    }
  }
}

__global__ void dequantize_kernel(const uint8_t* q, const float* scales, int64_t rows, int64_t k,
                                  int64_t block_rows, bool block128x128, FloatPtr out) {
  const int64_t kb = (k + kBlock - 1) / kBlock;
  const int64_t mb = (block_rows + kBlock - 1) / kBlock;
  const int64_t n = rows * k;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / k;
    const int64_t c = i % k;
    const int64_t scale_row = block128x128 ? (r / block_rows) * mb + (r % block_rows) / kBlock : r;
    store(out, i, from_e4m3(q[i]) * scales[scale_row * kb + c / kBlock]);
  }
}

__global__ void transpose_kernel(const float* src, int64_t rows, int64_t cols, float* dst) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols;
    const int64_t c = i % cols;
    dst[c * rows + r] = src[i];
  }
}

__global__ void pad_rows_kernel(const float* src, int64_t rows, int64_t cols, int64_t ld,
                                float* dst) {
  const int64_t n = rows * ld;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / ld;
    const int64_t c = i % ld;
    dst[i] = c < cols ? src[r * cols + c] : 0.0f;
  }
}

}  // namespace

void launch_quantize_1x128(ConstFloatPtr x, int64_t rows, int64_t k, bool pow2, uint8_t* q,
                           float* scales, cudaStream_t stream) {
  const int64_t tiles = rows * ceil_div(k, kBlock);
  if (tiles == 0) return;
  quantize_1x128_kernel<<<grid_for(tiles, kThreads / 32), kThreads, 0, stream>>>(x, rows, k, pow2,
                                                                                 q, scales);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void launch_quantize_128x128(ConstFloatPtr x, int64_t batch, int64_t m, int64_t k, bool pow2,
                             uint8_t* q, float* scales, cudaStream_t stream) {
  const int64_t blocks = batch * ceil_div(m, kBlock) * ceil_div(k, kBlock);
  if (blocks == 0) return;
  quantize_128x128_kernel<<<grid_for(blocks, 1), kThreads, 0, stream>>>(x, batch, m, k, pow2, q,
                                                                        scales);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void launch_dequantize(const uint8_t* q, const float* scales, int64_t rows, int64_t k,
                       int64_t block_rows, bool block128x128, FloatPtr out, cudaStream_t stream) {
  const int64_t n = rows * k;
  if (n == 0) return;
  dequantize_kernel<<<grid_for(n), kThreads, 0, stream>>>(q, scales, rows, k, block_rows,
                                                          block128x128, out);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void launch_transpose_f32(const float* src, int64_t rows, int64_t cols, float* dst,
                          cudaStream_t stream) {
  const int64_t n = rows * cols;
  if (n == 0) return;
  transpose_kernel<<<grid_for(n), kThreads, 0, stream>>>(src, rows, cols, dst);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void launch_pad_rows_f32(const float* src, int64_t rows, int64_t cols, int64_t ld, float* dst,
                         cudaStream_t stream) {
  const int64_t n = rows * ld;
  if (n == 0) return;
  pad_rows_kernel<<<grid_for(n), kThreads, 0, stream>>>(src, rows, cols, ld, dst);
  FATHOM_CUDA_CHECK_LAUNCH();
}

}  // namespace fathom::cuda
