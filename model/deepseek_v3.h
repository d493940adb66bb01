// The DeepSeek-V3 model (SPEC.md section 1): embedding, n_layers blocks (MLA + dense FFN or
// DeepSeekMoE), final RMSNorm, output head, and mtp_depth multi-token-prediction modules sharing
// the embedding and head. Forward and backward are explicit (DESIGN.md decision 1).
//
// A micro-batch is a host or device tensor tokens (B, S + mtp_depth + 1) i32: the main model reads
// tokens[:, 0:S] and predicts tokens[:, 1:S+1]; MTP depth k (1-based) embeds tokens[:, k:S+k] and
// predicts tokens[:, k+1:S+k+1]. Every sequence therefore yields S predictions at every depth.
// Targets equal to OutputHead::kIgnoreIndex (-1) are not scored.
//
//   lm_loss  = mean CE of the main head over scored tokens
//   mtp_loss = mean over depths of each depth's mean CE
//   balance  = sum over every MoE block (main and MTP) of its sequence-wise balance loss
//   total    = lm_loss + mtp_lambda * mtp_loss + balance
// (SPEC.md: L_MTP = lambda / D * sum_k CE_k.)
//
// MTP module k: x = eh_proj([enorm(Emb(tokens shifted by k)) ; hnorm(h_{k-1})]), one Block, then
// its own norm and the shared head; h_0 is the main model's last block output (before the final
// norm), h_k the block output of module k. Gradients of the MTP losses flow into the main model.
//
// Pipeline stages (DESIGN.md decision 2): with ModelOptions{stage, stages}, an object holds one
// contiguous slice of the model, stage_layers() of the blocks. The first stage also holds the
// embedding; the last stage the final norm, the head and the MTP modules, and (with MTP) its own
// copy of the embedding, which the MTP modules read: a copy of a parameter has the same global
// name, and the pipeline sums the copies' gradients. forward_stage / backward_stage run one
// micro-batch through the slice; the whole model (stages = 1) is the special case with both ends.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "kernels/ops/rope.h"
#include "kernels/tensor.h"
#include "model/block.h"
#include "model/config.h"
#include "model/embedding.h"
#include "model/head.h"
#include "model/linear.h"
#include "model/module.h"
#include "model/norm.h"
#include "model/precision.h"

namespace fathom::model {

struct ModelOptions {
  bool recompute = false;                 // see BlockOptions
  TokenDispatcher* dispatcher = nullptr;  // shared by every MoE block; nullptr: local
  int stage = 0;                          // the pipeline stage this object holds,
  int stages = 1;                         // of this many; 1 <= stages <= n_layers
};

// The blocks of pipeline stage `stage` of `stages`: [begin, end). The last stage also runs the
// mtp_depth MTP modules, each about a block's work, so the split balances n_layers + mtp_depth
// units: consecutive, as even as possible, the first stages taking the extra ones when uneven
// (the last stage also runs the output head). A stage may get no block when the MTP modules fill
// its share. Requires 1 <= stages <= n_layers.
struct LayerRange {
  int64_t begin = 0;
  int64_t end = 0;
};
LayerRange stage_layers(int64_t n_layers, int64_t mtp_depth, int stage, int stages);

struct Losses {
  double total = 0;
  double lm = 0;
  double mtp = 0;      // unweighted mean over depths (0 without MTP)
  double balance = 0;  // summed over MoE blocks
  int64_t tokens = 0;  // scored main-model tokens
};

class DeepSeekV3 {
 private:
  struct Pass;  // one micro-batch's activations

 public:
  DeepSeekV3(const ModelConfig& config, TrainingPrecision precision, Device device,
             const ModelOptions& options = {});
  DeepSeekV3(const DeepSeekV3&) = delete;
  DeepSeekV3& operator=(const DeepSeekV3&) = delete;

  // Normal(0, init_std) for every matrix (keyed by seed and parameter name), norms 1, biases 0.
  void init(uint64_t seed);

  // Forward and backward of one micro-batch: every parameter gradient += loss_scale * d total /
  // d parameter (loss_scale = 1 / micro-batches for gradient accumulation). GEMM weight gradients
  // go through `store` when given. Returns the losses of this micro-batch. tokens: see above;
  // an id outside [0, vocab_size) or a sequence longer than max_seq_len throws fathom::Error.
  Losses forward_backward(const Tensor& tokens, double loss_scale,
                          WeightGradStore* store = nullptr);
  // Forward only (evaluation): the same losses, no gradients, no expert-load accounting.
  Losses evaluate(const Tensor& tokens);

  // One micro-batch's saved activations, between forward_stage and backward_stage.
  class StagePass {
   public:
    StagePass();
    ~StagePass();
    StagePass(StagePass&&) noexcept;
    StagePass& operator=(StagePass&&) noexcept;

   private:
    friend class DeepSeekV3;
    std::unique_ptr<Pass> pass_;
  };
  // Forward of this stage for one micro-batch. tokens: as above (every stage reads its positions,
  // the first its ids, the last its targets). input: (B*S, dim) f32, the previous stage's output
  // (ignored by the first stage). Returns (B*S, dim) f32 for the next stage, or, on the last
  // stage, an undefined tensor. `losses` gets this stage's share: the balance losses of its MoE
  // blocks, plus lm, mtp, tokens and total on the last stage (the stages' losses sum to the whole
  // model's). training: count expert load (false: evaluation, no backward follows).
  Tensor forward_stage(const Tensor& tokens, const Tensor& input, StagePass& pass,
                       Losses* losses, bool training = true);
  // Last stage: the main head's logits (B*S, vocab) f32 of the forward `pass` holds.
  Tensor stage_logits(const StagePass& pass);
  // Backward of the micro-batch `pass` holds: parameter gradients += loss_scale * d total / d
  // parameter, GEMM weight gradients through `store` when given. grad_output: what the next
  // stage's backward_stage returned (already scaled; ignored by the last stage).
  // Returns d(loss_scale * total) / d input, or an undefined tensor on the first stage.
  Tensor backward_stage(double loss_scale, const Tensor& grad_output, StagePass& pass,
                        WeightGradStore* store = nullptr);
  int stage() const { return stage_; }
  int stages() const { return stages_; }
  bool first_stage() const { return stage_ == 0; }
  bool last_stage() const { return stage_ + 1 == stages_; }
  // Main-head logits (B*S, vocab) f32 for tokens (B, S + mtp_depth + 1) (tests, evaluation), and
  // the losses of that forward when `losses` is given.
  Tensor logits(const Tensor& tokens, Losses* losses = nullptr);

  // Every trained parameter, in a fixed order (main model, then MTP modules).
  ParameterList parameters();
  // Router biases of every MoE block.
  BufferList buffers();
  // The MoE blocks' layers (main, then MTP), for expert load and the bias update.
  std::vector<Moe*> moe_layers();

  // Called during forward_backward (without a WeightGradStore) with groups of parameters whose
  // gradients that backward has finished, in the order it finishes them: each MTP module, the
  // head, the final norm, each block from the last, the embedding; every parameter once. Data
  // parallelism uses it to start reducing gradients while backward goes on. Empty: no calls.
  void set_gradients_ready_hook(std::function<void(const ParameterList&)> hook) {
    gradients_ready_ = std::move(hook);
  }

  // The MTP loss weight lambda from now on (the trainer's lambda schedule).
  void set_mtp_lambda(double lambda) { config_.mtp_lambda = lambda; }

  const ModelConfig& config() const { return config_; }
  TrainingPrecision precision() const { return precision_; }
  Device device() const { return device_; }

 private:
  struct MtpModule {
    RmsNorm enorm;
    RmsNorm hnorm;
    Linear eh_proj;
    Block block;
    RmsNorm norm;
  };
  // input / output: see forward_stage (output is left alone on the last stage).
  Losses forward(const Tensor& tokens, const Tensor& input, bool training, Pass& pass,
                 Tensor* output);
  // grad_output / grad_input: see backward_stage (grad_input is left alone on the first stage).
  void backward(double loss_scale, const Tensor& grad_output, Pass& pass, WeightGradStore* store,
                Tensor* grad_input);
  // The last stage's backward of the MTP modules, the head and the final norm: returns d total
  // / d (last block output).
  Tensor backward_head(double loss_scale, Pass& pass, WeightGradStore* store, bool report);
  void check_whole(const char* what) const;

  ModelConfig config_;
  TrainingPrecision precision_;
  Device device_;
  int stage_;
  int stages_;
  RopeTable rope_;
  std::unique_ptr<Embedding> embed_;  // first stage, and the last with MTP
  // The blocks stage_layers() gives this stage: layers_[i] is block begin + i.
  std::vector<std::unique_ptr<Block>> layers_;
  std::unique_ptr<RmsNorm> norm_;     // last stage
  std::unique_ptr<OutputHead> head_;  // last stage
  std::vector<std::unique_ptr<MtpModule>> mtp_;
  std::function<void(const ParameterList&)> gradients_ready_;
};

}  // namespace fathom::model
