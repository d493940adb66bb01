// Dense student checkpoints in the Hugging Face Llama and Qwen2 layouts (LlamaForCausalLM,
// Qwen2ForCausalLM): config.json <-> DenseConfig (model/dense_config.h), the tensor-name table and
// import / export through trainer/hf_convert.h.
//
// Names (HF left, fathom right; i a layer):
//   model.embed_tokens.weight                        embed.weight
//   model.layers.i.input_layernorm.weight            layers.i.attn_norm.weight
//   model.layers.i.self_attn.{q,k,v}_proj.weight     layers.i.attn.{wq,wk,wv}.weight
//   model.layers.i.self_attn.{q,k,v}_proj.bias       layers.i.attn.{wq,wk,wv}.bias  (Qwen2)
//   model.layers.i.self_attn.o_proj.weight           layers.i.attn.wo.weight
//   model.layers.i.post_attention_layernorm.weight   layers.i.ffn_norm.weight
//   model.layers.i.mlp.{gate,up,down}_proj.weight    layers.i.ffn.{w1,w3,w2}.weight
//   model.norm.weight                                norm.weight
//   lm_head.weight                                   head.weight (untied; with tied embeddings
//                                                    an lm_head.weight present must equal embed)
// No tensor is permuted: fathom's student uses the HF rotate-half RoPE layout.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/dense_config.h"
#include "nlohmann/json.hpp"
#include "trainer/hf_convert.h"

namespace fathom::trainer {

// config.json (model_type llama or qwen2) -> DenseConfig. Keys: vocab_size, hidden_size,
// intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads (default: the
// heads), head_dim (default hidden_size / heads), rope_theta, rms_norm_eps,
// max_position_embeddings, tie_word_embeddings, initializer_range, attention_bias (llama; qwen2
// always has q/k/v biases), rope_scaling (null or rope_type llama3 with factor, low_freq_factor,
// high_freq_factor, original_max_position_embeddings). Checks, each an error naming the key:
// hidden_act silu, mlp_bias false, use_sliding_window false, qwen2 head_dim = hidden / heads;
// then validate().
absl::StatusOr<model::DenseConfig> dense_config_from_hf(const nlohmann::json& config,
                                                        std::string_view source);
// DenseConfig -> config.json that transformers / vLLM / llama.cpp's converter accept.
// InvalidArgument for what the architecture cannot express (qwen2 without biases or with a
// head_dim other than hidden_size / heads; llama3 rope scaling on qwen2).
absl::StatusOr<nlohmann::json> dense_config_to_hf(const model::DenseConfig& config);

// The tensor table; `lm_head_copy` adds lm_head.weight as a copy of embed.weight (tied models
// whose HF files store it anyway).
std::vector<HfMapEntry> dense_tensor_map(const model::DenseConfig& config,
                                         bool lm_head_copy = false);

absl::StatusOr<ConvertReport> import_hf_dense(const std::string& hf_dir, const std::string& out_dir,
                                              const HfImportOptions& options);
absl::StatusOr<ConvertReport> export_hf_dense(const std::string& checkpoint_dir,
                                              const model::DenseConfig& config,
                                              const std::string& out_dir,
                                              const HfExportOptions& options);

}  // namespace fathom::trainer
