#include "model/dense_config.h"

#include <charconv>

#include "absl/strings/str_cat.h"
#include "kernels/check.h"
#include "model/yaml_util.h"

namespace fathom::model {
namespace {

constexpr int64_t kMaxSize = (int64_t{1} << 31) - 1;

const std::vector<std::string>& architecture_names() {
  static const std::vector<std::string> kNames = {"llama", "qwen2"};
  return kNames;
}
const std::vector<std::string>& rope_scaling_names() {
  static const std::vector<std::string> kNames = {"none", "llama3"};
  return kNames;
}
std::string_view rope_scaling_name(DenseRopeScaling s) {
  return s == DenseRopeScaling::kLlama3 ? "llama3" : "none";
}

std::string format_real(double v) {
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof(buf), v);
  FATHOM_CHECK(result.ec == std::errc()) << "formatting " << v;
  return std::string(buf, result.ptr);
}

std::vector<ConfigIssue> find_violations(const DenseConfig& c) {
  std::vector<ConfigIssue> issues;
  auto fail = [&](const char* key, std::string message) {
    issues.push_back(ConfigIssue{key, std::move(message), 0});
  };
  auto positive = [&](const char* key, int64_t v) {
    if (v < 1 || v > kMaxSize) {
      fail(key, absl::StrCat("must be between 1 and ", kMaxSize, ", got ", v));
      return false;
    }
    return true;
  };
  positive("vocab_size", c.vocab_size);
  positive("hidden_size", c.hidden_size);
  positive("intermediate_size", c.intermediate_size);
  positive("num_hidden_layers", c.num_hidden_layers);
  const bool heads_ok = positive("num_attention_heads", c.num_attention_heads);
  const bool kv_ok = positive("num_key_value_heads", c.num_key_value_heads);
  if (heads_ok && kv_ok && c.num_attention_heads % c.num_key_value_heads != 0) {
    fail("num_key_value_heads",
         absl::StrCat("must divide num_attention_heads (", c.num_attention_heads, "), got ",
                      c.num_key_value_heads));
  }
  if (positive("head_dim", c.head_dim) && c.head_dim % 2 != 0) {
    fail("head_dim", absl::StrCat("must be even (RoPE rotates pairs of dims), got ", c.head_dim));
  }
  positive("max_position_embeddings", c.max_position_embeddings);
  if (!(c.rope_theta > 1))
    fail("rope_theta", absl::StrCat("must be greater than 1, got ", c.rope_theta));
  if (!(c.rms_norm_eps > 0)) {
    fail("rms_norm_eps", absl::StrCat("must be positive, got ", c.rms_norm_eps));
  }
  if (!(c.initializer_range > 0)) {
    fail("initializer_range", absl::StrCat("must be positive, got ", c.initializer_range));
  }
  if (c.rope_scaling == DenseRopeScaling::kLlama3) {
    if (!(c.rope_factor >= 1)) {
      fail("rope_factor", absl::StrCat("must be at least 1, got ", c.rope_factor));
    }
    if (!(c.low_freq_factor > 0)) {
      fail("low_freq_factor", absl::StrCat("must be positive, got ", c.low_freq_factor));
    }
    if (!(c.high_freq_factor > c.low_freq_factor)) {
      fail("high_freq_factor", absl::StrCat("must be greater than low_freq_factor (",
                                            c.low_freq_factor, "), got ", c.high_freq_factor));
    }
    positive("original_max_position_embeddings", c.original_max_position_embeddings);
  }
  return issues;
}

}  // namespace

std::string_view dense_architecture_name(DenseArchitecture a) {
  return a == DenseArchitecture::kQwen2 ? "qwen2" : "llama";
}

absl::Status validate(const DenseConfig& config, std::string_view path) {
  ConfigErrors errors;
  for (ConfigIssue& issue : find_violations(config)) {
    errors.add(key_path(path, issue.key), std::move(issue.message));
  }
  return errors.to_status();
}

absl::StatusOr<DenseConfig> parse_dense_config(const YAML::Node& node, std::string_view path,
                                               std::string_view source) {
  ConfigErrors errors{std::string(source)};
  DenseConfig c;
  MapReader reader(node, std::string(path), &errors);
  std::string architecture(dense_architecture_name(c.architecture));
  reader.read_choice("architecture", architecture_names(), &architecture);
  c.architecture = architecture == "qwen2" ? DenseArchitecture::kQwen2 : DenseArchitecture::kLlama;
  reader.read("vocab_size", &c.vocab_size);
  reader.read("hidden_size", &c.hidden_size);
  reader.read("intermediate_size", &c.intermediate_size);
  reader.read("num_hidden_layers", &c.num_hidden_layers);
  reader.read("num_attention_heads", &c.num_attention_heads);
  reader.read("num_key_value_heads", &c.num_key_value_heads);
  reader.read("head_dim", &c.head_dim);
  reader.read("rope_theta", &c.rope_theta);
  reader.read("rms_norm_eps", &c.rms_norm_eps);
  reader.read("max_position_embeddings", &c.max_position_embeddings);
  reader.read("tie_word_embeddings", &c.tie_word_embeddings);
  reader.read("attention_bias", &c.attention_bias);
  reader.read("initializer_range", &c.initializer_range);
  std::string scaling(rope_scaling_name(c.rope_scaling));
  reader.read_choice("rope_scaling", rope_scaling_names(), &scaling);
  c.rope_scaling = scaling == "llama3" ? DenseRopeScaling::kLlama3 : DenseRopeScaling::kNone;
  reader.read("rope_factor", &c.rope_factor);
  reader.read("low_freq_factor", &c.low_freq_factor);
  reader.read("high_freq_factor", &c.high_freq_factor);
  reader.read("original_max_position_embeddings", &c.original_max_position_embeddings);
  reader.finish();
  if (!errors.empty()) return errors.to_status();
  for (ConfigIssue& issue : find_violations(c)) {
    errors.add(key_path(path, issue.key), std::move(issue.message), reader.line(issue.key));
  }
  if (!errors.empty()) return errors.to_status();
  return c;
}

absl::StatusOr<DenseConfig> load_dense_config(const std::string& file) {
  FATHOM_ASSIGN_OR_RETURN(const YAML::Node root, load_yaml_file(file));
  if (!root.IsMap() || !root["student"].IsDefined()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": expected a mapping with a 'student' section at the top level"));
  }
  return parse_dense_config(root["student"], "student", file);
}

std::string dense_config_to_yaml(const DenseConfig& c) {
  std::string out = "student:\n";
  auto add = [&](const char* key, const std::string& value) {
    absl::StrAppend(&out, "  ", key, ": ", value, "\n");
  };
  add("architecture", std::string(dense_architecture_name(c.architecture)));
  add("vocab_size", absl::StrCat(c.vocab_size));
  add("hidden_size", absl::StrCat(c.hidden_size));
  add("intermediate_size", absl::StrCat(c.intermediate_size));
  add("num_hidden_layers", absl::StrCat(c.num_hidden_layers));
  add("num_attention_heads", absl::StrCat(c.num_attention_heads));
  add("num_key_value_heads", absl::StrCat(c.num_key_value_heads));
  add("head_dim", absl::StrCat(c.head_dim));
  add("rope_theta", format_real(c.rope_theta));
  add("rms_norm_eps", format_real(c.rms_norm_eps));
  add("max_position_embeddings", absl::StrCat(c.max_position_embeddings));
  add("tie_word_embeddings", c.tie_word_embeddings ? "true" : "false");
  add("attention_bias", c.attention_bias ? "true" : "false");
  add("initializer_range", format_real(c.initializer_range));
  add("rope_scaling", std::string(rope_scaling_name(c.rope_scaling)));
  add("rope_factor", format_real(c.rope_factor));
  add("low_freq_factor", format_real(c.low_freq_factor));
  add("high_freq_factor", format_real(c.high_freq_factor));
  add("original_max_position_embeddings", absl::StrCat(c.original_max_position_embeddings));
  return out;
}

std::vector<DenseParameterInfo> dense_parameters(const DenseConfig& c) {
  const int64_t h = c.hidden_size;
  const int64_t q = c.num_attention_heads * c.head_dim;
  const int64_t kv = c.num_key_value_heads * c.head_dim;
  std::vector<DenseParameterInfo> out;
  out.push_back({"embed.weight", {c.vocab_size, h}, true});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("layers.", i, ".");
    out.push_back({p + "attn_norm.weight", {h}, false});
    out.push_back({p + "attn.wq.weight", {q, h}, true});
    if (c.attention_bias) out.push_back({p + "attn.wq.bias", {q}, false});
    out.push_back({p + "attn.wk.weight", {kv, h}, true});
    if (c.attention_bias) out.push_back({p + "attn.wk.bias", {kv}, false});
    out.push_back({p + "attn.wv.weight", {kv, h}, true});
    if (c.attention_bias) out.push_back({p + "attn.wv.bias", {kv}, false});
    out.push_back({p + "attn.wo.weight", {h, q}, true});
    out.push_back({p + "ffn_norm.weight", {h}, false});
    out.push_back({p + "ffn.w1.weight", {c.intermediate_size, h}, true});
    out.push_back({p + "ffn.w2.weight", {h, c.intermediate_size}, true});
    out.push_back({p + "ffn.w3.weight", {c.intermediate_size, h}, true});
  }
  out.push_back({"norm.weight", {h}, false});
  if (!c.tie_word_embeddings) out.push_back({"head.weight", {c.vocab_size, h}, true});
  return out;
}

int64_t dense_parameter_count(const DenseConfig& config) {
  int64_t n = 0;
  for (const DenseParameterInfo& p : dense_parameters(config)) {
    int64_t e = 1;
    for (int64_t d : p.shape) e *= d;
    n += e;
  }
  return n;
}

}  // namespace fathom::model
