// One transformer block of DeepSeek-V3: h = x + MLA(attn_norm(x)); y = h + FFN(ffn_norm(h)), with
// FFN a dense SwiGLU (the first n_dense_layers blocks) or DeepSeekMoE. MTP modules reuse it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kernels/ops/rope.h"
#include "kernels/tensor.h"
#include "model/config.h"
#include "model/mla.h"
#include "model/mlp.h"
#include "model/moe.h"
#include "model/module.h"
#include "model/norm.h"
#include "model/token_dispatcher.h"

namespace fathom::model {

// How the T = batch * seq_len rows of a micro-batch are laid out, shared by every block.
struct TokenLayout {
  int64_t batch = 0;    // B sequences
  int64_t seq_len = 0;  // S tokens each; row t = b * S + s
  Tensor positions;     // (T) i32 = s, on the model's device
  const RopeTable* rope = nullptr;
};

struct BlockOptions {
  bool moe = false;
  // Recompute RMSNorm outputs (attn_norm, ffn_norm, q_norm, kv_norm) and the MLA up-projections
  // in backward instead of keeping them from forward (SPEC.md section 2 memory savers): Saved then
  // holds the norms' inputs and rstd, not their outputs. Gradients are bitwise unchanged.
  bool recompute = false;
  TokenDispatcher* dispatcher = nullptr;  // MoE blocks; nullptr: a local dispatcher
};

class Block {
 public:
  // prefix: "layers.3" or "mtp.0.block".
  Block(const std::string& prefix, const ModelConfig& config, TrainingPrecision precision,
        Device device, const BlockOptions& options);

  struct Saved {
    RmsNorm::Saved attn_norm;
    Mla::Saved attn;
    RmsNorm::Saved ffn_norm;
    Mlp::Saved mlp;
    Moe::Saved moe;
  };
  // x: (T, dim) f32 -> y: (T, dim) f32 (=). An MoE block adds this micro-batch's expert load to its
  // accumulator (hence not const).
  void forward(const Tensor& x, const TokenLayout& layout, Tensor& y, Saved& saved);
  // dx (=); parameter grads (+=). balance_loss_grad: d(total loss)/d(this block's balance loss).
  void backward(const Tensor& dy, double balance_loss_grad, Saved& saved, Tensor& dx,
                WeightGradStore* store);
  // The sequence-wise balance loss of the forward that filled `saved` (0 for a dense block).
  double balance_loss(const Saved& saved) const;

  bool is_moe() const { return moe_ != nullptr; }
  Moe* moe() { return moe_.get(); }
  void append_parameters(ParameterList& out);
  void append_buffers(BufferList& out);
  void init(uint64_t seed, double std);

 private:
  bool recompute_;
  RmsNorm attn_norm_;
  Mla attn_;
  RmsNorm ffn_norm_;
  std::unique_ptr<Mlp> mlp_;
  std::unique_ptr<Moe> moe_;
};

}  // namespace fathom::model
