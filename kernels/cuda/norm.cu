// RMSNorm forward and backward. The weight gradient is reduced over rows in two deterministic
// passes: per-chunk partial sums, then the chunks in order.
#include "kernels/cuda/common.cuh"

namespace fathom::cuda {
namespace {

constexpr int64_t kDwChunkRows = 64;

__global__ void rmsnorm_forward_kernel(ConstFloatPtr x, const float* w, float eps, FloatPtr y,
                                       float* rstd, int64_t rows, int64_t cols) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t base = r * cols;
    float ss = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float v = load(x, base + c);
      ss += v * v;
    }
    ss = block_reduce(ss, SumOp(), 0.0f);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(cols) + eps);
    if (threadIdx.x == 0) rstd[r] = inv;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      store(y, base + c, load(x, base + c) * inv * w[c]);
    }
  }
}

// dx = r (g - x r^2 mean(g x)),  g = dy w.
__global__ void rmsnorm_backward_dx_kernel(ConstFloatPtr dy, ConstFloatPtr x, const float* w,
                                           const float* rstd, FloatPtr dx, int64_t rows,
                                           int64_t cols) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t base = r * cols;
    float dot = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      dot += load(dy, base + c) * w[c] * load(x, base + c);
    }
    dot = block_reduce(dot, SumOp(), 0.0f);
    const float inv = rstd[r];
    const float coef = inv * inv * dot / static_cast<float>(cols);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      store(dx, base + c, inv * (load(dy, base + c) * w[c] - load(x, base + c) * coef));
    }
  }
}

// scratch[chunk][c] = sum over the chunk's rows of dy * x * rstd. Grid: (column blocks, chunks).
__global__ void rmsnorm_dw_partial_kernel(ConstFloatPtr dy, ConstFloatPtr x, const float* rstd,
                                          float* scratch, int64_t rows, int64_t cols) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  if (c >= cols) return;
  const int64_t r0 = chunk * kDwChunkRows;
  const int64_t r1 = min(rows, r0 + kDwChunkRows);
  float acc = 0.0f;
  for (int64_t r = r0; r < r1; ++r)
    acc += load(dy, r * cols + c) * (load(x, r * cols + c) * rstd[r]);
  scratch[chunk * cols + c] = acc;
}

__global__ void rmsnorm_dw_sum_kernel(const float* scratch, int64_t chunks, float* dw,
                                      int64_t cols) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  float acc = 0.0f;
  for (int64_t i = 0; i < chunks; ++i) acc += scratch[i * cols + c];
  dw[c] += acc;
}

int row_threads(int64_t cols) {
  return static_cast<int>(
      std::min<int64_t>(kThreads, std::max<int64_t>(32, ceil_div(cols, 32) * 32)));
}

}  // namespace

void launch_rmsnorm_forward(ConstFloatPtr x, const float* w, float eps, FloatPtr y, float* rstd,
                            int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows == 0) return;
  rmsnorm_forward_kernel<<<grid_for(rows, 1), row_threads(cols), 0, stream>>>(x, w, eps, y, rstd,
                                                                              rows, cols);
  FATHOM_CUDA_CHECK_LAUNCH();
}

int64_t rmsnorm_dw_chunks(int64_t rows) { return ceil_div(rows, kDwChunkRows); }

void launch_rmsnorm_backward(ConstFloatPtr dy, ConstFloatPtr x, const float* w, const float* rstd,
                             FloatPtr dx, float* dw, float* dw_scratch, int64_t rows, int64_t cols,
                             cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  rmsnorm_backward_dx_kernel<<<grid_for(rows, 1), row_threads(cols), 0, stream>>>(dy, x, w, rstd,
                                                                                  dx, rows, cols);
  FATHOM_CUDA_CHECK_LAUNCH();
  const int64_t chunks = rmsnorm_dw_chunks(rows);
  FATHOM_CHECK(chunks <= 65535) << "rmsnorm_backward: " << rows << " rows exceed the CUDA kernel's "
                                << 65535 * kDwChunkRows << "-row limit";
  const dim3 grid(static_cast<unsigned>(ceil_div(cols, kThreads)), static_cast<unsigned>(chunks));
  rmsnorm_dw_partial_kernel<<<grid, kThreads, 0, stream>>>(dy, x, rstd, dw_scratch, rows, cols);
  FATHOM_CUDA_CHECK_LAUNCH();
  rmsnorm_dw_sum_kernel<<<static_cast<unsigned>(ceil_div(cols, kThreads)), kThreads, 0, stream>>>(
      dw_scratch, chunks, dw, cols);
  FATHOM_CUDA_CHECK_LAUNCH();
}

}  // namespace fathom::cuda
