// Output head fused with cross-entropy, over vocabulary chunks.
//
// logits = h @ w^T are produced chunk by chunk (chunk_size vocabulary rows at a time) and never
// exist for the whole vocabulary: memory is O(T * chunk_size), not O(T * V). The forward keeps an
// online log-sum-exp; the backward recomputes each chunk's logits, forms softmax - onehot for that
// chunk and multiplies it into dh and dw.
#pragma once

#include <cstdint>

#include "kernels/tensor.h"

namespace fathom {

struct CrossEntropyOptions {
  int64_t chunk_size = 4096;   // vocabulary rows per chunk
  int32_t ignore_index = -1;   // targets equal to this contribute 0 loss and 0 gradient
};

// h: (T, D) f32/bf16;  w: (V, D) same dtype as h;  targets: (T) i32 in [0, V) or ignore_index.
// loss: (T) f32 = lse - logit[target] (0 for ignored);  lse: (T) f32, saved for backward.
void fused_linear_cross_entropy_forward(const Tensor& h, const Tensor& w, const Tensor& targets,
                                        Tensor& loss, Tensor& lse,
                                        const CrossEntropyOptions& options = {});

// dloss: (T) f32, the gradient of the total loss with respect to each token's loss (for a mean
// over n tokens, 1/n each).  dh (=): like h;  dw (+=): (V, D) f32.
void fused_linear_cross_entropy_backward(const Tensor& h, const Tensor& w, const Tensor& targets,
                                         const Tensor& lse, const Tensor& dloss, Tensor& dh,
                                         Tensor& dw, const CrossEntropyOptions& options = {});

}  // namespace fathom
