// Parameter accounting of a DeepSeek-V3-style model, and the memory its training state needs under
// each precision mode. This is what `fathom info` prints.
//
// Counted exactly as DeepSeek's architecture (inference/model.py; no linear has a bias; Linear
// weights are [out, in]):
//   embedding   vocab_size x dim
//   each block  attn_norm, ffn_norm: dim each
//               MLA, q_lora_rank == 0: wq       n_heads*qk_head_dim x dim
//                    q_lora_rank  > 0: wq_a     q_lora_rank x dim
//                                      q_norm   q_lora_rank
//                                      wq_b     n_heads*qk_head_dim x q_lora_rank
//                    wkv_a   (kv_lora_rank + qk_rope_head_dim) x dim
//                    kv_norm kv_lora_rank
//                    wkv_b   n_heads*(qk_nope_head_dim + v_head_dim) x kv_lora_rank
//                    wo      dim x n_heads*v_head_dim
//               dense FFN (the first n_dense_layers blocks): w1, w3 inter_dim x dim; w2 dim x
//                    inter_dim
//               MoE: gate weight n_routed_experts x dim; n_routed_experts experts of w1, w2, w3
//                    (3 x dim x moe_inter_dim); the shared experts as one SwiGLU of hidden size
//                    n_shared_experts * moe_inter_dim
//   final norm  dim
//   head        vocab_size x dim (not tied to the embedding)
//   MTP module k (mtp_depth of them): enorm, hnorm (dim each), eh_proj (dim x 2*dim), one block
//               built like main-model layer n_layers + k (MoE unless the whole model is dense; V3's
//               checkpoint layer 61 is MoE), and the norm before the shared head (checkpoint name
//               shared_head.norm). The embedding and head are shared with the main model and not
//               counted again.
// The router bias of each MoE gate (n_routed_experts FP32 values, used for expert selection only
// and updated by the load-balancing rule, not by gradients) is a buffer: it is reported on its own
// (router_bias) and left out of every parameter count, but its 4 bytes per value are in the memory
// totals.
//
// "Activated per token" is what one token's forward multiplies with: every parameter except the
// embedding table (a lookup, not a matmul) and the routed experts the token is not sent to (it uses
// n_activated_experts of n_routed_experts in each MoE block). This is the convention behind
// DeepSeek's published figures: 37B of 671B for V3, 21B of 236B for V2, 2.4B of 15.7B for V2-Lite.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "model/config.h"
#include "model/precision.h"

namespace fathom::model {

// Parameter counts of one model. Exact integers.
struct ParamCount {
  // Main model, by component; total is their sum.
  int64_t embedding = 0;       // vocab_size x dim
  int64_t head = 0;            // vocab_size x dim
  int64_t attention = 0;       // every MLA of the main model, q_norm and kv_norm included
  int64_t dense_ffn = 0;       // w1, w2, w3 of the dense blocks
  int64_t gates = 0;           // gate weights of the MoE blocks
  int64_t routed_experts = 0;  // all routed experts of all MoE blocks
  int64_t shared_experts = 0;  // shared experts of all MoE blocks
  int64_t norms = 0;           // attn_norm, ffn_norm of each block, and the final norm
  int64_t total = 0;           // the main model
  int64_t activated = 0;       // main model, per token (see the top of this file)

  // MTP modules (all mtp_depth of them), without the shared embedding and head.
  int64_t mtp = 0;
  int64_t mtp_activated = 0;  // per token, through all MTP modules

  // Buffers, not parameters: router biases of all MoE blocks, main model and MTP.
  int64_t router_bias = 0;

  // Of total + mtp: the weights of the Linears that run in FP8 under `precision: fp8` (MLA
  // projections, FFN and expert w1/w2/w3, eh_proj), and how many 128x128 block scales they need.
  // Everything else (embedding, head, gates, norms) stays in BF16/FP32 (SPEC.md section 2).
  int64_t fp8_linear = 0;
  int64_t fp8_block_scales = 0;

  // Everything the optimiser updates: main model and MTP.
  int64_t trained() const { return total + mtp; }
};

// Requires a config that passes validate(): a FATHOM_CHECK throws fathom::Error otherwise. The
// functions below assume one too (describe_parameters() checks, like this one).
ParamCount count_parameters(const ModelConfig& config);

// Parameters of single modules, as the model builds them (used by count_parameters; a model can
// check its own tensors against them):
//   mla_parameters            one MLA, q_norm (when q_lora_rank > 0) and kv_norm included
//   dense_ffn_parameters      one dense SwiGLU FFN
//   expert_parameters         one routed expert
//   shared_expert_parameters  the shared-expert SwiGLU of one MoE block
//   gate_parameters           one gate weight (the router bias is a buffer, not counted)
//   block_parameters          attn_norm + ffn_norm + MLA + FFN (dense or MoE) of one block
//   mtp_module_parameters     one MTP module, without the shared embedding and head
int64_t mla_parameters(const ModelConfig& config);
int64_t dense_ffn_parameters(const ModelConfig& config);
int64_t expert_parameters(const ModelConfig& config);
int64_t shared_expert_parameters(const ModelConfig& config);
int64_t gate_parameters(const ModelConfig& config);
int64_t block_parameters(const ModelConfig& config, bool moe);
int64_t mtp_module_parameters(const ModelConfig& config);

// Bytes of training state per trained parameter: weights + gradients + AdamW moments (m and v).
// Activations, communication buffers and ZeRO sharding are not included.
//   fp32: FP32 weights 4 + FP32 grads 4 + FP32 m, v 8                         = 16 B
//   bf16: BF16 working weights 2 + FP32 master 4 + FP32 grads 4 + FP32 m, v 8  = 18 B
//   fp8:  FP32 master 4 + FP32 grads 4 + BF16 m, v 4, plus a working copy:
//           FP8 linear weights: E4M3 1 B, + one FP32 scale per 128x128 block  = 13 B + scales
//           everything else (embedding, head, gates, norms): BF16 2 B          = 14 B
// Every mode adds 4 B per router-bias value (an FP32 buffer with no gradient or moments).
int64_t training_state_bytes(const ParamCount& count, TrainingPrecision precision);
// training_state_bytes / trained parameters (the router-bias buffers included in the bytes).
double bytes_per_parameter(const ParamCount& count, TrainingPrecision precision);

// The report `fathom info` prints: the shape, a table of total, activated, embedding, head and MTP
// parameter counts (exact and in billions/millions), the router-bias buffers, and for each
// precision mode the bytes per parameter and the GiB of training state (main model + MTP).
std::string describe_parameters(const ModelConfig& config);

}  // namespace fathom::model
