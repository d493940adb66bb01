#include "model/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "data/tokenizer.h"
#include "model/yaml_util.h"
#include "tests/model/presets.h"

namespace fathom::model {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Writes `text` to a fresh file under the test temp dir and returns its path.
std::string write_file(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/fathom_config_test_" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  return path;
}

ModelConfig load_preset(const std::string& name) {
  const std::string path = testing::preset_path(name);
  EXPECT_FALSE(path.empty()) << "configs/models not found; set FATHOM_SOURCE_DIR to the repo root";
  absl::StatusOr<ModelConfig> config = load_model_config(path);
  EXPECT_TRUE(config.ok()) << path << ": " << config.status();
  return config.ok() ? *config : ModelConfig{};
}

absl::StatusOr<ModelConfig> parse_text(const std::string& text, const std::string& source = "") {
  YAML::Node node = YAML::Load(text);
  return parse_model_config(node["model"], "model", source);
}

size_t line_count(const absl::Status& status) {
  return std::vector<std::string>(absl::StrSplit(std::string(status.message()), '\n')).size();
}

// ---------------------------------------------------------------------------------------------
// yaml_util

TEST(EditDistance, CountsEditsAndSwaps) {
  EXPECT_EQ(edit_distance("n_layers", "n_layers"), 0);
  EXPECT_EQ(edit_distance("n_layer", "n_layers"), 1);   // deletion
  EXPECT_EQ(edit_distance("n_lxyers", "n_layers"), 1);  // substitution
  EXPECT_EQ(edit_distance("n_haeds", "n_heads"), 1);    // adjacent swap
  EXPECT_EQ(edit_distance("N_HEADS", "n_heads"), 0);    // case-insensitive
  EXPECT_EQ(edit_distance("", "dim"), 3);
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3);
}

TEST(ClosestMatch, SuggestsOnlyPlausibleTypos) {
  const std::vector<std::string> keys = {"dim", "n_layers", "n_dense_layers", "n_heads"};
  EXPECT_EQ(closest_match("n_layer", keys), "n_layers");
  EXPECT_EQ(closest_match("n_dense_layer", keys), "n_dense_layers");
  EXPECT_EQ(closest_match("dimm", keys), "dim");
  EXPECT_EQ(closest_match("learning_rate", keys), "");
  EXPECT_EQ(closest_match("xyz", keys), "");
  EXPECT_EQ(closest_match("dense_layers", keys),
            "n_dense_layers");                         // a word left out
  EXPECT_EQ(closest_match("layers_dense", keys), "");  // words out of order
  EXPECT_EQ(closest_match("layers", keys), "n_layers");
}

TEST(ConfigErrors, FormatsSourceLineAndKey) {
  ConfigErrors with_source("a.yaml");
  with_source.add("model.dim", "must be positive, got 0", 4);
  with_source.add("model.n_heads", "must be positive, got -1");
  with_source.add("model.n_layer", "unknown key", 2);
  const absl::Status status = with_source.to_status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  // File order; issues without a line last.
  EXPECT_EQ(status.message(),
            "a.yaml:2: model.n_layer: unknown key\n"
            "a.yaml:4: model.dim: must be positive, got 0\n"
            "a.yaml: model.n_heads: must be positive, got -1");

  ConfigErrors bare;
  EXPECT_TRUE(bare.to_status().ok());
  bare.add("model.dim", "bad", 7);
  EXPECT_EQ(bare.to_status().message(), "line 7: model.dim: bad");
}

TEST(MapReader, ReadsTypedFieldsAndKeepsDefaultsForAbsentKeys) {
  const YAML::Node node = YAML::Load("i: -12\nr: 1.5e-3\nb: yes\ns: hello\nc: beta\nhex: 0x10\n");
  ConfigErrors errors;
  MapReader reader(node, "run", &errors);
  int64_t i = 0, absent = 77, hex = 0;
  double r = 0;
  bool b = false;
  std::string s, c;
  reader.read("i", &i);
  reader.read("r", &r);
  reader.read("b", &b);
  reader.read("s", &s);
  reader.read_choice("c", {"alpha", "beta"}, &c);
  reader.read("absent", &absent);
  reader.read("hex", &hex);
  reader.finish();
  EXPECT_EQ(i, -12);
  EXPECT_DOUBLE_EQ(r, 1.5e-3);
  EXPECT_TRUE(b);
  EXPECT_EQ(s, "hello");
  EXPECT_EQ(c, "beta");
  EXPECT_EQ(absent, 77);
  // Only decimal integers are accepted.
  ASSERT_EQ(errors.issues().size(), 1u) << errors.to_status();
  EXPECT_EQ(errors.issues()[0].key, "run.hex");
  EXPECT_EQ(errors.issues()[0].line, 6);
  EXPECT_EQ(hex, 0);
  EXPECT_TRUE(reader.has("s"));
  EXPECT_FALSE(reader.has("absent"));
  EXPECT_EQ(reader.line("r"), 2);
}

// ---------------------------------------------------------------------------------------------
// Defaults and presets

TEST(ModelConfig, DefaultsAreDeepSeekModelArgs) {
  const ModelConfig c;
  // inference/model.py ModelArgs.
  EXPECT_EQ(c.max_seq_len, 4096 * 4);
  EXPECT_EQ(c.vocab_size, 102400);
  EXPECT_EQ(c.dim, 2048);
  EXPECT_EQ(c.inter_dim, 10944);
  EXPECT_EQ(c.moe_inter_dim, 1408);
  EXPECT_EQ(c.n_layers, 27);
  EXPECT_EQ(c.n_dense_layers, 1);
  EXPECT_EQ(c.n_heads, 16);
  EXPECT_EQ(c.n_routed_experts, 64);
  EXPECT_EQ(c.n_shared_experts, 2);
  EXPECT_EQ(c.n_activated_experts, 6);
  EXPECT_EQ(c.n_expert_groups, 1);
  EXPECT_EQ(c.n_limited_groups, 1);
  EXPECT_EQ(c.score_func, ScoreFunc::kSoftmax);
  EXPECT_EQ(c.route_scale, 1.0);
  EXPECT_EQ(c.q_lora_rank, 0);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.qk_nope_head_dim, 128);
  EXPECT_EQ(c.qk_rope_head_dim, 64);
  EXPECT_EQ(c.v_head_dim, 128);
  EXPECT_EQ(c.original_seq_len, 4096);
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_factor, 40.0);
  EXPECT_EQ(c.beta_fast, 32.0);
  EXPECT_EQ(c.beta_slow, 1.0);
  EXPECT_EQ(c.mscale, 1.0);
  // V3 report.
  EXPECT_EQ(c.norm_eps, 1e-6);
  EXPECT_EQ(c.init_std, 0.006);
  EXPECT_EQ(c.bias_update_speed, 0.001);
  EXPECT_EQ(c.balance_loss_alpha, 1e-4);
  EXPECT_EQ(c.mtp_lambda, 0.3);
  EXPECT_TRUE(validate(c).ok()) << validate(c);
}

TEST(ModelConfig, EmptyMappingGivesDefaults) {
  absl::StatusOr<ModelConfig> config = parse_text("model: {}\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(*config, ModelConfig{});
}

TEST(Presets, DeepSeekV3MatchesConfig671B) {
  const ModelConfig c = load_preset("deepseek-v3-671b");
  EXPECT_EQ(c.vocab_size, 129280);
  EXPECT_EQ(c.dim, 7168);
  EXPECT_EQ(c.inter_dim, 18432);
  EXPECT_EQ(c.moe_inter_dim, 2048);
  EXPECT_EQ(c.n_layers, 61);
  EXPECT_EQ(c.n_dense_layers, 3);
  EXPECT_EQ(c.n_heads, 128);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.n_shared_experts, 1);
  EXPECT_EQ(c.n_activated_experts, 8);
  EXPECT_EQ(c.n_expert_groups, 8);
  EXPECT_EQ(c.n_limited_groups, 4);
  EXPECT_EQ(c.score_func, ScoreFunc::kSigmoid);
  EXPECT_EQ(c.route_scale, 2.5);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.qk_nope_head_dim, 128);
  EXPECT_EQ(c.qk_rope_head_dim, 64);
  EXPECT_EQ(c.v_head_dim, 128);
  EXPECT_EQ(c.mtp_depth, 1);
  EXPECT_EQ(c.init_std, 0.006);
  EXPECT_TRUE(c.uses_yarn());
  EXPECT_EQ(c.rope_factor, 40.0);
  EXPECT_EQ(c.original_seq_len, 4096);
}

TEST(Presets, DeepSeekV2LiteMatchesConfig16B) {
  const ModelConfig c = load_preset("deepseek-v2-lite-16b");
  EXPECT_EQ(c.vocab_size, 102400);
  EXPECT_EQ(c.dim, 2048);
  EXPECT_EQ(c.inter_dim, 10944);
  EXPECT_EQ(c.moe_inter_dim, 1408);
  EXPECT_EQ(c.n_layers, 27);
  EXPECT_EQ(c.n_dense_layers, 1);
  EXPECT_EQ(c.n_heads, 16);
  EXPECT_EQ(c.q_lora_rank, 0);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.n_routed_experts, 64);
  EXPECT_EQ(c.n_shared_experts, 2);
  EXPECT_EQ(c.n_activated_experts, 6);
  EXPECT_EQ(c.n_expert_groups, 1);
  EXPECT_EQ(c.score_func, ScoreFunc::kSoftmax);
  EXPECT_EQ(c.route_scale, 1.0);
  EXPECT_EQ(c.mscale, 0.707);
  EXPECT_EQ(c.mtp_depth, 0);
}

// tiny and small exercise every V3 feature and use the data/ tokenizer's vocabulary.
TEST(Presets, TinyAndSmallAreV3Shaped) {
  for (const std::string name : {"tiny", "small"}) {
    SCOPED_TRACE(name);
    const ModelConfig c = load_preset(name);
    EXPECT_EQ(c.vocab_size, data::Tokenizer::kBuiltinVocabSize);
    EXPECT_GE(c.n_dense_layers, 1);
    EXPECT_LT(c.n_dense_layers, c.n_layers);
    EXPECT_GT(c.q_lora_rank, 0);
    EXPECT_EQ(c.score_func, ScoreFunc::kSigmoid);
    EXPECT_GT(c.n_expert_groups, 1);
    EXPECT_LT(c.n_limited_groups, c.n_expert_groups);
    EXPECT_GE(c.n_shared_experts, 1);
    EXPECT_GT(c.n_activated_experts, 1);
    EXPECT_NE(c.route_scale, 1.0);
    EXPECT_GE(c.mtp_depth, 1);
    EXPECT_FALSE(c.uses_yarn());
  }
  const ModelConfig tiny = load_preset("tiny");
  EXPECT_GE(tiny.dim, 64);
  EXPECT_LE(tiny.dim, 128);
  EXPECT_GE(tiny.n_layers, 2);
  EXPECT_LE(tiny.n_layers, 4);
  EXPECT_EQ(tiny.n_routed_experts, 8);
  EXPECT_EQ(tiny.n_expert_groups, 4);
  EXPECT_EQ(tiny.n_activated_experts, 2);
  EXPECT_EQ(tiny.n_limited_groups, 2);
  const ModelConfig small = load_preset("small");
  EXPECT_GE(small.dim, 256);
  EXPECT_LE(small.dim, 384);
  EXPECT_GE(small.n_routed_experts, 16);
  EXPECT_LE(small.n_routed_experts, 32);
}

TEST(ModelConfig, YamlRoundTripIsExact) {
  std::vector<ModelConfig> configs;
  for (const std::string name : {"tiny", "small", "deepseek-v2-lite-16b", "deepseek-v3-671b"}) {
    configs.push_back(load_preset(name));
  }
  ModelConfig odd;
  odd.route_scale = 0.1;
  odd.norm_eps = 1.2345678901234567e-7;
  odd.mscale = 0.707;
  odd.rope_theta = 1e6 / 3;
  configs.push_back(odd);
  for (const ModelConfig& c : configs) {
    const std::string text = model_config_to_yaml(c);
    absl::StatusOr<ModelConfig> back = parse_text(text);
    ASSERT_TRUE(back.ok()) << back.status() << "\n" << text;
    EXPECT_EQ(*back, c) << text;
  }
}

TEST(ModelConfig, RopeAndSoftmaxScaleFollowYarnRule) {
  const ModelConfig v3 = load_preset("deepseek-v3-671b");
  const RopeConfig rope = rope_config(v3);
  EXPECT_EQ(rope.dim, 64);
  EXPECT_EQ(rope.base, 10000.0f);
  EXPECT_EQ(rope.style, RopeStyle::kInterleaved);
  ASSERT_TRUE(rope.yarn.has_value());
  EXPECT_EQ(rope.yarn->factor, 40.0f);
  EXPECT_EQ(rope.yarn->original_max_position, 4096);
  EXPECT_EQ(rope.yarn->beta_fast, 32.0f);
  EXPECT_EQ(rope.yarn->beta_slow, 1.0f);
  EXPECT_EQ(rope.yarn->mscale, 1.0f);
  const double m = 0.1 * std::log(40.0) + 1.0;
  EXPECT_NEAR(v3.softmax_scale(), m * m / std::sqrt(192.0), 1e-15);

  // YaRN only when max_seq_len exceeds original_seq_len.
  ModelConfig c = v3;
  c.max_seq_len = c.original_seq_len;
  EXPECT_FALSE(c.uses_yarn());
  EXPECT_FALSE(rope_config(c).yarn.has_value());
  EXPECT_NEAR(c.softmax_scale(), 1.0 / std::sqrt(192.0), 1e-15);
}

// ---------------------------------------------------------------------------------------------
// Files

TEST(LoadModelConfig, MissingFileIsNotFoundNamingThePath) {
  const std::string path = ::testing::TempDir() + "/fathom_config_test_does_not_exist.yaml";
  absl::StatusOr<ModelConfig> config = load_model_config(path);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(config.status().message(), HasSubstr(path));
}

TEST(LoadModelConfig, InvalidYamlNamesFileAndLine) {
  const std::string path = write_file("invalid.yaml", "model:\n  dim: 64\n  n_heads: [4, 8\n");
  absl::StatusOr<ModelConfig> config = load_model_config(path);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(), HasSubstr(path + ":"));
  EXPECT_THAT(config.status().message(), HasSubstr("invalid YAML"));

  const std::string indent = write_file("indent.yaml", "model:\n  dim: 64\n n_heads: 4\n");
  config = load_model_config(indent);
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr(indent + ":3:"));
  EXPECT_THAT(config.status().message(), HasSubstr("invalid YAML"));
}

TEST(LoadModelConfig, EmptyFileNonMapAndMissingSection) {
  const std::string empty = write_file("empty.yaml", "# nothing here\n");
  absl::StatusOr<ModelConfig> config = load_model_config(empty);
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr(empty + ": the file is empty"));

  const std::string list = write_file("list.yaml", "- 1\n- 2\n");
  config = load_model_config(list);
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr("'model' section"));

  const std::string typo = write_file("typo.yaml", "modle:\n  dim: 64\n");
  config = load_model_config(typo);
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr(typo + ": no 'model' section"));
  EXPECT_THAT(config.status().message(), HasSubstr("'modle'"));

  const std::string scalar = write_file("scalar.yaml", "model: 5\n");
  config = load_model_config(scalar);
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(),
              HasSubstr(scalar + ":1: model: expected a mapping of keys to values, got '5'"));
}

TEST(LoadModelConfig, RunConfigsMayHaveOtherSections) {
  const std::string path =
      write_file("run.yaml", "model:\n  dim: 64\n  n_heads: 2\ntrainer:\n  steps: 10\n");
  absl::StatusOr<ModelConfig> config = load_model_config(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->dim, 64);
  EXPECT_EQ(config->n_heads, 2);
}

// ---------------------------------------------------------------------------------------------
// Types and keys

TEST(ParseModelConfig, WrongTypesNameKeyPathLineAndValue) {
  const std::string path = write_file("types.yaml",
                                      "model:\n"                 // 1
                                      "  dim: 64\n"              // 2
                                      "  n_heads: abc\n"         // 3
                                      "  n_layers: 2.5\n"        // 4
                                      "  route_scale: fast\n"    // 5
                                      "  norm_eps: .nan\n"       // 6
                                      "  inter_dim: [1, 2]\n"    // 7
                                      "  v_head_dim:\n"          // 8
                                      "  rope_factor: {a: 1}\n"  // 9
                                      "  vocab_size: 1e3\n");    // 10
  absl::StatusOr<ModelConfig> config = load_model_config(path);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(config.status().message());
  EXPECT_THAT(message, HasSubstr(path + ":3: model.n_heads: expected an integer, got 'abc'"));
  EXPECT_THAT(message, HasSubstr(path + ":4: model.n_layers: expected an integer, got '2.5'"));
  EXPECT_THAT(message,
              HasSubstr(path + ":5: model.route_scale: expected a finite number, got 'fast'"));
  EXPECT_THAT(message,
              HasSubstr(path + ":6: model.norm_eps: expected a finite number, got '.nan'"));
  EXPECT_THAT(message, HasSubstr(path + ":7: model.inter_dim: expected an integer, got a list"));
  EXPECT_THAT(message,
              HasSubstr(path + ":8: model.v_head_dim: expected an integer, got nothing (null)"));
  EXPECT_THAT(message,
              HasSubstr(path + ":9: model.rope_factor: expected a finite number, got a mapping"));
  EXPECT_THAT(message, HasSubstr(path + ":10: model.vocab_size: expected an integer, got '1e3'"));
  EXPECT_EQ(line_count(config.status()), 8u) << message;
}

TEST(ParseModelConfig, UnknownKeysSuggestTheClosestField) {
  absl::StatusOr<ModelConfig> config = parse_text(
      "model:\n"
      "  n_layer: 4\n"
      "  qk_rope_dim: 64\n"
      "  learning_rate: 0.1\n",
      "x.yaml");
  ASSERT_FALSE(config.ok());
  const std::string message(config.status().message());
  EXPECT_THAT(message,
              HasSubstr("x.yaml:2: model.n_layer: unknown key (did you mean 'n_layers'?)"));
  EXPECT_THAT(message, HasSubstr("x.yaml:3: model.qk_rope_dim: unknown key (did you mean "
                                 "'qk_rope_head_dim'?)"));
  EXPECT_THAT(message, HasSubstr("x.yaml:4: model.learning_rate: unknown key"));
  EXPECT_THAT(message, Not(HasSubstr("learning_rate: unknown key (did you mean")));
  EXPECT_EQ(line_count(config.status()), 3u) << message;
}

TEST(ParseModelConfig, ScoreFuncMustBeSigmoidOrSoftmax) {
  absl::StatusOr<ModelConfig> config = parse_text("model:\n  score_func: sigmod\n");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(),
              HasSubstr("line 2: model.score_func: expected one of 'sigmoid', 'softmax', got "
                        "'sigmod' (did you mean 'sigmoid'?)"));
  config = parse_text("model:\n  score_func: relu\n");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr("got 'relu'"));
  EXPECT_THAT(config.status().message(), Not(HasSubstr("did you mean")));
  config = parse_text("model:\n  score_func: softmax\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->score_func, ScoreFunc::kSoftmax);
}

TEST(ParseModelConfig, DuplicateKeysAreErrors) {
  absl::StatusOr<ModelConfig> config = parse_text("model:\n  dim: 64\n  dim: 128\n");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr("line 3: model.dim: duplicate key"));
}

// ---------------------------------------------------------------------------------------------
// Validation

struct ViolationCase {
  const char* name;
  std::function<void(ModelConfig&)> mutate;
  const char* expected;  // a substring of the message
};

// A valid V3-shaped base for the cases: 8 experts in 4 groups, top-2 within 2 groups.
ModelConfig base_config() {
  ModelConfig c;
  c.vocab_size = 263;
  c.dim = 64;
  c.inter_dim = 128;
  c.moe_inter_dim = 32;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_routed_experts = 8;
  c.n_shared_experts = 1;
  c.n_activated_experts = 2;
  c.n_expert_groups = 4;
  c.n_limited_groups = 2;
  c.score_func = ScoreFunc::kSigmoid;
  c.q_lora_rank = 32;
  c.kv_lora_rank = 32;
  c.qk_nope_head_dim = 16;
  c.qk_rope_head_dim = 8;
  c.v_head_dim = 16;
  c.max_seq_len = 256;
  c.mtp_depth = 1;
  return c;
}

TEST(Validate, EachConstraintNamesItsKey) {
  const std::vector<ViolationCase> cases = {
      {"dim", [](ModelConfig& c) { c.dim = 0; }, "model.dim: must be positive, got 0"},
      {"vocab", [](ModelConfig& c) { c.vocab_size = -5; }, "model.vocab_size: must be positive"},
      {"n_layers", [](ModelConfig& c) { c.n_layers = 0; }, "model.n_layers: must be positive"},
      {"n_heads", [](ModelConfig& c) { c.n_heads = 0; }, "model.n_heads: must be positive"},
      {"inter_dim", [](ModelConfig& c) { c.inter_dim = 0; }, "model.inter_dim: must be positive"},
      {"moe_inter_dim", [](ModelConfig& c) { c.moe_inter_dim = -1; },
       "model.moe_inter_dim: must be positive"},
      {"huge", [](ModelConfig& c) { c.dim = int64_t{1} << 40; },
       "model.dim: must be at most 2147483647"},
      {"too many params",
       [](ModelConfig& c) {
         c.dim = 1 << 20;
         c.moe_inter_dim = 1 << 20;
         c.n_routed_experts = 1 << 20;
         c.n_layers = 1 << 10;
       },
       "more than 2^62"},
      {"dense > layers", [](ModelConfig& c) { c.n_dense_layers = 4; },
       "model.n_dense_layers: must be between 0 and n_layers (3), got 4"},
      {"dense < 0", [](ModelConfig& c) { c.n_dense_layers = -1; },
       "model.n_dense_layers: must be between 0 and n_layers (3), got -1"},
      {"q_lora_rank", [](ModelConfig& c) { c.q_lora_rank = -1; },
       "model.q_lora_rank: must be zero or positive"},
      {"kv_lora_rank", [](ModelConfig& c) { c.kv_lora_rank = 0; },
       "model.kv_lora_rank: must be positive"},
      {"nope", [](ModelConfig& c) { c.qk_nope_head_dim = 0; },
       "model.qk_nope_head_dim: must be positive"},
      {"v_head_dim", [](ModelConfig& c) { c.v_head_dim = 0; },
       "model.v_head_dim: must be positive"},
      {"rope odd", [](ModelConfig& c) { c.qk_rope_head_dim = 7; },
       "model.qk_rope_head_dim: must be even (RoPE rotates pairs of dims), got "
       "7"},
      {"routed", [](ModelConfig& c) { c.n_routed_experts = 0; },
       "model.n_routed_experts: must be positive"},
      {"shared < 0", [](ModelConfig& c) { c.n_shared_experts = -1; },
       "model.n_shared_experts: must be zero or positive"},
      {"top-k 0", [](ModelConfig& c) { c.n_activated_experts = 0; },
       "model.n_activated_experts: must be positive"},
      {"top-k > experts",
       [](ModelConfig& c) {
         c.n_expert_groups = 1;
         c.n_limited_groups = 1;
         c.n_activated_experts = 9;
       },
       "model.n_activated_experts: top-k must be at most n_routed_experts (8), "
       "got 9"},
      {"groups do not divide", [](ModelConfig& c) { c.n_expert_groups = 3; },
       "model.n_expert_groups: must divide n_routed_experts (8), got 3"},
      {"one expert per group",
       [](ModelConfig& c) {
         c.n_expert_groups = 8;
         c.n_limited_groups = 4;
       },
       "model.n_expert_groups: leaves 1 expert per group"},
      {"limited > groups", [](ModelConfig& c) { c.n_limited_groups = 5; },
       "model.n_limited_groups: must be at most n_expert_groups (4), got 5"},
      {"limited 0", [](ModelConfig& c) { c.n_limited_groups = 0; },
       "model.n_limited_groups: must be positive"},
      {"top-k beyond allowed groups",
       [](ModelConfig& c) {
         c.n_limited_groups = 1;
         c.n_activated_experts = 3;
       },
       "model.n_activated_experts: top-k 3 is more than the 2 experts a token "
       "can reach: "
       "n_limited_groups (1) x 2 experts per group"},
      {"route_scale", [](ModelConfig& c) { c.route_scale = 0; },
       "model.route_scale: must be positive, got 0"},
      {"max_seq_len", [](ModelConfig& c) { c.max_seq_len = 0; },
       "model.max_seq_len: must be positive"},
      {"original_seq_len", [](ModelConfig& c) { c.original_seq_len = 0; },
       "model.original_seq_len: must be positive"},
      {"rope_theta", [](ModelConfig& c) { c.rope_theta = 1; },
       "model.rope_theta: must be greater than 1, got 1"},
      {"rope_factor", [](ModelConfig& c) { c.rope_factor = 0.5; },
       "model.rope_factor: must be at least 1, got 0.5"},
      {"beta order",
       [](ModelConfig& c) {
         c.beta_fast = 1;
         c.beta_slow = 2;
       },
       "model.beta_fast: must be greater than beta_slow (2), got 1"},
      {"beta_slow", [](ModelConfig& c) { c.beta_slow = 0; }, "model.beta_slow: must be positive"},
      {"mscale", [](ModelConfig& c) { c.mscale = -1; }, "model.mscale: must be zero or positive"},
      {"mtp_depth", [](ModelConfig& c) { c.mtp_depth = -1; },
       "model.mtp_depth: must be zero or positive"},
      {"mtp_lambda", [](ModelConfig& c) { c.mtp_lambda = -0.1; },
       "model.mtp_lambda: must be zero or positive"},
      {"norm_eps", [](ModelConfig& c) { c.norm_eps = 0; }, "model.norm_eps: must be positive"},
      {"init_std", [](ModelConfig& c) { c.init_std = -0.02; }, "model.init_std: must be positive"},
      {"gamma", [](ModelConfig& c) { c.bias_update_speed = -1e-3; },
       "model.bias_update_speed: must be zero or positive"},
      {"alpha", [](ModelConfig& c) { c.balance_loss_alpha = -1; },
       "model.balance_loss_alpha: must be zero or positive"},
      {"nan", [](ModelConfig& c) { c.route_scale = std::nan(""); },
       "model.route_scale: must be positive"},
  };
  ASSERT_TRUE(validate(base_config()).ok()) << validate(base_config());
  for (const ViolationCase& test : cases) {
    ModelConfig c = base_config();
    test.mutate(c);
    const absl::Status status = validate(c);
    ASSERT_FALSE(status.ok()) << test.name;
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << test.name;
    EXPECT_THAT(status.message(), HasSubstr(test.expected)) << test.name;
    // Each mutation breaks exactly one rule, so exactly one line is reported.
    EXPECT_EQ(line_count(status), 1u) << test.name << ": " << status;
  }
}

TEST(Validate, AllowsEdgeValues) {
  ModelConfig c = base_config();
  c.q_lora_rank = 0;       // no query compression
  c.n_shared_experts = 0;  // no shared expert
  c.mtp_depth = 0;
  c.n_dense_layers = c.n_layers;  // a dense model
  c.n_limited_groups = c.n_expert_groups;
  c.n_activated_experts = c.n_routed_experts;
  c.bias_update_speed = 0;
  c.balance_loss_alpha = 0;
  c.mtp_lambda = 0;
  c.rope_factor = 1;
  EXPECT_TRUE(validate(c).ok()) << validate(c);
  c = base_config();
  c.n_expert_groups = 1;  // one group of one expert is fine: no group scores
  c.n_limited_groups = 1;
  c.n_routed_experts = 1;
  c.n_activated_experts = 1;
  EXPECT_TRUE(validate(c).ok()) << validate(c);
}

TEST(Validate, ReportsEveryErrorAtOnce) {
  ModelConfig c = base_config();
  c.dim = 0;
  c.qk_rope_head_dim = 9;
  c.n_expert_groups = 3;
  c.n_dense_layers = 7;
  c.norm_eps = 0;
  const absl::Status status = validate(c, "run.model");
  ASSERT_FALSE(status.ok());
  const std::string message(status.message());
  EXPECT_THAT(message, HasSubstr("run.model.dim: must be positive"));
  EXPECT_THAT(message, HasSubstr("run.model.qk_rope_head_dim: must be even"));
  EXPECT_THAT(message, HasSubstr("run.model.n_expert_groups: must divide"));
  EXPECT_THAT(message, HasSubstr("run.model.n_dense_layers: must be between 0 and n_layers"));
  EXPECT_THAT(message, HasSubstr("run.model.norm_eps: must be positive"));
  EXPECT_EQ(line_count(status), 5u) << message;
}

TEST(ParseModelConfig, ValidationErrorsCarryTheLineOfTheirKey) {
  const std::string path = write_file("topk.yaml",
                                      "# top-k larger than the experts in the allowed groups\n"
                                      "model:\n"
                                      "  n_routed_experts: 16\n"
                                      "  n_expert_groups: 4\n"
                                      "  n_limited_groups: 1\n"
                                      "  n_activated_experts: 6\n"
                                      "  qk_rope_head_dim: 33\n");
  absl::StatusOr<ModelConfig> config = load_model_config(path);
  ASSERT_FALSE(config.ok());
  const std::string message(config.status().message());
  EXPECT_THAT(message, HasSubstr(path + ":6: model.n_activated_experts: top-k 6 is more than the 4 "
                                        "experts a token can reach"));
  EXPECT_THAT(message, HasSubstr(path + ":7: model.qk_rope_head_dim: must be even"));
  EXPECT_EQ(line_count(config.status()), 2u) << message;

  // A violation of a key left at its default has no line but still names the file and key.
  const std::string dense =
      write_file("dense.yaml", "model:\n  n_layers: 1\n  n_dense_layers: 2\n");
  config = load_model_config(dense);
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr(dense + ":3: model.n_dense_layers"));
  const std::string groups = write_file("groups.yaml",
                                        "model:\n  n_routed_experts: 6\n"
                                        "  n_expert_groups: 4\n");
  config = load_model_config(groups);
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(),
              HasSubstr(groups + ":3: model.n_expert_groups: must divide n_routed_experts (6)"));
}

}  // namespace
}  // namespace fathom::model
