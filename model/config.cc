#include "model/config.h"

#include <charconv>
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/check.h"
#include "model/yaml_util.h"

namespace fathom::model {
namespace {

// One YAML field of ModelConfig; exactly one of the members is set. The order is the order of
// model_config_to_yaml().
struct Field {
  const char* key;
  int64_t ModelConfig::*integer = nullptr;
  double ModelConfig::*real = nullptr;
  bool is_score_func = false;
};

const std::vector<Field>& fields() {
  static const std::vector<Field> kFields = {
      {"vocab_size", &ModelConfig::vocab_size},
      {"dim", &ModelConfig::dim},
      {"inter_dim", &ModelConfig::inter_dim},
      {"moe_inter_dim", &ModelConfig::moe_inter_dim},
      {"n_layers", &ModelConfig::n_layers},
      {"n_dense_layers", &ModelConfig::n_dense_layers},
      {"n_heads", &ModelConfig::n_heads},
      {"n_routed_experts", &ModelConfig::n_routed_experts},
      {"n_shared_experts", &ModelConfig::n_shared_experts},
      {"n_activated_experts", &ModelConfig::n_activated_experts},
      {"n_expert_groups", &ModelConfig::n_expert_groups},
      {"n_limited_groups", &ModelConfig::n_limited_groups},
      {"score_func", nullptr, nullptr, true},
      {"route_scale", nullptr, &ModelConfig::route_scale},
      {"q_lora_rank", &ModelConfig::q_lora_rank},
      {"kv_lora_rank", &ModelConfig::kv_lora_rank},
      {"qk_nope_head_dim", &ModelConfig::qk_nope_head_dim},
      {"qk_rope_head_dim", &ModelConfig::qk_rope_head_dim},
      {"v_head_dim", &ModelConfig::v_head_dim},
      {"max_seq_len", &ModelConfig::max_seq_len},
      {"rope_theta", nullptr, &ModelConfig::rope_theta},
      {"original_seq_len", &ModelConfig::original_seq_len},
      {"rope_factor", nullptr, &ModelConfig::rope_factor},
      {"beta_fast", nullptr, &ModelConfig::beta_fast},
      {"beta_slow", nullptr, &ModelConfig::beta_slow},
      {"mscale", nullptr, &ModelConfig::mscale},
      {"mtp_depth", &ModelConfig::mtp_depth},
      {"mtp_lambda", nullptr, &ModelConfig::mtp_lambda},
      {"norm_eps", nullptr, &ModelConfig::norm_eps},
      {"init_std", nullptr, &ModelConfig::init_std},
      {"bias_update_speed", nullptr, &ModelConfig::bias_update_speed},
      {"balance_loss_alpha", nullptr, &ModelConfig::balance_loss_alpha},
  };
  return kFields;
}

const std::vector<std::string>& score_func_names() {
  static const std::vector<std::string> kNames = {"sigmoid", "softmax"};
  return kNames;
}

constexpr int64_t kMaxSize = (int64_t{1} << 31) - 1;
constexpr double kMaxParameters = 4.611686018427387904e18;  // 2^62

// Shortest text that reads back as the same double.
std::string format_real(double v) {
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof(buf), v);
  FATHOM_CHECK(result.ec == std::errc()) << "formatting " << v;
  return std::string(buf, result.ptr);
}

// A rough count of the parameters in double precision, only to refuse configs whose exact int64
// counts would overflow.
double approximate_parameters(const ModelConfig& c) {
  const double dim = static_cast<double>(c.dim);
  const double heads = static_cast<double>(c.n_heads);
  const double q = c.q_lora_rank > 0 ? dim * c.q_lora_rank + static_cast<double>(c.q_lora_rank) *
                                                                 heads * c.qk_head_dim()
                                     : dim * heads * c.qk_head_dim();
  const double attention =
      q + dim * (c.kv_lora_rank + c.qk_rope_head_dim) +
      static_cast<double>(c.kv_lora_rank) * heads * (c.qk_nope_head_dim + c.v_head_dim) +
      heads * c.v_head_dim * dim;
  const double dense = 3.0 * dim * c.inter_dim;
  const double moe = 3.0 * dim * c.moe_inter_dim * (c.n_routed_experts + c.n_shared_experts) +
                     dim * c.n_routed_experts;
  const double blocks = static_cast<double>(c.n_layers) + static_cast<double>(c.mtp_depth);
  return 2.0 * c.vocab_size * dim + blocks * (attention + std::max(dense, moe) + 3.0 * dim);
}

// Every violated constraint as an issue whose key is relative to the model section.
std::vector<ConfigIssue> find_violations(const ModelConfig& c) {
  std::vector<ConfigIssue> issues;
  auto fail = [&](const char* key, std::string message) {
    issues.push_back(ConfigIssue{key, std::move(message), 0});
  };
  // Returns whether the size is usable in the checks that relate it to others.
  auto size_in = [&](const char* key, int64_t v, int64_t lo, const char* lo_text) {
    if (v < lo) {
      fail(key, absl::StrCat("must be ", lo_text, ", got ", v));
      return false;
    }
    if (v > kMaxSize) {
      fail(key, absl::StrCat("must be at most ", kMaxSize, ", got ", v));
      return false;
    }
    return true;
  };
  auto positive = [&](const char* key, int64_t v) { return size_in(key, v, 1, "positive"); };
  auto non_negative = [&](const char* key, int64_t v) {
    return size_in(key, v, 0, "zero or positive");
  };

  bool sizes_ok = true;
  sizes_ok &= positive("vocab_size", c.vocab_size);
  sizes_ok &= positive("dim", c.dim);
  sizes_ok &= positive("inter_dim", c.inter_dim);
  sizes_ok &= positive("moe_inter_dim", c.moe_inter_dim);
  const bool layers_ok = positive("n_layers", c.n_layers);
  sizes_ok &= layers_ok;
  if (layers_ok && (c.n_dense_layers < 0 || c.n_dense_layers > c.n_layers)) {
    fail("n_dense_layers",
         absl::StrCat("must be between 0 and n_layers (", c.n_layers, "), got ", c.n_dense_layers));
  }
  sizes_ok &= positive("n_heads", c.n_heads);

  const bool routed_ok = positive("n_routed_experts", c.n_routed_experts);
  sizes_ok &= routed_ok;
  sizes_ok &= non_negative("n_shared_experts", c.n_shared_experts);
  const bool activated_ok = positive("n_activated_experts", c.n_activated_experts);
  const bool groups_ok = positive("n_expert_groups", c.n_expert_groups);
  const bool limited_ok = positive("n_limited_groups", c.n_limited_groups);
  if (routed_ok && activated_ok && c.n_activated_experts > c.n_routed_experts) {
    fail("n_activated_experts", absl::StrCat("top-k must be at most n_routed_experts (",
                                             c.n_routed_experts, "), got ", c.n_activated_experts));
  }
  bool grouping_ok = routed_ok && groups_ok;
  if (grouping_ok && c.n_routed_experts % c.n_expert_groups != 0) {
    fail("n_expert_groups", absl::StrCat("must divide n_routed_experts (", c.n_routed_experts,
                                         "), got ", c.n_expert_groups));
    grouping_ok = false;
  }
  if (grouping_ok && c.n_expert_groups > 1 && c.experts_per_group() < 2) {
    fail("n_expert_groups",
         absl::StrCat("leaves ", c.experts_per_group(),
                      " expert per group; a group's score is the sum of its "
                      "top-2 expert scores, "
                      "so each group needs at least 2 (n_routed_experts ",
                      c.n_routed_experts, ", n_expert_groups ", c.n_expert_groups, ")"));
  }
  if (groups_ok && limited_ok && c.n_limited_groups > c.n_expert_groups) {
    fail("n_limited_groups", absl::StrCat("must be at most n_expert_groups (", c.n_expert_groups,
                                          "), got ", c.n_limited_groups));
  } else if (grouping_ok && limited_ok && activated_ok &&
             c.n_activated_experts <= c.n_routed_experts) {
    const int64_t reachable = c.n_limited_groups * c.experts_per_group();
    if (c.n_activated_experts > reachable) {
      fail("n_activated_experts",
           absl::StrCat("top-k ", c.n_activated_experts, " is more than the ", reachable,
                        " experts a token can reach: n_limited_groups (", c.n_limited_groups,
                        ") x ", c.experts_per_group(), " experts per group (n_routed_experts ",
                        c.n_routed_experts, " / n_expert_groups ", c.n_expert_groups, ")"));
    }
  }
  if (!(c.route_scale > 0))
    fail("route_scale", absl::StrCat("must be positive, got ", c.route_scale));

  sizes_ok &= non_negative("q_lora_rank", c.q_lora_rank);
  sizes_ok &= positive("kv_lora_rank", c.kv_lora_rank);
  sizes_ok &= positive("qk_nope_head_dim", c.qk_nope_head_dim);
  const bool rope_ok = positive("qk_rope_head_dim", c.qk_rope_head_dim);
  sizes_ok &= rope_ok;
  if (rope_ok && c.qk_rope_head_dim % 2 != 0) {
    fail("qk_rope_head_dim",
         absl::StrCat("must be even (RoPE rotates pairs of dims), got ", c.qk_rope_head_dim));
  }
  sizes_ok &= positive("v_head_dim", c.v_head_dim);

  positive("max_seq_len", c.max_seq_len);
  if (!(c.rope_theta > 1)) {
    fail("rope_theta", absl::StrCat("must be greater than 1, got ", c.rope_theta));
  }
  positive("original_seq_len", c.original_seq_len);
  if (!(c.rope_factor >= 1)) {
    fail("rope_factor", absl::StrCat("must be at least 1, got ", c.rope_factor));
  }
  if (!(c.beta_slow > 0)) fail("beta_slow", absl::StrCat("must be positive, got ", c.beta_slow));
  if (!(c.beta_fast > c.beta_slow)) {
    fail("beta_fast",
         absl::StrCat("must be greater than beta_slow (", c.beta_slow, "), got ", c.beta_fast));
  }
  if (!(c.mscale >= 0)) fail("mscale", absl::StrCat("must be zero or positive, got ", c.mscale));

  sizes_ok &= non_negative("mtp_depth", c.mtp_depth);
  if (!(c.mtp_lambda >= 0)) {
    fail("mtp_lambda", absl::StrCat("must be zero or positive, got ", c.mtp_lambda));
  }
  if (!(c.norm_eps > 0)) fail("norm_eps", absl::StrCat("must be positive, got ", c.norm_eps));
  if (!(c.init_std > 0)) fail("init_std", absl::StrCat("must be positive, got ", c.init_std));
  if (!(c.bias_update_speed >= 0)) {
    fail("bias_update_speed", absl::StrCat("must be zero or positive, got ", c.bias_update_speed));
  }
  if (!(c.balance_loss_alpha >= 0)) {
    fail("balance_loss_alpha",
         absl::StrCat("must be zero or positive, got ", c.balance_loss_alpha));
  }

  if (sizes_ok) {
    const double params = approximate_parameters(c);
    if (params > kMaxParameters) {
      fail("", absl::StrCat("the model would have about ", params,
                            " parameters, more than 2^62; reduce its sizes"));
    }
  }
  return issues;
}

}  // namespace

std::string_view score_func_name(ScoreFunc f) {
  return f == ScoreFunc::kSigmoid ? "sigmoid" : "softmax";
}

double ModelConfig::softmax_scale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  if (uses_yarn()) {
    const double m = 0.1 * mscale * std::log(rope_factor) + 1.0;
    scale *= m * m;
  }
  return scale;
}

RopeConfig rope_config(const ModelConfig& config) {
  RopeConfig rope;
  rope.dim = config.qk_rope_head_dim;
  rope.base = static_cast<float>(config.rope_theta);
  rope.style = RopeStyle::kInterleaved;
  if (config.uses_yarn()) {
    YarnConfig yarn;
    yarn.factor = static_cast<float>(config.rope_factor);
    yarn.original_max_position = config.original_seq_len;
    yarn.beta_fast = static_cast<float>(config.beta_fast);
    yarn.beta_slow = static_cast<float>(config.beta_slow);
    yarn.mscale = static_cast<float>(config.mscale);
    rope.yarn = yarn;
  }
  return rope;
}

absl::Status validate(const ModelConfig& config, std::string_view path) {
  ConfigErrors errors;
  for (ConfigIssue& issue : find_violations(config)) {
    errors.add(issue.key.empty() ? std::string(path) : key_path(path, issue.key),
               std::move(issue.message));
  }
  return errors.to_status();
}

absl::StatusOr<ModelConfig> parse_model_config(const YAML::Node& node, std::string_view path,
                                               std::string_view source) {
  ConfigErrors errors{std::string(source)};
  ModelConfig config;
  MapReader reader(node, std::string(path), &errors);
  for (const Field& field : fields()) {
    if (field.integer != nullptr) {
      reader.read(field.key, &(config.*field.integer));
    } else if (field.real != nullptr) {
      reader.read(field.key, &(config.*field.real));
    } else {
      std::string name(score_func_name(config.score_func));
      reader.read_choice(field.key, score_func_names(), &name);
      config.score_func = name == "sigmoid" ? ScoreFunc::kSigmoid : ScoreFunc::kSoftmax;
    }
  }
  reader.finish();
  if (!errors.empty()) return errors.to_status();

  for (ConfigIssue& issue : find_violations(config)) {
    const int line = issue.key.empty() ? line_of(node) : reader.line(issue.key);
    errors.add(issue.key.empty() ? std::string(path) : key_path(path, issue.key),
               std::move(issue.message), line);
  }
  if (!errors.empty()) return errors.to_status();
  return config;
}

absl::StatusOr<ModelConfig> load_model_config(const std::string& file) {
  FATHOM_ASSIGN_OR_RETURN(const YAML::Node root, load_yaml_file(file));
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": expected a mapping with a 'model' section at the top level"));
  }
  const YAML::Node model = root["model"];
  if (!model.IsDefined()) {
    std::vector<std::string> keys;
    for (const auto& entry : root) {
      if (entry.first.IsScalar()) keys.push_back(entry.first.Scalar());
    }
    std::string message = absl::StrCat(file, ": no 'model' section");
    // Suggest the top-level key that looks most like "model".
    std::string best;
    int best_distance = 3;
    for (const std::string& key : keys) {
      const int d = edit_distance(key, "model");
      if (d < best_distance) {
        best_distance = d;
        best = key;
      }
    }
    if (!best.empty()) absl::StrAppend(&message, " (is '", best, "' meant to be 'model'?)");
    return absl::InvalidArgumentError(message);
  }
  return parse_model_config(model, "model", file);
}

std::string model_config_to_yaml(const ModelConfig& config) {
  std::string out = "model:\n";
  for (const Field& field : fields()) {
    absl::StrAppend(&out, "  ", field.key, ": ");
    if (field.integer != nullptr) {
      absl::StrAppend(&out, config.*field.integer);
    } else if (field.real != nullptr) {
      absl::StrAppend(&out, format_real(config.*field.real));
    } else {
      absl::StrAppend(&out, std::string(score_func_name(config.score_func)));
    }
    out += "\n";
  }
  return out;
}

}  // namespace fathom::model
