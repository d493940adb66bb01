// Indexing ops: embedding lookup, top-k, and the row gather / scatter-add that permute tokens to
// experts and back (MoE permute / unpermute).
//
// Index tensors are i32. Out-of-range indices throw fathom::Error naming the op, the index and
// the bound (on CUDA the check runs on the host copy of the indices before the launch).
#pragma once

#include <cstdint>

#include "kernels/tensor.h"

namespace fathom {

// out[t] = table[ids[t]].  ids: (T) i32 in [0, V);  table: (V, D) f32/bf16;  out: (T, D).
void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out);
// dtable[ids[t]] += dout[t].  dtable: (V, D) f32 (+=);  deterministic for repeated ids.
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable);

// Largest k per row: x (T, E) f32 -> values (T, k) f32, indices (T, k) i32, in descending order;
// ties go to the lower index. 1 <= k <= E.
void topk(const Tensor& x, int64_t k, Tensor& values, Tensor& indices);

// out[i] = scale[i] * x[index[i]]  (scale optional: pass an undefined Tensor for 1).
//   x: (R, D) f32/bf16;  index: (N) i32 in [0, R);  scale: (N) f32;  out: (N, D).
void gather_rows(const Tensor& x, const Tensor& index, const Tensor& scale, Tensor& out);
// out[index[i]] += scale[i] * x[i]  (scale optional).  x: (N, D);  out: (R, D) (+=).
// Deterministic: contributions to one row are added in increasing i.
void scatter_add_rows(const Tensor& x, const Tensor& index, const Tensor& scale, Tensor& out);
// out[i] = dot(a[index[i]], b[i]).  a: (R, D);  b: (N, D);  out: (N) f32.
// (The gate-weight gradient of unpermute.)
void gathered_row_dot(const Tensor& a, const Tensor& index, const Tensor& b, Tensor& out);

// y = x with its last two dims swapped: x (batch..., M, N) -> y (batch..., N, M), >= 2-D, same
// dtype (any dtype of 1, 2 or 4 bytes: f32, bf16, fp8, i32, u8). The FP8 backward GEMMs need
// their operands with the reduced dim last (weights transposed, activations along tokens).
void transpose(const Tensor& x, Tensor& y);

// dst[r, dst_col + j] = src[r, src_col + j] for every row r and j < cols: a strided block copy
// between 2-D tensors of the same dtype and row count (splitting and concatenating along columns:
// per-head [nope | rope] parts, [kv_lora | rope] of wkv_a, MTP's [embedding ; hidden]).
void copy_columns(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col, int64_t cols);

}  // namespace fathom
