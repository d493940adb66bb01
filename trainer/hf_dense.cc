#include "trainer/hf_dense.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "data/safetensors.h"
#include "kernels/check.h"

namespace fathom::trainer {
namespace {

namespace fs = std::filesystem;
using model::DenseArchitecture;
using model::DenseConfig;
using nlohmann::json;

}  // namespace

absl::StatusOr<DenseConfig> dense_config_from_hf(const json& config, std::string_view source) {
  JsonConfigReader r(config, std::string(source));
  DenseConfig c;
  std::string type;
  r.string("model_type", &type);
  if (type == "qwen2") {
    c.architecture = DenseArchitecture::kQwen2;
    c.attention_bias = true;
  } else if (type != "llama") {
    r.fail("model_type", absl::StrCat("expected \"llama\" or \"qwen2\", got \"", type, "\""));
  }
  r.integer("vocab_size", &c.vocab_size);
  r.integer("hidden_size", &c.hidden_size);
  r.integer("intermediate_size", &c.intermediate_size);
  r.integer("num_hidden_layers", &c.num_hidden_layers);
  r.integer("num_attention_heads", &c.num_attention_heads);
  c.num_key_value_heads = c.num_attention_heads;
  r.integer("num_key_value_heads", &c.num_key_value_heads, /*required=*/false);
  const int64_t default_head_dim =
      c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0;
  c.head_dim = default_head_dim;
  r.integer("head_dim", &c.head_dim, /*required=*/false);
  r.real("rope_theta", &c.rope_theta, /*required=*/false);
  r.real("rms_norm_eps", &c.rms_norm_eps, /*required=*/false);
  r.integer("max_position_embeddings", &c.max_position_embeddings);
  r.boolean("tie_word_embeddings", &c.tie_word_embeddings, /*required=*/false);
  r.real("initializer_range", &c.initializer_range, /*required=*/false);
  if (c.architecture == DenseArchitecture::kLlama) {
    r.boolean("attention_bias", &c.attention_bias, /*required=*/false);
  } else if (c.head_dim != default_head_dim) {
    r.fail("head_dim", absl::StrCat("must be hidden_size / num_attention_heads (", default_head_dim,
                                    ") for qwen2, got ", c.head_dim));
  }
  bool flag = false;
  r.boolean("mlp_bias", &flag, /*required=*/false);
  if (flag) r.fail("mlp_bias", "must be false (the student's FFN has no biases)");
  flag = false;
  r.boolean("use_sliding_window", &flag, /*required=*/false);
  if (flag) r.fail("use_sliding_window", "must be false (the student attends to every position)");
  std::string act = "silu";
  r.string("hidden_act", &act, /*required=*/false);
  if (act != "silu") r.fail("hidden_act", absl::StrCat("expected \"silu\", got \"", act, "\""));
  if (std::optional<JsonConfigReader> rope = r.object("rope_scaling")) {
    JsonConfigReader& y = *rope;
    const std::string rope_type = y.rope_type();
    if (rope_type != "llama3") {
      y.fail("rope_type", absl::StrCat("expected \"llama3\" (the only scaling the student "
                                       "implements), got \"",
                                       rope_type, "\""));
    }
    c.rope_scaling = model::DenseRopeScaling::kLlama3;
    y.real("factor", &c.rope_factor);
    y.real("low_freq_factor", &c.low_freq_factor);
    y.real("high_freq_factor", &c.high_freq_factor);
    y.integer("original_max_position_embeddings", &c.original_max_position_embeddings);
    FATHOM_RETURN_IF_ERROR(y.status());
  }
  FATHOM_RETURN_IF_ERROR(r.status());
  absl::Status valid = model::validate(c, "student");
  if (!valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        std::string(source), ": the config maps to an invalid student config:\n", valid.message()));
  }
  return c;
}

absl::StatusOr<json> dense_config_to_hf(const DenseConfig& c) {
  const bool qwen = c.architecture == DenseArchitecture::kQwen2;
  if (qwen && !c.attention_bias) {
    return absl::InvalidArgumentError(
        "student.attention_bias: qwen2 always has q/k/v biases; use architecture llama");
  }
  if (qwen && c.head_dim * c.num_attention_heads != c.hidden_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "student.head_dim: qwen2 requires head_dim = hidden_size / num_attention_heads (",
        c.hidden_size / c.num_attention_heads, "), got ", c.head_dim));
  }
  if (qwen && c.rope_scaling != model::DenseRopeScaling::kNone) {
    return absl::InvalidArgumentError(
        "student.rope_scaling: llama3 scaling needs architecture llama");
  }
  json j;
  j["architectures"] = {qwen ? "Qwen2ForCausalLM" : "LlamaForCausalLM"};
  j["model_type"] = qwen ? "qwen2" : "llama";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["initializer_range"] = c.initializer_range;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["attention_dropout"] = 0.0;
  j["use_cache"] = true;
  if (qwen) {
    j["use_sliding_window"] = false;
    j["sliding_window"] = c.max_position_embeddings;
    j["max_window_layers"] = c.num_hidden_layers;
  } else {
    j["attention_bias"] = c.attention_bias;
    j["mlp_bias"] = false;
    j["pretraining_tp"] = 1;
  }
  if (c.rope_scaling == model::DenseRopeScaling::kLlama3) {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope_factor},
                         {"low_freq_factor", c.low_freq_factor},
                         {"high_freq_factor", c.high_freq_factor},
                         {"original_max_position_embeddings", c.original_max_position_embeddings}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  return j;
}

std::vector<HfMapEntry> dense_tensor_map(const DenseConfig& c, bool lm_head_copy) {
  std::vector<HfMapEntry> out;
  for (const model::DenseParameterInfo& p : model::dense_parameters(c)) {
    std::string hf;
    if (p.name == "embed.weight") {
      hf = "model.embed_tokens.weight";
    } else if (p.name == "norm.weight") {
      hf = "model.norm.weight";
    } else if (p.name == "head.weight") {
      hf = "lm_head.weight";
    } else {
      // "layers.N.<rest>"
      const size_t dot = p.name.find('.', 7);
      const std::string layer = p.name.substr(0, dot);
      const std::string rest = p.name.substr(dot + 1);
      static const std::pair<const char*, const char*> kNames[] = {
          {"attn_norm.weight", "input_layernorm.weight"},
          {"attn.wq.weight", "self_attn.q_proj.weight"},
          {"attn.wq.bias", "self_attn.q_proj.bias"},
          {"attn.wk.weight", "self_attn.k_proj.weight"},
          {"attn.wk.bias", "self_attn.k_proj.bias"},
          {"attn.wv.weight", "self_attn.v_proj.weight"},
          {"attn.wv.bias", "self_attn.v_proj.bias"},
          {"attn.wo.weight", "self_attn.o_proj.weight"},
          {"ffn_norm.weight", "post_attention_layernorm.weight"},
          {"ffn.w1.weight", "mlp.gate_proj.weight"},
          {"ffn.w2.weight", "mlp.down_proj.weight"},
          {"ffn.w3.weight", "mlp.up_proj.weight"},
      };
      for (const auto& [ours, theirs] : kNames) {
        if (rest == ours) hf = absl::StrCat("model.", layer, ".", theirs);
      }
      FATHOM_CHECK(!hf.empty()) << "dense_tensor_map: no HF name for " << p.name;
    }
    out.push_back(HfMapEntry{hf, p.name, p.shape});
  }
  if (c.tie_word_embeddings && lm_head_copy) {
    HfMapEntry head{"lm_head.weight", "embed.weight", {c.vocab_size, c.hidden_size}};
    head.alias = true;
    out.push_back(head);
  }
  return out;
}

absl::StatusOr<ConvertReport> import_hf_dense(const std::string& hf_dir, const std::string& out_dir,
                                              const HfImportOptions& options) {
  FATHOM_ASSIGN_OR_RETURN(json j, read_config_json(hf_dir));
  FATHOM_ASSIGN_OR_RETURN(DenseConfig config,
                          dense_config_from_hf(j, (fs::path(hf_dir) / "config.json").string()));
  bool lm_head_copy = false;
  if (config.tie_word_embeddings) {
    FATHOM_ASSIGN_OR_RETURN(data::SafetensorsDir st, data::SafetensorsDir::open(hf_dir));
    lm_head_copy = st.find("lm_head.weight") != nullptr;
  }
  return import_with_map(hf_dir, out_dir, dense_tensor_map(config, lm_head_copy),
                         model::dense_config_to_yaml(config), options,
                         std::string(model::dense_architecture_name(config.architecture)));
}

absl::StatusOr<ConvertReport> export_hf_dense(const std::string& checkpoint_dir,
                                              const DenseConfig& config, const std::string& out_dir,
                                              const HfExportOptions& options) {
  FATHOM_ASSIGN_OR_RETURN(json j, dense_config_to_hf(config));
  return export_with_map(checkpoint_dir, out_dir, dense_tensor_map(config), std::move(j), options,
                         std::string(model::dense_architecture_name(config.architecture)));
}

}  // namespace fathom::trainer
