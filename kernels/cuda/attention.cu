// Scaled-dot-product attention (causal or not, GQA, Dqk != Dv) with straightforward kernels:
// one warp per query row (forward, dq) or key row (dk, dv), 8 rows per block sharing tiles of 32
// keys (or queries) staged in shared memory as f32. Lane l owns key (query) l of a tile for the
// dot products and columns l, l + 32, ... of the accumulators. Softmax in f32 with an online max.
// The backward recomputes probabilities from the saved lse and runs two kernels (query-major for
// dq, key-major for dk and dv summing the query heads of each kv head), so it needs no atomics
// and is deterministic.
#include "kernels/cuda/common.cuh"

namespace fathom::cuda {
namespace {

constexpr int kRows = 8;   // rows (warps) per block
constexpr int kTile = 32;  // keys or queries per shared-memory tile: one per lane
constexpr int kSlots = static_cast<int>(kAttentionMaxHeadDim / 32);  // accumulator columns per lane

// Odd row stride: lane l reading row l at the same column hits bank (l * stride + c) % 32, all
// distinct when the stride is odd.
__host__ __device__ inline int64_t odd_stride(int64_t d) { return d | 1; }

__device__ __forceinline__ int64_t qkv_offset(int64_t b, int64_t s, int64_t heads, int64_t row,
                                              int64_t head, int64_t dim) {
  return ((b * s + row) * heads + head) * dim;
}

// Rows [row0, row0 + kTile) of one head of a (B, S, heads, dim) tensor into tile (kTile x stride),
// zero past the sequence end. All threads of the block take part.
__device__ void load_tile(ConstFloatPtr src, int64_t b, int64_t seq, int64_t heads, int64_t head,
                          int64_t dim, int64_t row0, float* tile, int64_t stride) {
  for (int64_t idx = threadIdx.x; idx < kTile * dim; idx += blockDim.x) {
    const int64_t r = idx / dim;
    const int64_t c = idx % dim;
    const int64_t row = row0 + r;
    tile[r * stride + c] =
        row < seq ? load(src, qkv_offset(b, seq, heads, row, head, dim) + c) : 0.0f;
  }
}

// One row of a (B, S, heads, dim) tensor into a per-warp buffer (lanes of one warp).
__device__ void load_row(ConstFloatPtr src, int64_t offset, int64_t dim, float* dst) {
  for (int64_t c = threadIdx.x & 31; c < dim; c += 32) dst[c] = load(src, offset + c);
}

__device__ __forceinline__ float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
  for (int64_t c = 0; c < n; ++c) acc += a[c] * b[c];
  return acc;
}

__global__ void attention_forward_kernel(ConstFloatPtr q, ConstFloatPtr k, ConstFloatPtr v,
                                         FloatPtr out, float* lse, AttentionDims d) {
  extern __shared__ float smem[];
  const int64_t sk = odd_stride(d.dqk);
  float* ks = smem;
  float* vs = ks + kTile * sk;
  float* qs = vs + kTile * d.dv;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t b = blockIdx.z;
  const int64_t h = blockIdx.y;
  const int64_t hk = h / (d.heads / d.kv_heads);
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int64_t i = i0 + warp;
  const bool active = i < d.seq;  // uniform per warp
  float* qrow = qs + warp * d.dqk;
  if (active) load_row(q, qkv_offset(b, d.seq, d.heads, i, h, d.dqk), d.dqk, qrow);
  __syncwarp();

  float m = -INFINITY;
  float l = 0.0f;
  float acc[kSlots];
#pragma unroll
  for (int s = 0; s < kSlots; ++s) acc[s] = 0.0f;

  const int64_t last_row = min(d.seq, i0 + kRows) - 1;
  const int64_t kv_end = d.causal ? last_row + 1 : d.seq;
  for (int64_t j0 = 0; j0 < kv_end; j0 += kTile) {
    __syncthreads();  // the previous tile is consumed
    load_tile(k, b, d.seq, d.kv_heads, hk, d.dqk, j0, ks, sk);
    load_tile(v, b, d.seq, d.kv_heads, hk, d.dv, j0, vs, d.dv);
    __syncthreads();
    if (!active) continue;
    const int64_t j = j0 + lane;
    const bool visible = j < d.seq && (!d.causal || j <= i);
    const float score = visible ? dot(qrow, ks + lane * sk, d.dqk) * d.scale : -INFINITY;
    const float new_m = fmaxf(m, warp_reduce(score, MaxOp()));
    if (new_m == -INFINITY) continue;  // nothing visible yet (uniform per warp)
    const float p = visible ? expf(score - new_m) : 0.0f;
    const float corr = expf(m - new_m);  // 0 on the first visible tile
    l = l * corr + warp_reduce(p, SumOp());
    const int tile_keys = static_cast<int>(min(static_cast<int64_t>(kTile), d.seq - j0));
#pragma unroll
    for (int s = 0; s < kSlots; ++s) acc[s] *= corr;
    for (int jj = 0; jj < tile_keys; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
      for (int s = 0; s < kSlots; ++s) {
        const int64_t c = lane + 32 * s;
        if (c < d.dv) acc[s] += pj * vs[jj * d.dv + c];
      }
    }
    m = new_m;
  }
  if (active) {
    const float inv = 1.0f / l;
    const int64_t o = qkv_offset(b, d.seq, d.heads, i, h, d.dv);
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int64_t c = lane + 32 * s;
      if (c < d.dv) store(out, o + c, acc[s] * inv);
    }
    if (lane == 0) lse[(b * d.heads + h) * d.seq + i] = m + logf(l);
  }
}

// delta[b, h, i] = dot(dout[b, i, h], out[b, i, h]): one warp per row.
__global__ void attention_delta_kernel(ConstFloatPtr out, ConstFloatPtr dout, float* delta,
                                       AttentionDims d) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = blockDim.x / 32;
  const int64_t rows = d.batch * d.heads * d.seq;
  for (int64_t r = blockIdx.x * warps + threadIdx.x / 32; r < rows; r += gridDim.x * warps) {
    const int64_t i = r % d.seq;
    const int64_t h = (r / d.seq) % d.heads;
    const int64_t b = r / (d.seq * d.heads);
    const int64_t o = qkv_offset(b, d.seq, d.heads, i, h, d.dv);
    float acc = 0.0f;
    for (int64_t c = lane; c < d.dv; c += 32) acc += load(dout, o + c) * load(out, o + c);
    acc = warp_reduce(acc, SumOp());
    if (lane == 0) delta[r] = acc;
  }
}

// dq[i] = scale * sum_j p_ij (dp_ij - delta_i) k_j: one warp per query row, key tiles shared.
__global__ void attention_dq_kernel(ConstFloatPtr q, ConstFloatPtr k, ConstFloatPtr v,
                                    ConstFloatPtr dout, const float* lse, const float* delta,
                                    FloatPtr dq, AttentionDims d) {
  extern __shared__ float smem[];
  const int64_t sk = odd_stride(d.dqk);
  const int64_t sv = odd_stride(d.dv);
  float* ks = smem;
  float* vs = ks + kTile * sk;
  float* qs = vs + kTile * sv;
  float* dos = qs + kRows * d.dqk;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t b = blockIdx.z;
  const int64_t h = blockIdx.y;
  const int64_t hk = h / (d.heads / d.kv_heads);
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int64_t i = i0 + warp;
  const bool active = i < d.seq;
  float* qrow = qs + warp * d.dqk;
  float* dorow = dos + warp * d.dv;
  float row_lse = 0.0f;
  float row_delta = 0.0f;
  if (active) {
    load_row(q, qkv_offset(b, d.seq, d.heads, i, h, d.dqk), d.dqk, qrow);
    load_row(dout, qkv_offset(b, d.seq, d.heads, i, h, d.dv), d.dv, dorow);
    row_lse = lse[(b * d.heads + h) * d.seq + i];
    row_delta = delta[(b * d.heads + h) * d.seq + i];
  }
  __syncwarp();

  float acc[kSlots];
#pragma unroll
  for (int s = 0; s < kSlots; ++s) acc[s] = 0.0f;
  const int64_t last_row = min(d.seq, i0 + kRows) - 1;
  const int64_t kv_end = d.causal ? last_row + 1 : d.seq;
  for (int64_t j0 = 0; j0 < kv_end; j0 += kTile) {
    __syncthreads();
    load_tile(k, b, d.seq, d.kv_heads, hk, d.dqk, j0, ks, sk);
    load_tile(v, b, d.seq, d.kv_heads, hk, d.dv, j0, vs, sv);
    __syncthreads();
    if (!active) continue;
    const int64_t j = j0 + lane;
    const bool visible = j < d.seq && (!d.causal || j <= i);
    float ds = 0.0f;
    if (visible) {
      const float p = expf(dot(qrow, ks + lane * sk, d.dqk) * d.scale - row_lse);
      ds = p * (dot(dorow, vs + lane * sv, d.dv) - row_delta);
    }
    const int tile_keys = static_cast<int>(min(static_cast<int64_t>(kTile), d.seq - j0));
    for (int jj = 0; jj < tile_keys; ++jj) {
      const float dsj = __shfl_sync(0xffffffffu, ds, jj);
#pragma unroll
      for (int s = 0; s < kSlots; ++s) {
        const int64_t c = lane + 32 * s;
        if (c < d.dqk) acc[s] += dsj * ks[jj * sk + c];
      }
    }
  }
  if (active) {
    const int64_t o = qkv_offset(b, d.seq, d.heads, i, h, d.dqk);
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int64_t c = lane + 32 * s;
      if (c < d.dqk) store(dq, o + c, acc[s] * d.scale);
    }
  }
}

// dk[j] = scale * sum_{h in group, i} ds_ij q_i;  dv[j] = sum_{h in group, i} p_ij dout_i:
// one warp per key row, query tiles shared.
__global__ void attention_dkdv_kernel(ConstFloatPtr q, ConstFloatPtr k, ConstFloatPtr v,
                                      ConstFloatPtr dout, const float* lse, const float* delta,
                                      FloatPtr dk, FloatPtr dv, AttentionDims d) {
  extern __shared__ float smem[];
  const int64_t sq = odd_stride(d.dqk);
  const int64_t sv = odd_stride(d.dv);
  float* qt = smem;
  float* dot_tile = qt + kTile * sq;
  float* lse_t = dot_tile + kTile * sv;
  float* delta_t = lse_t + kTile;
  float* krows = delta_t + kTile;
  float* vrows = krows + kRows * d.dqk;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t b = blockIdx.z;
  const int64_t hk = blockIdx.y;
  const int64_t group = d.heads / d.kv_heads;
  const int64_t j_first = static_cast<int64_t>(blockIdx.x) * kRows;
  const int64_t j = j_first + warp;
  const bool active = j < d.seq;
  float* krow = krows + warp * d.dqk;
  float* vrow = vrows + warp * d.dv;
  if (active) {
    load_row(k, qkv_offset(b, d.seq, d.kv_heads, j, hk, d.dqk), d.dqk, krow);
    load_row(v, qkv_offset(b, d.seq, d.kv_heads, j, hk, d.dv), d.dv, vrow);
  }
  __syncwarp();

  float acc_k[kSlots];
  float acc_v[kSlots];
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    acc_k[s] = 0.0f;
    acc_v[s] = 0.0f;
  }
  const int64_t q_begin = d.causal ? j_first : 0;  // no query before the block's first key sees it
  for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
    const float* lse_h = lse + (b * d.heads + h) * d.seq;
    const float* delta_h = delta + (b * d.heads + h) * d.seq;
    for (int64_t i0 = q_begin; i0 < d.seq; i0 += kTile) {
      __syncthreads();
      load_tile(q, b, d.seq, d.heads, h, d.dqk, i0, qt, sq);
      load_tile(dout, b, d.seq, d.heads, h, d.dv, i0, dot_tile, sv);
      if (threadIdx.x < kTile) {
        const int64_t row = i0 + threadIdx.x;
        lse_t[threadIdx.x] = row < d.seq ? lse_h[row] : 0.0f;
        delta_t[threadIdx.x] = row < d.seq ? delta_h[row] : 0.0f;
      }
      __syncthreads();
      if (!active) continue;
      const int64_t i = i0 + lane;
      const bool visible = i < d.seq && (!d.causal || i >= j);
      float p = 0.0f;
      float ds = 0.0f;
      if (visible) {
        p = expf(dot(qt + lane * sq, krow, d.dqk) * d.scale - lse_t[lane]);
        ds = p * (dot(dot_tile + lane * sv, vrow, d.dv) - delta_t[lane]);
      }
      const int tile_rows = static_cast<int>(min(static_cast<int64_t>(kTile), d.seq - i0));
      for (int ii = 0; ii < tile_rows; ++ii) {
        const float pi = __shfl_sync(0xffffffffu, p, ii);
        const float dsi = __shfl_sync(0xffffffffu, ds, ii);
#pragma unroll
        for (int s = 0; s < kSlots; ++s) {
          const int64_t c = lane + 32 * s;
          if (c < d.dv) acc_v[s] += pi * dot_tile[ii * sv + c];
          if (c < d.dqk) acc_k[s] += dsi * qt[ii * sq + c];
        }
      }
    }
  }
  if (active) {
    const int64_t ok = qkv_offset(b, d.seq, d.kv_heads, j, hk, d.dqk);
    const int64_t ov = qkv_offset(b, d.seq, d.kv_heads, j, hk, d.dv);
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int64_t c = lane + 32 * s;
      if (c < d.dqk) store(dk, ok + c, acc_k[s] * d.scale);
      if (c < d.dv) store(dv, ov + c, acc_v[s]);
    }
  }
}

// Launches `kernel` with `floats` of dynamic shared memory, raising the kernel's limit first
// when that exceeds the default 48 KiB.
template <typename Kernel, typename... Args>
void launch_with_smem(Kernel kernel, dim3 grid, int64_t floats, cudaStream_t stream, Args... args) {
  const size_t bytes = static_cast<size_t>(floats) * sizeof(float);
  FATHOM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes)));
  kernel<<<grid, kRows * 32, bytes, stream>>>(args...);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void check_dims(const AttentionDims& d) {
  FATHOM_CHECK(d.dqk >= 1 && d.dqk <= kAttentionMaxHeadDim && d.dv >= 0 &&
               d.dv <= kAttentionMaxHeadDim)
      << "attention (CUDA): head dims Dqk " << d.dqk << ", Dv " << d.dv
      << " are not supported; the kernels take 1 <= Dqk <= " << kAttentionMaxHeadDim
      << " and Dv <= " << kAttentionMaxHeadDim;
  FATHOM_CHECK(d.heads <= 65535 && d.kv_heads <= 65535 && d.batch <= 65535 &&
               ceil_div(d.seq, kRows) <= INT32_MAX)
      << "attention (CUDA): batch " << d.batch << ", heads " << d.heads << ", seq " << d.seq
      << " exceed the grid limits";
}

}  // namespace

void launch_attention_forward(ConstFloatPtr q, ConstFloatPtr k, ConstFloatPtr v, FloatPtr out,
                              float* lse, const AttentionDims& d, cudaStream_t stream) {
  if (d.batch == 0 || d.seq == 0 || d.heads == 0) return;
  check_dims(d);
  const dim3 grid(static_cast<unsigned>(ceil_div(d.seq, kRows)), static_cast<unsigned>(d.heads),
                  static_cast<unsigned>(d.batch));
  const int64_t floats = kTile * odd_stride(d.dqk) + kTile * d.dv + kRows * d.dqk;
  launch_with_smem(attention_forward_kernel, grid, floats, stream, q, k, v, out, lse, d);
}

void launch_attention_backward(ConstFloatPtr q, ConstFloatPtr k, ConstFloatPtr v, ConstFloatPtr out,
                               ConstFloatPtr dout, const float* lse, FloatPtr dq, FloatPtr dk,
                               FloatPtr dv, float* delta, const AttentionDims& d,
                               cudaStream_t stream) {
  if (d.batch == 0 || d.seq == 0 || d.heads == 0) return;
  check_dims(d);
  const int64_t rows = d.batch * d.heads * d.seq;
  attention_delta_kernel<<<grid_for(rows, kThreads / 32), kThreads, 0, stream>>>(out, dout, delta,
                                                                                 d);
  FATHOM_CUDA_CHECK_LAUNCH();
  const int64_t sk = odd_stride(d.dqk);
  const int64_t sv = odd_stride(d.dv);
  const dim3 q_grid(static_cast<unsigned>(ceil_div(d.seq, kRows)), static_cast<unsigned>(d.heads),
                    static_cast<unsigned>(d.batch));
  launch_with_smem(attention_dq_kernel, q_grid,
                   kTile * sk + kTile * sv + kRows * d.dqk + kRows * d.dv, stream, q, k, v, dout,
                   lse, static_cast<const float*>(delta), dq, d);
  const dim3 kv_grid(static_cast<unsigned>(ceil_div(d.seq, kRows)),
                     static_cast<unsigned>(d.kv_heads), static_cast<unsigned>(d.batch));
  launch_with_smem(attention_dkdv_kernel, kv_grid,
                   kTile * sk + kTile * sv + 2 * kTile + kRows * d.dqk + kRows * d.dv, stream, q, k,
                   v, dout, lse, static_cast<const float*>(delta), dk, dv, d);
}

}  // namespace fathom::cuda
