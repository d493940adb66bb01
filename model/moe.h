// DeepSeekMoE feed-forward layer (SPEC.md section 1) with explicit forward and backward:
//
//   y = SharedFFN(x) + sum_k topk_weight[t, k] * Expert_{topk_idx[t, k]}(x_t)
//
// - The router (model/router.h) runs on gate logits x W_g^T computed by a plain f32 GEMM in every
//   precision (the gate stays high precision); its selection uses the auxiliary-loss-free bias, a
//   Buffer updated by update_bias(), never by gradients.
// - Routed experts are SwiGLU FFNs w2(silu(w1 x) * w3 x) whose weights are GroupedLinear stacks in
//   the run's precision, one group per local expert, fed in the contiguous layout that the
//   TokenDispatcher (model/token_dispatcher.h) produces. Dropless: every selection is computed.
// - The gate weights are applied at the origin, after combine: y += w[t,k] * selection_out[t*K+k].
// - Shared experts: one model::Mlp of hidden n_shared_experts * moe_inter_dim (absent when 0),
//   added unweighted.
// - Sequence-wise balance loss (router.h balance_loss, alpha = config.balance_loss_alpha) is
//   computed by forward; its gradient enters backward through balance_loss_grad.
//
// Parameters (prefix e.g. "layers.3.ffn"): prefix.gate.weight (E, dim); prefix.experts.w1.weight
// (E_local, moe_inter, dim), .w2.weight (E_local, dim, moe_inter), .w3.weight (E_local, moe_inter,
// dim); prefix.shared_experts.w{1,2,3}.weight. Buffer: prefix.gate.bias (E) f32.
// With a dispatcher that owns a slice of the experts (expert parallelism), the expert stacks hold
// only that slice (E_local = n_local_experts(), global ids from first_local_expert()).
//
// Threading: one micro-batch at a time per call; several micro-batches may be in flight, each with
// its own Saved. forward is not const: it adds to the expert-load counter.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "kernels/tensor.h"
#include "model/config.h"
#include "model/linear.h"
#include "model/mlp.h"
#include "model/module.h"
#include "model/precision.h"
#include "model/router.h"
#include "model/token_dispatcher.h"

namespace fathom::model {

class Moe {
 public:
  // dispatcher: not owned, must outlive the layer and own experts of this config's E; nullptr
  // makes the layer own a LocalDispatcher of all E experts. Throws fathom::Error on a config the
  // router rejects or a dispatcher whose experts do not fit in [0, E).
  Moe(const std::string& prefix, const ModelConfig& config, TrainingPrecision precision,
      Device device, TokenDispatcher* dispatcher = nullptr);

  struct Saved {
    Tensor x;  // (T, dim)
    int64_t seq_len = 0;
    Routing routing;  // scores (T, E), topk_idx (T, K), topk_weight (T, K)
    DispatchPlan plan;
    std::vector<int64_t> counts;  // rows per local expert of expert_tokens (host)
    Tensor expert_tokens;         // (N, dim): dispatched rows, grouped by local expert
    Tensor gate;                  // (N, moe_inter): w1 rows
    Tensor up;                    // (N, moe_inter): w3 rows
    Tensor hidden;                // (N, moe_inter): silu(gate) * up
    Tensor selection_out;         // (T * K, dim): expert output of selection t * K + k
    Tensor selection_token;       // (T * K) i32: t of selection t * K + k
    Mlp::Saved shared;
    double balance_loss = 0;  // sequence-wise balance loss, alpha included
  };

  // x: (T, dim) f32, T = B * seq_len (seq_len must divide T) -> y: (T, dim) f32 (=).
  // Adds this micro-batch's per-expert selection counts to expert_load().
  void forward(const Tensor& x, int64_t seq_len, Tensor& y, Saved& saved);
  // dy: (T, dim) f32 -> dx: (T, dim) f32 (=). balance_loss_grad: d total_loss / d
  // saved.balance_loss (usually 1; 0 skips that term). Parameter gradients (+=) now, or deferred
  // into `store`. The bias gets no gradient.
  void backward(const Tensor& dy, double balance_loss_grad, const Saved& saved, Tensor& dx,
                WeightGradStore* store);

  // gate.weight, experts.w1, w2, w3, then the shared experts' w1, w2, w3.
  void append_parameters(ParameterList& out);
  // The router bias.
  void append_buffers(BufferList& out);
  // Normal(0, std) weights keyed by (seed, name); bias 0.
  void init(uint64_t seed, double std);

  // Per-expert selection counts (E, host) summed over forwards since reset_load().
  const std::vector<int64_t>& expert_load() const { return load_; }
  void reset_load();
  // Replaces the counter (E entries): restores it after forwards that must not count, such as
  // evaluation.
  void set_expert_load(absl::Span<const int64_t> load);
  // Auxiliary-loss-free balancing: b_i -= gamma where load_i > mean(load), += gamma where below,
  // unchanged where equal. load: (E) the global load of the step. Applied by the trainer after
  // each optimizer step.
  void update_bias(absl::Span<const double> load, double gamma);

  // Holds the selection fixed: forward uses topk_idx ((T, K) i32, any device) for every
  // micro-batch of T tokens instead of selecting (scores, gate values and the balance loss
  // still follow the logits). For gradient checks, where a finite-difference step could flip a
  // selection. An undefined Tensor returns to normal routing.
  void set_fixed_routing(const Tensor& topk_idx);

  const RouterConfig& router() const { return router_; }
  int64_t dim() const { return dim_; }

  Linear gate;  // (E, dim), always f32
  Buffer gate_bias;
  GroupedLinear w1, w2, w3;
  std::optional<Mlp> shared_experts;

 private:
  RouterConfig router_;
  int64_t dim_;
  double balance_alpha_;
  std::unique_ptr<LocalDispatcher> own_dispatcher_;
  TokenDispatcher* dispatcher_;
  std::vector<int64_t> load_;
  Tensor fixed_topk_idx_;
};

}  // namespace fathom::model
