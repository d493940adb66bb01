#include "trainer/hf_checkpoint.h"

#include <cmath>
#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "kernels/check.h"
#include "kernels/fp8.h"
#include "trainer/checkpoint.h"

namespace fathom::trainer {

// The eps of HF's q_a_layernorm / kv_a_layernorm (DeepseekV3RMSNorm's default).
constexpr double kLatentNormEps = 1e-6;
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The attention and FFN tensors of one block: HF prefix "model.layers.N", fathom prefix
// "layers.N" or "mtp.k.block".
void append_block(const model::ModelConfig& c, bool moe, const std::string& hf,
                  const std::string& ours, std::vector<HfMapEntry>& out) {
  const int64_t dim = c.dim;
  auto add = [&](const std::string& hf_name, const std::string& our_name, Shape shape, bool fp8) {
    out.push_back(HfMapEntry{hf + "." + hf_name, ours + "." + our_name, std::move(shape), -1, fp8});
  };
  add("input_layernorm.weight", "attn_norm.weight", {dim}, false);
  const int64_t q_out = c.n_heads * c.qk_head_dim();
  if (c.q_lora_rank > 0) {
    add("self_attn.q_a_proj.weight", "attn.wq_a.weight", {c.q_lora_rank, dim}, true);
    add("self_attn.q_a_layernorm.weight", "attn.q_norm.weight", {c.q_lora_rank}, false);
    add("self_attn.q_b_proj.weight", "attn.wq_b.weight", {q_out, c.q_lora_rank}, true);
  } else {
    add("self_attn.q_proj.weight", "attn.wq.weight", {q_out, dim}, true);
  }
  add("self_attn.kv_a_proj_with_mqa.weight", "attn.wkv_a.weight",
      {c.kv_lora_rank + c.qk_rope_head_dim, dim}, true);
  add("self_attn.kv_a_layernorm.weight", "attn.kv_norm.weight", {c.kv_lora_rank}, false);
  add("self_attn.kv_b_proj.weight", "attn.wkv_b.weight",
      {c.n_heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank}, true);
  add("self_attn.o_proj.weight", "attn.wo.weight", {dim, c.n_heads * c.v_head_dim}, true);
  add("post_attention_layernorm.weight", "ffn_norm.weight", {dim}, false);
  if (!moe) {
    add("mlp.gate_proj.weight", "ffn.w1.weight", {c.inter_dim, dim}, true);
    add("mlp.up_proj.weight", "ffn.w3.weight", {c.inter_dim, dim}, true);
    add("mlp.down_proj.weight", "ffn.w2.weight", {dim, c.inter_dim}, true);
    return;
  }
  const int64_t e_count = c.n_routed_experts;
  const int64_t inter = c.moe_inter_dim;
  add("mlp.gate.weight", "ffn.gate.weight", {e_count, dim}, false);
  const bool noaux = c.score_func == model::ScoreFunc::kSigmoid;
  out.push_back(HfMapEntry{noaux ? hf + ".mlp.gate.e_score_correction_bias" : std::string(),
                           ours + ".ffn.gate.bias",
                           {e_count},
                           -1,
                           false});
  // HF stores the experts one by one (gate, up, down of expert 0, then 1, ...); fathom stacks
  // them. The table follows fathom's order so that rows of one stacked tensor are consecutive.
  const struct {
    const char* hf;
    const char* ours;
    int64_t out_features, in_features;
  } kExpertWeights[] = {{"gate_proj", "w1", inter, dim},
                        {"up_proj", "w3", inter, dim},
                        {"down_proj", "w2", dim, inter}};
  for (const auto& w : kExpertWeights) {
    for (int64_t e = 0; e < e_count; ++e) {
      out.push_back(HfMapEntry{absl::StrCat(hf, ".mlp.experts.", e, ".", w.hf, ".weight"),
                               absl::StrCat(ours, ".ffn.experts.", w.ours, ".weight"),
                               {e_count, w.out_features, w.in_features},
                               e,
                               true});
    }
  }
  if (c.n_shared_experts > 0) {
    const int64_t shared = c.n_shared_experts * inter;
    add("mlp.shared_experts.gate_proj.weight", "ffn.shared_experts.w1.weight", {shared, dim}, true);
    add("mlp.shared_experts.up_proj.weight", "ffn.shared_experts.w3.weight", {shared, dim}, true);
    add("mlp.shared_experts.down_proj.weight", "ffn.shared_experts.w2.weight", {dim, shared}, true);
  }
}

std::string yaml_of(const model::ModelConfig& c) { return model::model_config_to_yaml(c); }

}  // namespace

absl::StatusOr<model::ModelConfig> v3_config_from_hf(const json& config, std::string_view source) {
  JsonConfigReader r(config, std::string(source));
  model::ModelConfig c;
  std::string model_type = "deepseek_v3";
  r.string("model_type", &model_type);
  r.integer("vocab_size", &c.vocab_size);
  r.integer("hidden_size", &c.dim);
  r.integer("intermediate_size", &c.inter_dim);
  r.integer("moe_intermediate_size", &c.moe_inter_dim);
  r.integer("num_hidden_layers", &c.n_layers);
  r.integer("first_k_dense_replace", &c.n_dense_layers);
  r.integer("num_attention_heads", &c.n_heads);
  int64_t kv_heads = c.n_heads;
  r.integer("num_key_value_heads", &kv_heads, /*required=*/false);
  r.integer("n_routed_experts", &c.n_routed_experts);
  c.n_shared_experts = 0;
  r.integer("n_shared_experts", &c.n_shared_experts, /*required=*/false);
  r.integer("num_experts_per_tok", &c.n_activated_experts);
  c.n_expert_groups = 1;
  c.n_limited_groups = 1;
  r.integer("n_group", &c.n_expert_groups, /*required=*/false);
  r.integer("topk_group", &c.n_limited_groups, /*required=*/false);
  std::string scoring = "softmax";  // the HF default of deepseek_v2
  r.string("scoring_func", &scoring, /*required=*/false);
  std::string topk_method = "greedy";
  r.string("topk_method", &topk_method, /*required=*/false);
  bool norm_topk_prob = false;
  r.boolean("norm_topk_prob", &norm_topk_prob, /*required=*/false);
  r.real("routed_scaling_factor", &c.route_scale, /*required=*/false);
  c.q_lora_rank = 0;
  r.integer("q_lora_rank", &c.q_lora_rank, /*required=*/false);
  r.integer("kv_lora_rank", &c.kv_lora_rank);
  r.integer("qk_nope_head_dim", &c.qk_nope_head_dim);
  r.integer("qk_rope_head_dim", &c.qk_rope_head_dim);
  r.integer("v_head_dim", &c.v_head_dim);
  r.integer("max_position_embeddings", &c.max_seq_len);
  r.real("rope_theta", &c.rope_theta, /*required=*/false);
  r.real("rms_norm_eps", &c.norm_eps, /*required=*/false);
  // Fathom applies norm_eps to every RMSNorm; HF's DeepseekV3 (and DeepSeek's inference code)
  // build q_a_layernorm and kv_a_layernorm with eps 1e-6 whatever rms_norm_eps says, so only
  // 1e-6 means the same model to both.
  if (c.norm_eps != kLatentNormEps) {
    r.fail("rms_norm_eps",
           absl::StrCat("must be 1e-06 (HF uses 1e-06 for q_a_layernorm and kv_a_layernorm "
                        "whatever rms_norm_eps says, fathom one eps for every norm), got ",
                        c.norm_eps));
  }
  r.real("initializer_range", &c.init_std, /*required=*/false);
  r.real("aux_loss_alpha", &c.balance_loss_alpha, /*required=*/false);
  c.mtp_depth = 0;
  r.integer("num_nextn_predict_layers", &c.mtp_depth, /*required=*/false);

  if (model_type != "deepseek_v3" && model_type != "deepseek_v2") {
    r.fail("model_type",
           absl::StrCat("expected \"deepseek_v3\" or \"deepseek_v2\", got \"", model_type, "\""));
  }
  if (kv_heads != c.n_heads) {
    r.fail("num_key_value_heads",
           absl::StrCat("must equal num_attention_heads (", c.n_heads, ") in MLA, got ", kv_heads));
  }
  std::string act = "silu";
  r.string("hidden_act", &act, /*required=*/false);
  if (act != "silu") r.fail("hidden_act", absl::StrCat("expected \"silu\", got \"", act, "\""));
  bool flag = false;
  r.boolean("tie_word_embeddings", &flag, /*required=*/false);
  if (flag) r.fail("tie_word_embeddings", "must be false (DeepSeek-V3's head is not tied)");
  flag = false;
  r.boolean("attention_bias", &flag, /*required=*/false);
  if (flag) r.fail("attention_bias", "must be false (MLA projections have no bias)");
  int64_t freq = 1;
  r.integer("moe_layer_freq", &freq, /*required=*/false);
  if (freq != 1) r.fail("moe_layer_freq", absl::StrCat("must be 1, got ", freq));

  if (scoring == "sigmoid") {
    c.score_func = model::ScoreFunc::kSigmoid;
    if (topk_method != "noaux_tc") {
      r.fail("topk_method", absl::StrCat("expected \"noaux_tc\" with scoring_func sigmoid, got \"",
                                         topk_method, "\""));
    }
    if (!norm_topk_prob) {
      r.fail("norm_topk_prob",
             "must be true with scoring_func sigmoid (fathom normalises sigmoid gate weights)");
    }
    if (c.n_activated_experts == 1) {
      r.fail("num_experts_per_tok",
             "must be more than 1 with sigmoid scoring (HF does not "
             "normalise a single expert's weight; fathom does)");
    }
  } else if (scoring == "softmax") {
    c.score_func = model::ScoreFunc::kSoftmax;
    if (topk_method != "greedy") {
      r.fail("topk_method",
             absl::StrCat("expected \"greedy\" with scoring_func softmax, got \"", topk_method,
                          "\" (fathom limits groups by their top-2 "
                          "sum, as noaux_tc does)"));
    }
    if (norm_topk_prob) {
      r.fail("norm_topk_prob",
             "must be false with scoring_func softmax (fathom does not "
             "normalise softmax gate weights)");
    }
    // Greedy routing ignores groups: only the trivial grouping means the same.
    c.n_expert_groups = 1;
    c.n_limited_groups = 1;
  } else {
    r.fail("scoring_func",
           absl::StrCat("expected \"sigmoid\" or \"softmax\", got \"", scoring, "\""));
  }

  if (std::optional<JsonConfigReader> rope = r.object("rope_scaling")) {
    JsonConfigReader& y = *rope;
    const std::string type = y.rope_type();
    if (type != "yarn") {
      y.fail("type", absl::StrCat("expected \"yarn\", got \"", type, "\""));
    }
    y.real("factor", &c.rope_factor);
    y.integer("original_max_position_embeddings", &c.original_seq_len);
    y.real("beta_fast", &c.beta_fast, /*required=*/false);
    y.real("beta_slow", &c.beta_slow, /*required=*/false);
    double mscale = 1.0, mscale_all_dim = 1.0;
    y.real("mscale", &mscale, /*required=*/false);
    y.real("mscale_all_dim", &mscale_all_dim, /*required=*/false);
    if (mscale != mscale_all_dim) {
      y.fail("mscale",
             absl::StrCat("must equal mscale_all_dim (", mscale_all_dim, "), got ", mscale,
                          ": fathom scales the softmax by (0.1 mscale ln(factor)"
                          " + 1)^2 and leaves cos/sin unscaled"));
    }
    c.mscale = mscale_all_dim;
    if (c.max_seq_len <= c.original_seq_len) {
      y.fail("original_max_position_embeddings",
             absl::StrCat("must be less than max_position_embeddings (", c.max_seq_len, "), got ",
                          c.original_seq_len,
                          ": fathom (like DeepSeek's reference) applies YaRN only beyond the "
                          "original length"));
    }
    FATHOM_RETURN_IF_ERROR(y.status());
  } else if (c.max_seq_len > c.original_seq_len) {
    c.original_seq_len = c.max_seq_len;  // no YaRN
  }

  if (r.has("quantization_config")) {
    const json& q = config["quantization_config"];
    const bool ok = q.is_object() && q.value("quant_method", "") == "fp8" &&
                    q.value("fmt", "e4m3") == "e4m3" && q.contains("weight_block_size") &&
                    q["weight_block_size"] == json({128, 128});
    if (!ok) {
      r.fail("quantization_config",
             absl::StrCat("expected fp8 / e4m3 with weight_block_size [128, 128], got ", q.dump()));
    }
  }
  FATHOM_RETURN_IF_ERROR(r.status());
  absl::Status valid = model::validate(c, "model");
  if (!valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(source),
                     ": the config maps to an invalid fathom model config (fathom key names):\n",
                     valid.message()));
  }
  return c;
}

json v3_config_to_hf(const model::ModelConfig& c) {
  const bool sigmoid = c.score_func == model::ScoreFunc::kSigmoid;
  json j;
  j["architectures"] = {"DeepseekV3ForCausalLM"};
  j["model_type"] = "deepseek_v3";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.dim;
  j["intermediate_size"] = c.inter_dim;
  j["moe_intermediate_size"] = c.moe_inter_dim;
  j["num_hidden_layers"] = c.n_layers;
  j["first_k_dense_replace"] = c.n_dense_layers;
  j["moe_layer_freq"] = 1;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_heads;
  j["n_routed_experts"] = c.n_routed_experts;
  j["n_shared_experts"] = c.n_shared_experts;
  j["num_experts_per_tok"] = c.n_activated_experts;
  j["n_group"] = c.n_expert_groups;
  j["topk_group"] = c.n_limited_groups;
  j["topk_method"] = sigmoid ? "noaux_tc" : "greedy";
  j["scoring_func"] = sigmoid ? "sigmoid" : "softmax";
  j["norm_topk_prob"] = sigmoid;
  j["routed_scaling_factor"] = c.route_scale;
  j["q_lora_rank"] = c.q_lora_rank > 0 ? json(c.q_lora_rank) : json(nullptr);
  j["kv_lora_rank"] = c.kv_lora_rank;
  j["qk_nope_head_dim"] = c.qk_nope_head_dim;
  j["qk_rope_head_dim"] = c.qk_rope_head_dim;
  j["v_head_dim"] = c.v_head_dim;
  j["max_position_embeddings"] = c.max_seq_len;
  j["rope_theta"] = c.rope_theta;
  j["rope_interleave"] = true;  // transformers' DeepseekV3: rotary dims stored interleaved
  if (c.uses_yarn()) {
    j["rope_scaling"] = {
        {"type", "yarn"},           {"rope_type", "yarn"},
        {"factor", c.rope_factor},  {"original_max_position_embeddings", c.original_seq_len},
        {"beta_fast", c.beta_fast}, {"beta_slow", c.beta_slow},
        {"mscale", c.mscale},       {"mscale_all_dim", c.mscale}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["rms_norm_eps"] = c.norm_eps;
  j["initializer_range"] = c.init_std;
  j["aux_loss_alpha"] = c.balance_loss_alpha;
  j["seq_aux"] = true;
  j["num_nextn_predict_layers"] = c.mtp_depth;
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["tie_word_embeddings"] = false;
  j["ep_size"] = 1;
  j["pretraining_tp"] = 1;
  j["use_cache"] = true;
  return j;
}

std::vector<HfMapEntry> v3_tensor_map(const model::ModelConfig& c) {
  std::vector<HfMapEntry> out;
  out.push_back(HfMapEntry{"model.embed_tokens.weight", "embed.weight", {c.vocab_size, c.dim}});
  for (int64_t i = 0; i < c.n_layers; ++i) {
    append_block(c, c.is_moe_layer(i), absl::StrCat("model.layers.", i), absl::StrCat("layers.", i),
                 out);
  }
  out.push_back(HfMapEntry{"model.norm.weight", "norm.weight", {c.dim}});
  out.push_back(HfMapEntry{"lm_head.weight", "head.weight", {c.vocab_size, c.dim}});
  for (int64_t k = 0; k < c.mtp_depth; ++k) {
    const std::string hf = absl::StrCat("model.layers.", c.n_layers + k);
    const std::string ours = absl::StrCat("mtp.", k);
    out.push_back(HfMapEntry{hf + ".enorm.weight", ours + ".enorm.weight", {c.dim}});
    out.push_back(HfMapEntry{hf + ".hnorm.weight", ours + ".hnorm.weight", {c.dim}});
    out.push_back(HfMapEntry{hf + ".eh_proj.weight", ours + ".eh_proj.weight", {c.dim, 2 * c.dim}});
    append_block(c, c.n_moe_layers() > 0, hf, ours + ".block", out);
    out.push_back(HfMapEntry{hf + ".shared_head.norm.weight", ours + ".norm.weight", {c.dim}});
    HfMapEntry embed{hf + ".embed_tokens.weight", "embed.weight", {c.vocab_size, c.dim}};
    embed.alias = true;
    out.push_back(embed);
    HfMapEntry head{hf + ".shared_head.head.weight", "head.weight", {c.vocab_size, c.dim}};
    head.alias = true;
    out.push_back(head);
  }
  return out;
}

absl::StatusOr<ConvertReport> import_hf_v3(const std::string& hf_dir, const std::string& out_dir,
                                           const HfImportOptions& options) {
  FATHOM_ASSIGN_OR_RETURN(json j, read_config_json(hf_dir));
  FATHOM_ASSIGN_OR_RETURN(model::ModelConfig config,
                          v3_config_from_hf(j, (fs::path(hf_dir) / "config.json").string()));
  return import_with_map(hf_dir, out_dir, v3_tensor_map(config), yaml_of(config), options,
                         "DeepSeek-V3");
}

absl::StatusOr<ConvertReport> export_hf_v3(const std::string& checkpoint_dir,
                                           const model::ModelConfig& config,
                                           const std::string& out_dir,
                                           const HfExportOptions& options) {
  if (config.score_func != model::ScoreFunc::kSigmoid) {
    // transformers' DeepseekV3 and DeepSeek's modeling code score with sigmoid whatever
    // scoring_func says: the export would load as another model.
    return absl::InvalidArgumentError(absl::StrCat(
        checkpoint_dir, ": model.score_func is softmax; the Hugging Face DeepSeek-V3 layout's "
        "router is sigmoid-only, so the export would load as another model (V2-style softmax "
        "models belong in HF's deepseek_v2 layout, which fathom does not write)"));
  }
  if (config.norm_eps != kLatentNormEps) {
    return absl::InvalidArgumentError(absl::StrCat(
        checkpoint_dir, ": model.norm_eps is ", config.norm_eps,
        "; the Hugging Face DeepSeek-V3 layout needs 1e-06 (HF uses 1e-06 for q_a_layernorm and "
        "kv_a_layernorm whatever rms_norm_eps says, so another eps would change the model)"));
  }
  return export_with_map(checkpoint_dir, out_dir, v3_tensor_map(config), v3_config_to_hf(config),
                         options, "DeepSeek-V3");
}

absl::Status load_v3_weights(const std::string& checkpoint_dir, model::DeepSeekV3& model) {
  return load_v3_weights(checkpoint_dir, model.parameters(), model.buffers());
}

absl::Status load_v3_weights(const std::string& checkpoint_dir, const model::ParameterList& params,
                             const model::BufferList& buffers) {
  FATHOM_ASSIGN_OR_RETURN(std::vector<std::string> names, list_checkpoint_tensors(checkpoint_dir));
  const std::set<std::string> have(names.begin(), names.end());
  std::vector<TensorShard> requests;
  struct Fp8Target {
    size_t data, scales;  // indices in requests
    Tensor* into;
  };
  std::vector<Fp8Target> fp8;
  auto add = [&](const std::string& name, Tensor& value, const Shape& global, int64_t row_offset) {
    if (!have.count(name + kScaleInvSuffix)) {
      requests.push_back(TensorShard{name, value, global, row_offset});
      return;
    }
    Shape rows = value.shape();
    fp8.push_back(Fp8Target{requests.size(), requests.size() + 1, &value});
    requests.push_back(
        TensorShard{name, Tensor::empty(rows, DType::kF8E4M3, value.device()), global, row_offset});
    requests.push_back(TensorShard{
        name + kScaleInvSuffix,
        Tensor::empty(fp8_scale_shape(rows, ScaleBlock::k128x128), DType::kF32, value.device()),
        fp8_scale_shape(global, ScaleBlock::k128x128), row_offset});
  };
  for (model::Parameter* p : params) add(p->name, p->value, p->global(), p->row_offset);
  for (model::Buffer* b : buffers) add(b->name, b->value, b->value.shape(), 0);
  FATHOM_RETURN_IF_ERROR(read_checkpoint(checkpoint_dir, absl::MakeSpan(requests), nullptr));
  for (const Fp8Target& t : fp8) {
    Fp8Tensor q{requests[t.data].tensor, requests[t.scales].tensor, ScaleBlock::k128x128};
    dequantize_fp8(q, *t.into);
  }
  for (model::Parameter* p : params) ++p->version;
  return absl::OkStatus();
}

}  // namespace fathom::trainer
