// MoE router: DeepSeek-V3's Gate (inference/model.py) as a pure function of the gate logits, its
// backward, and the sequence-wise balance loss (SPEC.md section 1, DeepSeekMoE).
//
// Forward, per token t with logits l (E):
//   s      = sigmoid(l)            (or softmax(l) over all E experts)      affinities
//   biased = s + bias                                                      used only to select
//   with n_groups > 1: a group's score is the sum of its two largest biased scores; the
//     n_limited_groups best groups are kept, the experts of the others are excluded;
//   topk_idx    = the top_k remaining experts by biased score, in descending order
//   topk_weight = s[topk_idx] (unbiased), for sigmoid divided by their sum, then * route_scale
//                 (softmax: not normalised, as DeepSeek's code).
// Every ranking breaks ties toward the lower index (lower group, lower expert).
//
// The selection is computed on the host: logits on a CUDA device are copied to the host, and the
// results are copied back to the logits' device. The per-expert token counts must reach the host
// for the grouped GEMM anyway, so this costs one (T, E) copy each way. The backward functions also
// run on the host and place their result on the device of the output tensor.
//
// Errors: shape, dtype or config violations, and non-finite logits (their order is undefined),
// throw fathom::Error naming the function and the offending value.
#pragma once

#include <cstdint>
#include <string_view>

#include "kernels/tensor.h"
#include "model/config.h"

namespace fathom::model {

struct RouterConfig {
  int64_t n_experts = 1;         // E: routed experts
  int64_t top_k = 1;             // K: experts per token, <= the experts of n_limited_groups groups
  int64_t n_groups = 1;          // E split into this many equal groups (each >= 2 experts if > 1)
  int64_t n_limited_groups = 1;  // groups a token may use
  ScoreFunc score_func = ScoreFunc::kSigmoid;
  double route_scale = 1.0;
};

// The router part of a model config (n_routed_experts, n_activated_experts, n_expert_groups, ...).
RouterConfig router_config(const ModelConfig& config);

// Throws fathom::Error, prefixed with `context`, unless 1 <= top_k <= n_experts, n_groups divides
// n_experts with >= 2 experts per group when n_groups > 1, 1 <= n_limited_groups <= n_groups,
// top_k <= the experts of n_limited_groups groups, and route_scale > 0. Every function below
// checks its config with it.
void check_router_config(const RouterConfig& cfg, std::string_view context);

struct Routing {
  Tensor scores;       // (T, E) f32: affinities s (sigmoid, or softmax over all E)
  Tensor topk_idx;     // (T, K) i32: selected experts, by biased score, descending
  Tensor topk_weight;  // (T, K) f32: gate values
};

// logits: (T, E) f32 = x W_g^T;  bias: (E) f32.  Returns tensors on the logits' device.
Routing route(const Tensor& logits, const Tensor& bias, const RouterConfig& cfg);

// The same scores and gate values for a given selection (routing held fixed: gradient checks,
// where a finite-difference step could otherwise flip a selection). topk_idx: (T, K) i32, each
// row K distinct experts in [0, E) (the group limit is not checked). The result's topk_idx is a
// copy on the logits' device.
Routing route_fixed(const Tensor& logits, const Tensor& topk_idx, const RouterConfig& cfg);

// Backward of topk_weight with the selection constant: through the gate normalisation and the
// sigmoid / softmax.  d_topk_weight: (T, K) f32;  routing: route()'s result for these logits;
// d_logits: (T, E) f32 (=).
void route_backward(const Tensor& d_topk_weight, const Routing& routing, const RouterConfig& cfg,
                    Tensor& d_logits);

// Sequence-wise balance loss, averaged over the B = T / seq_len sequences (row t = b * seq_len +
// s):
//   L = alpha / B * sum_b sum_i f_{b,i} P_{b,i},
//   f_{b,i} = E / (K * seq_len) * #{t in b : i in topk_idx[t]},
//   P_{b,i} = 1 / seq_len * sum_{t in b} s_{t,i} / sum_j s_{t,j}.
// seq_len must divide T. Accumulated in double.
double balance_loss(const Routing& routing, int64_t seq_len, double alpha, const RouterConfig& cfg);

// d_logits (+=) grad * dL/d logits, with f constant (the selection is not differentiable).
// d_logits: (T, E) f32.
void balance_loss_backward(const Routing& routing, int64_t seq_len, double alpha, double grad,
                           const RouterConfig& cfg, Tensor& d_logits);

}  // namespace fathom::model
