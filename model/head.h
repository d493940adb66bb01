// Output head fused with cross-entropy: per-token loss of h W^T against targets, without ever
// materialising (T, vocab) logits (kernels/ops/loss.h). The head stays f32 in every precision and
// is shared by the main model and every MTP module.
//
// The weight gradient comes out of the same chunked pass as dh and is not deferred.
#pragma once

#include <cstdint>

#include "kernels/tensor.h"
#include "model/module.h"

namespace fathom::model {

class OutputHead {
 public:
  OutputHead(int64_t vocab_size, int64_t dim, Device device);  // parameter "head.weight"

  struct Saved {
    Tensor h;        // (T, dim) the normalised hidden states
    Tensor targets;  // (T) i32
    Tensor lse;      // (T) f32
  };
  // h: (T, dim) f32, targets: (T) i32 in [0, vocab) or kIgnoreIndex. Returns the per-token loss
  // (T) f32 (0 where ignored).
  Tensor forward(const Tensor& h, const Tensor& targets, Saved& saved) const;
  // dloss: (T) f32 d(total loss)/d(per-token loss). dh (=); weight.grad (+=).
  void backward(const Tensor& dloss, const Saved& saved, Tensor& dh);
  // Logits (T, vocab) f32 (tests and generation only: O(T * vocab) memory).
  Tensor logits(const Tensor& h) const;

  void append_parameters(ParameterList& out) { out.push_back(&weight); }

  static constexpr int32_t kIgnoreIndex = -1;
  Parameter weight;  // (vocab, dim)
};

}  // namespace fathom::model
