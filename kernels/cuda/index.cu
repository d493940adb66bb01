// Row gather / scatter-add, gathered row dot products and top-k.
//
// scatter_add_rows is deterministic: a stable radix sort (CUB) of the target rows groups each
// row's contributions in increasing source order, and one block adds them in that order.
#include <climits>
#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/common.cuh"

namespace fathom::cuda {
namespace {

__global__ void gather_rows_kernel(ConstFloatPtr x, const int32_t* index, const float* scale,
                                   FloatPtr out, int64_t n, int64_t rows, int64_t d) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t r = index[i];
    const bool valid = r >= 0 && r < rows;
    const float s = scale != nullptr ? scale[i] : 1.0f;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      if (!valid) {
        store(out, i * d + c, NAN);
      } else if (scale != nullptr) {
        store(out, i * d + c, s * load(x, r * d + c));
      } else {
        store(out, i * d + c, load(x, r * d + c));
      }
    }
  }
}

__global__ void iota_kernel(int32_t* v, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    v[i] = static_cast<int32_t>(i);
  }
}

// One block per run of equal target rows in the sorted order (blocks at other positions skip):
// out[r] += the run's contributions in increasing source index (the sort is stable).
__global__ void scatter_runs_kernel(ConstFloatPtr x, const int32_t* sorted_rows,
                                    const int32_t* sorted_src, const float* scale, FloatPtr out,
                                    int64_t n, int64_t rows, int64_t d) {
  for (int64_t p = blockIdx.x; p < n; p += gridDim.x) {
    const int32_t r = sorted_rows[p];
    if (p > 0 && sorted_rows[p - 1] == r) continue;  // not the start of a run
    if (r < 0 || r >= rows) continue;
    int64_t end = p + 1;
    while (end < n && sorted_rows[end] == r) ++end;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      float acc = load(out, r * d + c);
      for (int64_t q = p; q < end; ++q) {
        const int64_t i = sorted_src[q];
        const float v = load(x, i * d + c);
        acc += scale != nullptr ? scale[i] * v : v;
      }
      store(out, r * d + c, acc);
    }
  }
}

// One warp per output element.
__global__ void gathered_row_dot_kernel(ConstFloatPtr a, const int32_t* index, ConstFloatPtr b,
                                        float* out, int64_t n, int64_t rows, int64_t d) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = blockDim.x / 32;
  for (int64_t i = blockIdx.x * warps + threadIdx.x / 32; i < n; i += gridDim.x * warps) {
    const int64_t r = index[i];
    if (r < 0 || r >= rows) {
      if (lane == 0) out[i] = NAN;
      continue;
    }
    float acc = 0.0f;
    for (int64_t c = lane; c < d; c += 32) acc += load(a, r * d + c) * load(b, i * d + c);
    acc = warp_reduce(acc, SumOp());
    if (lane == 0) out[i] = acc;
  }
}

// Total order of top-k, as on the CPU: larger values first, NaN above every number, ties to the
// lower index.
__device__ __forceinline__ bool ranks_before(float v1, int64_t i1, float v2, int64_t i2) {
  const bool n1 = isnan(v1);
  const bool n2 = isnan(v2);
  if (n1 != n2) return n1;
  if (!n1 && v1 != v2) return v1 > v2;
  return i1 < i2;
}

struct Candidate {
  float v;
  int64_t i;  // -1: none
};

__device__ __forceinline__ Candidate better(Candidate a, Candidate b) {
  if (a.i < 0) return b;
  if (b.i < 0) return a;
  return ranks_before(a.v, a.i, b.v, b.i) ? a : b;
}

// One block per row; k selection passes, each taking the best element ranked after the previous
// pick. O(k * cols) per row, fine for router top-k (k <= 8 of a few hundred experts).
__global__ void topk_kernel(const float* x, int64_t rows, int64_t cols, int64_t k, float* values,
                            int32_t* indices) {
  __shared__ Candidate warp_best[32];
  __shared__ Candidate pick;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = static_cast<int>(blockDim.x >> 5);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* row = x + r * cols;
    Candidate prev{0.0f, -1};
    for (int64_t j = 0; j < k; ++j) {
      Candidate best{0.0f, -1};
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = row[c];
        if (prev.i >= 0 && !ranks_before(prev.v, prev.i, v, c)) continue;  // already picked
        best = better(best, Candidate{v, c});
      }
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) {
        Candidate other;
        other.v = __shfl_xor_sync(0xffffffffu, best.v, offset);
        other.i = __shfl_xor_sync(0xffffffffu, best.i, offset);
        best = better(best, other);
      }
      if (lane == 0) warp_best[warp] = best;
      __syncthreads();
      if (threadIdx.x == 0) {
        Candidate all = warp_best[0];
        for (int w = 1; w < warps; ++w) all = better(all, warp_best[w]);
        pick = all;
        values[r * k + j] = all.v;
        indices[r * k + j] = static_cast<int32_t>(all.i);
      }
      __syncthreads();
      prev = pick;
      __syncthreads();  // pick is rewritten in the next pass
    }
  }
}

// Scratch pieces start at 256-byte offsets (cudaMalloc alignment), as CUB's temporaries like.
size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

size_t cub_sort_bytes(int64_t n) {
  size_t bytes = 0;
  FATHOM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), static_cast<int>(n)));
  return bytes;
}


// 32 x 32 tiles through shared memory (padded against bank conflicts); blockIdx.z walks the batch.
template <typename T>
__global__ void transpose_kernel(const T* x, T* y, int64_t m, int64_t n) {
  constexpr int kTile = 32;
  __shared__ T tile[kTile][kTile + 1];
  const int64_t offset = static_cast<int64_t>(blockIdx.z) * m * n;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  for (int i = threadIdx.y; i < kTile; i += blockDim.y) {
    const int64_t r = r0 + i;
    const int64_t c = c0 + threadIdx.x;
    if (r < m && c < n) tile[i][threadIdx.x] = x[offset + r * n + c];
  }
  __syncthreads();
  for (int i = threadIdx.y; i < kTile; i += blockDim.y) {
    const int64_t c = c0 + i;  // row of y
    const int64_t r = r0 + threadIdx.x;
    if (r < m && c < n) y[offset + c * m + r] = tile[threadIdx.x][i];
  }
}

template <typename T>
void launch_transpose_typed(const void* x, void* y, int64_t batch, int64_t m, int64_t n,
                            cudaStream_t stream) {
  FATHOM_CHECK(batch <= 65535) << "transpose: batch " << batch << " exceeds the grid limit";
  const dim3 grid(static_cast<unsigned>(ceil_div(n, 32)), static_cast<unsigned>(ceil_div(m, 32)),
                  static_cast<unsigned>(batch));
  transpose_kernel<T><<<grid, dim3(32, 8), 0, stream>>>(static_cast<const T*>(x),
                                                        static_cast<T*>(y), m, n);
  FATHOM_CUDA_CHECK_LAUNCH();
}

}  // namespace

void launch_gather_rows(ConstFloatPtr x, const int32_t* index, const float* scale, FloatPtr out,
                        int64_t n, int64_t rows, int64_t d, cudaStream_t stream) {
  if (n == 0 || d == 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, ceil_div(d, 32) * 32));
  gather_rows_kernel<<<grid_for(n, 1), threads, 0, stream>>>(x, index, scale, out, n, rows, d);
  FATHOM_CUDA_CHECK_LAUNCH();
}

size_t scatter_add_scratch_bytes(int64_t n) {
  FATHOM_CHECK(n <= INT_MAX) << "scatter_add_rows: " << n << " rows exceed the sort's int range";
  return 3 * align256(static_cast<size_t>(n) * sizeof(int32_t)) + align256(cub_sort_bytes(n));
}

void launch_scatter_add_rows(ConstFloatPtr x, const int32_t* index, const float* scale,
                             FloatPtr out, int64_t n, int64_t rows, int64_t d, void* scratch,
                             size_t scratch_bytes, cudaStream_t stream) {
  if (n == 0 || d == 0) return;
  FATHOM_CHECK(scratch_bytes >= scatter_add_scratch_bytes(n))
      << "launch_scatter_add_rows: scratch of " << scratch_bytes << " bytes is too small";
  const size_t vec = align256(static_cast<size_t>(n) * sizeof(int32_t));
  char* base = static_cast<char*>(scratch);
  int32_t* src_order = reinterpret_cast<int32_t*>(base);
  int32_t* sorted_rows = reinterpret_cast<int32_t*>(base + vec);
  int32_t* sorted_src = reinterpret_cast<int32_t*>(base + 2 * vec);
  void* sort_temp = base + 3 * vec;
  size_t sort_bytes = scratch_bytes - 3 * vec;
  iota_kernel<<<grid_for(n), kThreads, 0, stream>>>(src_order, n);
  FATHOM_CUDA_CHECK_LAUNCH();
  FATHOM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_temp, sort_bytes, index, sorted_rows,
                                                    src_order, sorted_src, static_cast<int>(n), 0,
                                                    32, stream));
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, ceil_div(d, 32) * 32));
  scatter_runs_kernel<<<grid_for(n, 1), threads, 0, stream>>>(x, sorted_rows, sorted_src, scale,
                                                              out, n, rows, d);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void launch_gathered_row_dot(ConstFloatPtr a, const int32_t* index, ConstFloatPtr b, float* out,
                             int64_t n, int64_t rows, int64_t d, cudaStream_t stream) {
  if (n == 0) return;
  gathered_row_dot_kernel<<<grid_for(n, kThreads / 32), kThreads, 0, stream>>>(a, index, b, out, n,
                                                                               rows, d);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void launch_topk(const float* x, int64_t rows, int64_t cols, int64_t k, float* values,
                 int32_t* indices, cudaStream_t stream) {
  if (rows == 0 || k == 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, ceil_div(cols, 32) * 32));
  topk_kernel<<<grid_for(rows, 1), threads, 0, stream>>>(x, rows, cols, k, values, indices);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void launch_transpose(const void* x, void* y, int elem_bytes, int64_t batch, int64_t m, int64_t n,
                      cudaStream_t stream) {
  if (batch == 0 || m == 0 || n == 0) return;
  switch (elem_bytes) {
    case 1:
      launch_transpose_typed<uint8_t>(x, y, batch, m, n, stream);
      break;
    case 2:
      launch_transpose_typed<uint16_t>(x, y, batch, m, n, stream);
      break;
    default:
      launch_transpose_typed<uint32_t>(x, y, batch, m, n, stream);
      break;
  }
}

void launch_copy_2d(const void* src, size_t src_pitch, void* dst, size_t dst_pitch,
                    size_t width_bytes, int64_t rows, cudaStream_t stream) {
  if (rows == 0 || width_bytes == 0) return;
  FATHOM_CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width_bytes,
                                      static_cast<size_t>(rows), cudaMemcpyDeviceToDevice, stream));
}

}  // namespace fathom::cuda
