// Causal scaled-dot-product attention, forward and backward.
//
// The query/key head dim may differ from the value head dim (MLA: 192 / 128), and keys/values may
// have fewer heads than queries (grouped-query attention for the dense students: query head h
// reads key/value head h / (H / Hkv)). Softmax in f32; the forward saves the row log-sum-exp so
// the backward recomputes probabilities without storing them.
#pragma once

#include "kernels/tensor.h"

namespace fathom {

struct AttentionOptions {
  float scale = 0.0f;  // softmax scale; 0 means 1 / sqrt(Dqk)
  bool causal = true;
};

// q: (B, S, H, Dqk);  k: (B, S, Hkv, Dqk);  v: (B, S, Hkv, Dv);  H % Hkv == 0.  f32/bf16, one dtype.
// out: (B, S, H, Dv) same dtype;  lse: (B, H, S) f32.
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                       const AttentionOptions& options, Tensor& out, Tensor& lse);

// dq, dk, dv (=): shapes of q, k, v.
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, const AttentionOptions& options,
                        Tensor& dq, Tensor& dk, Tensor& dv);

}  // namespace fathom
