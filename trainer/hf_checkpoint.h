// DeepSeek-V3 checkpoints in the Hugging Face layout (deepseek-ai/DeepSeek-V3 on the Hub):
// config.json <-> ModelConfig, the tensor-name table, import / export (trainer/hf_convert.h does
// the I/O), and loading an imported checkpoint into a DeepSeekV3 model. docs/checkpoints.md has
// the full tables.
//
// Names (i a layer, e an expert, L = num_hidden_layers; HF left, fathom right):
//   model.embed_tokens.weight                          embed.weight
//   model.layers.i.input_layernorm.weight              layers.i.attn_norm.weight
//   model.layers.i.self_attn.q_a_proj.weight           layers.i.attn.wq_a.weight
//                          .q_a_layernorm.weight        .attn.q_norm.weight
//                          .q_b_proj.weight             .attn.wq_b.weight
//                          .q_proj.weight               .attn.wq.weight     (q_lora_rank 0)
//                          .kv_a_proj_with_mqa.weight   .attn.wkv_a.weight
//                          .kv_a_layernorm.weight       .attn.kv_norm.weight
//                          .kv_b_proj.weight            .attn.wkv_b.weight
//                          .o_proj.weight               .attn.wo.weight
//   model.layers.i.post_attention_layernorm.weight     layers.i.ffn_norm.weight
//   model.layers.i.mlp.{gate,up,down}_proj.weight      layers.i.ffn.{w1,w3,w2}.weight  (dense)
//   model.layers.i.mlp.gate.weight                     layers.i.ffn.gate.weight
//   model.layers.i.mlp.gate.e_score_correction_bias    layers.i.ffn.gate.bias  (noaux_tc only)
//   model.layers.i.mlp.experts.e.{gate,up,down}_proj.weight
//                                                      row e of layers.i.ffn.experts.{w1,w3,w2}
//   model.layers.i.mlp.shared_experts.{gate,up,down}_proj.weight
//                                                      layers.i.ffn.shared_experts.{w1,w3,w2}
//   model.norm.weight                                  norm.weight
//   lm_head.weight                                     head.weight
// MTP module k is HF layer L + k: the block's tensors as above map to mtp.k.block.*, and
//   enorm / hnorm / eh_proj .weight                    mtp.k.enorm / hnorm / eh_proj .weight
//   shared_head.norm.weight                            mtp.k.norm.weight
//   embed_tokens.weight, shared_head.head.weight       copies of embed.weight, head.weight
// Every matrix has the same [out, in] layout and row order in both (RoPE dims interleaved, wkv_a
// = [kv_lora_rank | rope], per head [nope | rope] and [k_nope | v]), so no tensor is permuted.
// FP8 (DeepSeek's release): the linear weights of attention, dense FFN and experts (not the
// router gate, eh_proj, embedding, head or norms) are F8_E4M3 with 128x128 weight_scale_inv.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/deepseek_v3.h"
#include "nlohmann/json.hpp"
#include "trainer/hf_convert.h"

namespace fathom::trainer {

// config.json -> ModelConfig. Mapped keys: vocab_size, hidden_size (dim), intermediate_size
// (inter_dim), moe_intermediate_size, num_hidden_layers, first_k_dense_replace,
// num_attention_heads, n_routed_experts, n_shared_experts, num_experts_per_tok, n_group,
// topk_group, scoring_func, routed_scaling_factor, q_lora_rank (null = 0), kv_lora_rank,
// qk_nope_head_dim, qk_rope_head_dim, v_head_dim, max_position_embeddings (max_seq_len),
// rope_theta, rope_scaling (yarn: factor, original_max_position_embeddings, beta_fast, beta_slow,
// mscale_all_dim), rms_norm_eps, initializer_range (init_std), aux_loss_alpha (balance_loss_alpha),
// num_nextn_predict_layers (mtp_depth). Consistency checks, each an error naming the key:
// num_key_value_heads == num_attention_heads; hidden_act silu; tie_word_embeddings and
// attention_bias false; moe_layer_freq 1; topk_method noaux_tc with scoring_func sigmoid and
// norm_topk_prob true, or greedy with softmax, norm_topk_prob false and a single group (how the
// router works); mscale == mscale_all_dim; YaRN only with max_position_embeddings >
// original_max_position_embeddings (DeepSeek's reference applies it only then); a
// quantization_config, when present, must be fp8 / e4m3 / [128, 128]; then validate().
absl::StatusOr<model::ModelConfig> v3_config_from_hf(const nlohmann::json& config,
                                                     std::string_view source);
// ModelConfig -> config.json (model_type deepseek_v3, DeepseekV3ForCausalLM; greedy softmax
// routing for a softmax model). Without YaRN, rope_scaling is null and max_position_embeddings =
// max_seq_len. v3_config_from_hf() of it gives back the config's architecture fields.
nlohmann::json v3_config_to_hf(const model::ModelConfig& config);

// The tensor table of a model with this config (the layout above), MTP layers last.
std::vector<HfMapEntry> v3_tensor_map(const model::ModelConfig& config);

// HF DeepSeek-V3 directory -> fathom checkpoint (see import_with_map()).
absl::StatusOr<ConvertReport> import_hf_v3(const std::string& hf_dir, const std::string& out_dir,
                                           const HfImportOptions& options);
// fathom checkpoint of a model with `config` -> HF directory (see export_with_map()). A softmax
// model (greedy routing has no bias) needs all router biases zero: InvalidArgument otherwise.
// Refused (InvalidArgument naming the key): softmax scoring (HF's DeepSeek-V3 router is
// sigmoid-only) and a norm eps other than 1e-6 (HF's latent norms always use 1e-6).
absl::StatusOr<ConvertReport> export_hf_v3(const std::string& checkpoint_dir,
                                           const model::ModelConfig& config,
                                           const std::string& out_dir,
                                           const HfExportOptions& options);

// Loads every parameter and router bias of `model` from a fathom checkpoint (an import, or a
// training checkpoint): f32 tensors directly, FP8 tensors of a --keep-fp8 import dequantized
// (w = e4m3 * scale_inv per 128x128 block). Parameters holding some rows (expert parallelism)
// read those rows. Bumps each parameter's version. Errors as read_checkpoint().
absl::Status load_v3_weights(const std::string& checkpoint_dir, model::DeepSeekV3& model);
// The same for any parameters and buffers (e.g. a pipeline rank's stages).
absl::Status load_v3_weights(const std::string& checkpoint_dir, const model::ParameterList& params,
                             const model::BufferList& buffers);

}  // namespace fathom::trainer
