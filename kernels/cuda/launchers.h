// Raw-pointer launchers of the CUDA kernels in kernels/cuda/*.cu (CONVENTIONS.md 3).
//
// Every launcher takes device pointers, sizes and the stream to run on; it enqueues work and
// returns without synchronising, and throws fathom::Error for a bad launch. Sizes are element
// counts. The caller (kernels/cuda/ops*.cc) has validated shapes and dtypes, set the device and
// allocated any scratch named here. No framework type (Tensor, DType) appears in this header, so
// the kernel files stay independent of the host-side code.
//
// Activation-like buffers come as FloatPtr / ConstFloatPtr: f32 or bf16 storage chosen at run
// time (one branch per element load, uniform across the grid); values are computed in f32 and
// rounded to nearest even on store.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace fathom::cuda {

struct FloatPtr {
  void* ptr;
  bool bf16;  // false: f32
};
struct ConstFloatPtr {
  const void* ptr;
  bool bf16;
};

// Element types of cast().
enum class ElemType : uint8_t { kF32, kBF16, kF8E4M3, kF8E5M2, kI32, kI64 };

// ---- elementwise.cu ----
// dst[i] = convert(src[i]): float types to float types (fp8 saturating to the finite range), or
// i32 <-> i64. Mixed float/int pairs are not supported (the public op rejects them).
void launch_cast(const void* src, ElemType src_type, void* dst, ElemType dst_type, int64_t n,
                 cudaStream_t stream);
// Every element (elem_bytes of 1, 2, 4 or 8) = the low elem_bytes bytes of `pattern`.
void launch_fill(void* data, int elem_bytes, uint64_t pattern, int64_t n, cudaStream_t stream);
void launch_axpy(float alpha, ConstFloatPtr x, FloatPtr y, int64_t n, cudaStream_t stream);
void launch_scale(FloatPtr t, float alpha, int64_t n, cudaStream_t stream);
void launch_swiglu_forward(ConstFloatPtr gate, ConstFloatPtr up, FloatPtr y, int64_t n,
                           cudaStream_t stream);
void launch_swiglu_backward(ConstFloatPtr dy, ConstFloatPtr gate, ConstFloatPtr up, FloatPtr dgate,
                            FloatPtr dup, int64_t n, cudaStream_t stream);
void launch_sigmoid_forward(ConstFloatPtr x, FloatPtr y, int64_t n, cudaStream_t stream);
void launch_sigmoid_backward(ConstFloatPtr dy, ConstFloatPtr y, FloatPtr dx, int64_t n,
                             cudaStream_t stream);
// Row-wise over (rows, cols), cols >= 1.
void launch_softmax_forward(ConstFloatPtr x, FloatPtr y, int64_t rows, int64_t cols,
                            cudaStream_t stream);
void launch_softmax_backward(ConstFloatPtr dy, ConstFloatPtr y, FloatPtr dx, int64_t rows,
                             int64_t cols, cudaStream_t stream);

// ---- norm.cu ----
void launch_rmsnorm_forward(ConstFloatPtr x, const float* w, float eps, FloatPtr y, float* rstd,
                            int64_t rows, int64_t cols, cudaStream_t stream);
// Scratch for launch_rmsnorm_backward: rmsnorm_dw_chunks(rows) * cols floats.
int64_t rmsnorm_dw_chunks(int64_t rows);
// dx (=); dw (+=), reduced over rows in a fixed order (deterministic).
void launch_rmsnorm_backward(ConstFloatPtr dy, ConstFloatPtr x, const float* w, const float* rstd,
                             FloatPtr dx, float* dw, float* dw_scratch, int64_t rows, int64_t cols,
                             cudaStream_t stream);

// ---- rope.cu ----
// x: (tokens, heads, head_dim), rotating the last rot_dim dims of each head with the tables
// cos/sin: (max_position, rot_dim / 2). The public op does not check positions on CUDA (that would
// synchronise every call), so the kernel guards the lookup: a position outside
// [0, max_position) turns its token's rotated dims into NaN, which the loss then exposes.
void launch_rope(FloatPtr x, const int32_t* positions, const float* cos, const float* sin,
                 int64_t max_position, int64_t tokens, int64_t heads, int64_t head_dim,
                 int64_t rot_dim, bool half_style, bool inverse, cudaStream_t stream);

// ---- index.cu ----
// out[i] = scale[i] * x[index[i]] (scale may be null). x: (rows, d); out: (n, d). An index
// outside [0, rows) gives a NaN row.
void launch_gather_rows(ConstFloatPtr x, const int32_t* index, const float* scale, FloatPtr out,
                        int64_t n, int64_t rows, int64_t d, cudaStream_t stream);
// Scratch for launch_scatter_add_rows, in bytes (256-byte aligned pieces inside).
size_t scatter_add_scratch_bytes(int64_t n);
// out[index[i]] += scale[i] * x[i] (scale may be null), contributions to one row added in
// increasing i: a stable sort of the indices groups each row's contributions. Indices outside
// [0, rows) are skipped.
void launch_scatter_add_rows(ConstFloatPtr x, const int32_t* index, const float* scale,
                             FloatPtr out, int64_t n, int64_t rows, int64_t d, void* scratch,
                             size_t scratch_bytes, cudaStream_t stream);
// out[i] = dot(a[index[i]], b[i]) in f32; NaN for an index outside [0, rows).
void launch_gathered_row_dot(ConstFloatPtr a, const int32_t* index, ConstFloatPtr b, float* out,
                             int64_t n, int64_t rows, int64_t d, cudaStream_t stream);
// y (batch, n, m) = x (batch, m, n) with the last two dims swapped; elements of elem_bytes 1, 2, 4.
void launch_transpose(const void* x, void* y, int elem_bytes, int64_t batch, int64_t m, int64_t n,
                      cudaStream_t stream);
// rows x width_bytes block from src (row pitch src_pitch bytes) to dst (dst_pitch), device to device.
void launch_copy_2d(const void* src, size_t src_pitch, void* dst, size_t dst_pitch,
                    size_t width_bytes, int64_t rows, cudaStream_t stream);
// Largest k of each row of x (rows, cols), descending, ties to the lower index.
void launch_topk(const float* x, int64_t rows, int64_t cols, int64_t k, float* values,
                 int32_t* indices, cudaStream_t stream);

// ---- reduce.cu ----
enum class ReduceOp : uint8_t { kSum, kMean, kMax, kSumSquares };
void launch_reduce_rows(ConstFloatPtr x, ReduceOp op, float* out, int64_t rows, int64_t cols,
                        cudaStream_t stream);
// Number of doubles of scratch launch_reduce_all needs.
int64_t reduce_all_scratch(int64_t n);
// *result (device) = the reduction of all n elements, accumulated in double in a fixed order.
void launch_reduce_all(ConstFloatPtr x, ReduceOp op, int64_t n, double* scratch, double* result,
                       cudaStream_t stream);

// ---- optim.cu ----
struct AdamWStep {
  float lr, beta1, beta2, eps, weight_decay;
  float inv_bias_correction1;  // 1 / (1 - beta1^t)
  float inv_bias_correction2;  // 1 / (1 - beta2^t)
};
void launch_adamw(float* param, const float* grad, FloatPtr m, FloatPtr v, int64_t n,
                  const AdamWStep& step, cudaStream_t stream);

// ---- fp8.cu ----
// E4M3 quantization, bit-identical to kernels/cpu/fp8.cc. q: one byte per element.
void launch_quantize_1x128(ConstFloatPtr x, int64_t rows, int64_t k, bool pow2, uint8_t* q,
                           float* scales, cudaStream_t stream);
void launch_quantize_128x128(ConstFloatPtr x, int64_t batch, int64_t m, int64_t k, bool pow2,
                             uint8_t* q, float* scales, cudaStream_t stream);
// out = q * scale over the (rows, k) view of the data; block_rows is 1 for 1x128 scales, else the
// M of the (batch, M, K) data with 128x128 scales.
void launch_dequantize(const uint8_t* q, const float* scales, int64_t rows, int64_t k,
                       int64_t block_rows, bool block128x128, FloatPtr out, cudaStream_t stream);
// dst (cols, rows) = src (rows, cols)^T.
void launch_transpose_f32(const float* src, int64_t rows, int64_t cols, float* dst,
                          cudaStream_t stream);
// dst[r * ld + c] = src[r * cols + c] for c < cols, 0 for cols <= c < ld.
void launch_pad_rows_f32(const float* src, int64_t rows, int64_t cols, int64_t ld, float* dst,
                         cudaStream_t stream);

// ---- loss.cu ----
// Online log-sum-exp over one vocabulary chunk: logits (tokens, cols) f32 for vocabulary rows
// [v0, v0 + cols). run_max / run_sum / target_logit: (tokens) state, initialised to -inf / 0 / 0.
void launch_ce_chunk_forward(const float* logits, int64_t tokens, int64_t cols, int64_t v0,
                             const int32_t* targets, int32_t ignore_index, float* run_max,
                             float* run_sum, float* target_logit, cudaStream_t stream);
// lse = run_max + log(run_sum); loss = lse - target_logit (0 for ignored tokens).
void launch_ce_finish(const float* run_max, const float* run_sum, const float* target_logit,
                      const int32_t* targets, int32_t ignore_index, int64_t tokens, float* loss,
                      float* lse, cudaStream_t stream);
// grad = dloss * (softmax - onehot) of a chunk's logits (0 rows for ignored tokens); grad may
// alias logits when it is f32.
void launch_ce_chunk_backward(const float* logits, int64_t tokens, int64_t cols, int64_t v0,
                              const int32_t* targets, int32_t ignore_index, const float* lse,
                              const float* dloss, FloatPtr grad, cudaStream_t stream);

// ---- attention.cu ----
struct AttentionDims {
  int64_t batch, seq, heads, kv_heads, dqk, dv;
  float scale;
  bool causal;
};
// Largest Dqk / Dv the kernels support (register and shared-memory budget).
constexpr int64_t kAttentionMaxHeadDim = 256;
// q (B, S, H, Dqk), k (B, S, Hkv, Dqk), v (B, S, Hkv, Dv) -> out (B, S, H, Dv), lse (B, H, S).
void launch_attention_forward(ConstFloatPtr q, ConstFloatPtr k, ConstFloatPtr v, FloatPtr out,
                              float* lse, const AttentionDims& dims, cudaStream_t stream);
// dq, dk, dv (=). delta: (B, H, S) f32 scratch. Deterministic: no atomics.
void launch_attention_backward(ConstFloatPtr q, ConstFloatPtr k, ConstFloatPtr v, ConstFloatPtr out,
                               ConstFloatPtr dout, const float* lse, FloatPtr dq, FloatPtr dk,
                               FloatPtr dv, float* delta, const AttentionDims& dims,
                               cudaStream_t stream);

}  // namespace fathom::cuda
