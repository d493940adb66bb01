// Row reductions (f32) and whole-tensor reductions (double, fixed order: per-block partials, then
// one block over the partials, so the result does not depend on scheduling).
#include "kernels/cuda/common.cuh"

namespace fathom::cuda {
namespace {

constexpr int64_t kReduceAllBlocks = 1024;

__global__ void reduce_rows_kernel(ConstFloatPtr x, ReduceOp op, float* out, int64_t rows,
                                   int64_t cols) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t base = r * cols;
    float acc;
    if (op == ReduceOp::kMax) {
      acc = -INFINITY;
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) acc = fmaxf(acc, load(x, base + c));
      acc = block_reduce(acc, MaxOp(), -INFINITY);
    } else {
      acc = 0.0f;
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = load(x, base + c);
        acc += op == ReduceOp::kSumSquares ? v * v : v;
      }
      acc = block_reduce(acc, SumOp(), 0.0f);
      if (op == ReduceOp::kMean) acc /= static_cast<float>(cols);
    }
    if (threadIdx.x == 0) out[r] = acc;
  }
}

// partials[block] = the reduction of the block's grid-stride share of x.
__global__ void reduce_all_partial_kernel(ConstFloatPtr x, ReduceOp op, int64_t n,
                                          double* partials) {
  const bool is_max = op == ReduceOp::kMax;
  double acc = is_max ? -INFINITY : 0.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double v = load(x, i);
    if (is_max) {
      acc = fmax(acc, v);
    } else {
      acc += op == ReduceOp::kSumSquares ? v * v : v;
    }
  }
  acc = is_max ? block_reduce(acc, MaxOp(), static_cast<double>(-INFINITY))
               : block_reduce(acc, SumOp(), 0.0);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

__global__ void reduce_all_final_kernel(const double* partials, int64_t count, ReduceOp op,
                                        int64_t n, double* result) {
  const bool is_max = op == ReduceOp::kMax;
  double acc = is_max ? -INFINITY : 0.0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    acc = is_max ? fmax(acc, partials[i]) : acc + partials[i];
  }
  acc = is_max ? block_reduce(acc, MaxOp(), static_cast<double>(-INFINITY))
               : block_reduce(acc, SumOp(), 0.0);
  if (threadIdx.x == 0) {
    if (op == ReduceOp::kMean) acc = n > 0 ? acc / static_cast<double>(n) : 0.0;
    *result = acc;
  }
}

}  // namespace

void launch_reduce_rows(ConstFloatPtr x, ReduceOp op, float* out, int64_t rows, int64_t cols,
                        cudaStream_t stream) {
  if (rows == 0) return;
  const int threads =
      static_cast<int>(std::min<int64_t>(kThreads, std::max<int64_t>(32, ceil_div(cols, 32) * 32)));
  reduce_rows_kernel<<<grid_for(rows, 1), threads, 0, stream>>>(x, op, out, rows, cols);
  FATHOM_CUDA_CHECK_LAUNCH();
}

int64_t reduce_all_scratch(int64_t n) {
  return std::min<int64_t>(kReduceAllBlocks, std::max<int64_t>(1, ceil_div(n, kThreads)));
}

void launch_reduce_all(ConstFloatPtr x, ReduceOp op, int64_t n, double* scratch, double* result,
                       cudaStream_t stream) {
  const int64_t blocks = reduce_all_scratch(n);
  reduce_all_partial_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(x, op, n,
                                                                                    scratch);
  FATHOM_CUDA_CHECK_LAUNCH();
  reduce_all_final_kernel<<<1, kThreads, 0, stream>>>(scratch, blocks, op, n, result);
  FATHOM_CUDA_CHECK_LAUNCH();
}

}  // namespace fathom::cuda
