// Model configuration of a DeepSeek-V3-style model: the typed form of a model YAML (SPEC.md section
// 1, DESIGN.md decision 6).
//
// Field names are DeepSeek's (inference/configs/config_671B.json); defaults are those of DeepSeek's
// inference/model.py ModelArgs (the V2-Lite shape), plus the training hyper-parameters of the V3
// report (MTP, balancing, init). A model YAML has one `model:` mapping; every field is optional:
//   model:
//     dim: 64
//     n_layers: 3
//     score_func: sigmoid
// Presets live in configs/models/. A valid ModelConfig (validate() returns OK) is what every layer
// may assume; parse_model_config() and load_model_config() only return valid ones.
//
// Errors are absl::Status with one line per problem, each naming the key path and, when parsed from
// a file, the file and line:
//   configs/models/tiny.yaml:7: model.n_heads: expected an integer, got 'abc'
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/ops/rope.h"
#include "yaml-cpp/yaml.h"

namespace fathom::model {

// MoE affinity: softmax over all routed experts (V2), or an independent sigmoid per expert (V3).
enum class ScoreFunc : uint8_t { kSoftmax, kSigmoid };
std::string_view score_func_name(ScoreFunc f);  // "softmax" / "sigmoid"

struct ModelConfig {
  // Sizes.
  int64_t vocab_size = 102400;
  int64_t dim = 2048;            // hidden size
  int64_t inter_dim = 10944;     // SwiGLU hidden size of the dense FFN layers
  int64_t moe_inter_dim = 1408;  // SwiGLU hidden size of each expert (routed and shared)
  int64_t n_layers = 27;         // transformer blocks of the main model
  int64_t n_dense_layers = 1;    // the first n_dense_layers blocks use the dense FFN, the rest MoE
  int64_t n_heads = 16;

  // MoE.
  int64_t n_routed_experts = 64;
  int64_t n_shared_experts = 2;     // fused into one SwiGLU of n_shared * moe_inter_dim
  int64_t n_activated_experts = 6;  // top-k routed experts per token
  int64_t n_expert_groups = 1;      // routed experts split into this many equal groups
  int64_t n_limited_groups = 1;     // a token may use experts of this many groups
  ScoreFunc score_func = ScoreFunc::kSoftmax;
  double route_scale = 1.0;  // multiplies the (normalised) gate weights

  // MLA.
  int64_t q_lora_rank = 0;  // 0: queries projected directly (wq); > 0: wq_a, q_norm, wq_b
  int64_t kv_lora_rank = 512;
  int64_t qk_nope_head_dim = 128;
  int64_t qk_rope_head_dim = 64;  // even; one rotary key of this size is shared by all heads
  int64_t v_head_dim = 128;

  // RoPE and YaRN. YaRN is applied only when max_seq_len > original_seq_len (uses_yarn()), as in
  // DeepSeek's reference.
  int64_t max_seq_len = 16384;  // positions the rotary table covers
  double rope_theta = 10000.0;
  int64_t original_seq_len = 4096;
  double rope_factor = 40.0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;

  // Multi-token prediction: mtp_depth modules, loss weight mtp_lambda (L = L_main + lambda/D sum).
  int64_t mtp_depth = 0;
  double mtp_lambda = 0.3;

  // Norms, initialisation, load balancing.
  double norm_eps = 1e-6;            // RMSNorm epsilon
  double init_std = 0.006;           // std of the normal init of linear and embedding weights
  double bias_update_speed = 0.001;  // gamma of the auxiliary-loss-free router bias update
  double balance_loss_alpha = 1e-4;  // weight of the sequence-wise balance loss

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  int64_t n_moe_layers() const { return n_layers - n_dense_layers; }
  // Whether layer `layer` (0-based) of the main model has an MoE FFN.
  bool is_moe_layer(int64_t layer) const { return layer >= n_dense_layers; }
  int64_t experts_per_group() const { return n_routed_experts / n_expert_groups; }
  bool uses_yarn() const { return max_seq_len > original_seq_len; }
  // Attention softmax scale: qk_head_dim^-0.5, times (0.1 * mscale * ln(rope_factor) + 1)^2 with
  // YaRN.
  double softmax_scale() const;

  bool operator==(const ModelConfig&) const = default;
};

// The rotary-embedding setup of the model: qk_rope_head_dim dims, base rope_theta, interleaved
// pairs (DeepSeek's layout), YaRN set iff uses_yarn().
RopeConfig rope_config(const ModelConfig& config);

// Checks every constraint and reports EVERY violation, one line each, as InvalidArgument:
// "<path>.<key>: <what is wrong>". `path` is the key path of the model section ("model").
// Constraints:
//   - sizes positive (q_lora_rank, n_shared_experts and mtp_depth may be 0), each at most
//     2^31 - 1, and the whole model under 2^62 parameters;
//   - 0 <= n_dense_layers <= n_layers; qk_rope_head_dim even;
//   - n_activated_experts <= n_routed_experts; n_expert_groups divides n_routed_experts, and with
//     more than one group each group has at least 2 experts (a group's score is the sum of its
//     top-2); 1 <= n_limited_groups <= n_expert_groups;
//   - n_activated_experts <= n_limited_groups * n_routed_experts / n_expert_groups (the experts a
//     token can reach);
//   - route_scale, norm_eps, init_std > 0; rope_theta > 1; rope_factor >= 1;
//     beta_fast > beta_slow > 0; mscale, mtp_lambda, bias_update_speed, balance_loss_alpha >= 0.
absl::Status validate(const ModelConfig& config, std::string_view path = "model");

// Reads a model mapping (the value of `model:`) into a ModelConfig and validates it. path: the key
// path of `node` in messages ("model"). source: the file it came from, used as the prefix
// "file:line: " of every message ("" for none). Errors (InvalidArgument, all of them at once):
// `node` not a mapping; a value of the wrong type ("model.n_heads: expected an integer, got
// 'abc'"); an unknown key ("model.n_layer: unknown key (did you mean 'n_layers'?)"); a duplicate
// key; an unknown score_func. When all values parse, the validate() errors, with the line of the
// key they name.
absl::StatusOr<ModelConfig> parse_model_config(const YAML::Node& node,
                                               std::string_view path = "model",
                                               std::string_view source = "");

// Reads the `model:` section of a YAML file (a model preset or a run config; other top-level
// sections are left to their own parsers). Errors: NotFound naming the file when it does not exist;
// InvalidArgument for invalid YAML ("file:line:column: invalid YAML: ..."), a file whose top level
// is not a mapping or has no `model:` section (with a "did you mean" for a misspelt one), and
// everything parse_model_config() reports.
absl::StatusOr<ModelConfig> load_model_config(const std::string& file);

// The config as a model YAML ("model:\n  vocab_size: 263\n  ..."), every field, numbers written so
// that load/parse gives back an equal ModelConfig.
std::string model_config_to_yaml(const ModelConfig& config);

}  // namespace fathom::model
