// Tests for trainer/hf_convert.h, hf_checkpoint.h (DeepSeek-V3) and hf_dense.h (Llama / Qwen2):
// config.json mappings, bit-identical round trips, identical logits after a trip through the HF
// layout, FP8 block-scale import against an independent numpy writer, and error messages.
#include "trainer/hf_checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "data/safetensors.h"
#include "kernels/fp8.h"
#include "model/dense_config.h"
#include "tests/reference/npy.h"
#include "tests/reference/python.h"
#include "trainer/checkpoint.h"
#include "trainer/hf_dense.h"

namespace fathom::trainer {
namespace {

// A whole tensor as a checkpoint shard. Named members, not a braced list: GCC 12 reports a false
// -Wmaybe-uninitialized on the defaulted global_shape otherwise.
TensorShard whole(const std::string& name, const Tensor& value) {
  TensorShard shard;
  shard.name = name;
  shard.tensor = value;
  return shard;
}

namespace fs = std::filesystem;
using nlohmann::json;
using ::testing::AllOf;
using ::testing::HasSubstr;

using ::fathom::testing::kPython;
using ::fathom::testing::python_has_numpy;

std::string source_path(const std::string& relative) {
  return std::string(FATHOM_SOURCE_DIR) + "/" + relative;
}

model::ModelConfig preset(const std::string& name) {
  absl::StatusOr<model::ModelConfig> c =
      model::load_model_config(source_path("configs/models/" + name + ".yaml"));
  FATHOM_CHECK(c.ok()) << c.status();
  return *c;
}

std::vector<uint8_t> bytes_of(const Tensor& t) {
  const auto* p = static_cast<const uint8_t*>(t.raw_data());
  return std::vector<uint8_t>(p, p + t.nbytes());
}

// Random normal values, deterministic per seed.
Tensor random_f32(absl::Span<const int64_t> shape, uint32_t seed, float scale = 1.0f) {
  Tensor t = Tensor::empty(shape, DType::kF32);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = normal(rng);
  return t;
}

class HfCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           absl::StrCat("fathom_hf_test_", ::getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Writes the model's parameters and buffers (and extra tensors) as a one-shard checkpoint
  // whose saved config is `yaml`.
  static void save(const std::string& dir, model::DeepSeekV3& m,
                   const std::vector<TensorShard>& extra = {}) {
    std::vector<TensorShard> shards = extra;
    for (model::Parameter* p : m.parameters()) shards.push_back(whole(p->name, p->value));
    for (model::Buffer* b : m.buffers()) shards.push_back(whole(b->name, b->value));
    CheckpointMeta meta;
    meta.text["config"] = model::model_config_to_yaml(m.config());
    ASSERT_TRUE(write_checkpoint_shard(dir, 0, 1, shards, meta).ok());
  }

  // A tiny V3 with random weights, non-trivial norms and router biases.
  static std::unique_ptr<model::DeepSeekV3> tiny_model(uint64_t seed) {
    auto m = std::make_unique<model::DeepSeekV3>(preset("tiny"), model::TrainingPrecision::kFp32,
                                                 Device::cpu());
    m->init(seed);
    uint32_t s = static_cast<uint32_t>(seed);
    for (model::Parameter* p : m->parameters()) {
      if (p->value.ndim() == 1) p->value.copy_from(random_f32(p->value.shape(), ++s, 0.5f));
    }
    for (model::Buffer* b : m->buffers())
      b->value.copy_from(random_f32(b->value.shape(), ++s, 0.1f));
    return m;
  }

  static Tensor tokens(const model::ModelConfig& c) {
    std::vector<int32_t> ids;
    const int64_t batch = 2, seq = 12 + c.mtp_depth + 1;
    for (int64_t i = 0; i < batch * seq; ++i)
      ids.push_back(static_cast<int32_t>((i * 37 + 5) % c.vocab_size));
    return Tensor::from_vector(ids, {batch, seq});
  }

  // Reads every tensor of an HF directory, returning name -> (dtype, bytes).
  static std::map<std::string, std::pair<data::StDType, std::vector<uint8_t>>> hf_contents(
      const std::string& dir) {
    std::map<std::string, std::pair<data::StDType, std::vector<uint8_t>>> out;
    absl::StatusOr<data::SafetensorsDir> st = data::SafetensorsDir::open(dir);
    EXPECT_TRUE(st.ok()) << st.status();
    if (!st.ok()) return out;
    for (const std::string& name : st->names()) {
      const data::StTensorInfo* info = st->find(name);
      absl::Span<const uint8_t> b = st->file_of(name)->bytes(*info);
      out[name] = {info->dtype, std::vector<uint8_t>(b.begin(), b.end())};
    }
    return out;
  }

  // Rewrites HF directory `from` into `to` as one model.safetensors after `edit` changes the
  // tensor list (config.json copied).
  static void rewrite_hf(const std::string& from, const std::string& to,
                         const std::function<void(std::vector<data::StNamedTensor>&)>& edit) {
    absl::StatusOr<data::SafetensorsDir> st = data::SafetensorsDir::open(from);
    ASSERT_TRUE(st.ok()) << st.status();
    std::vector<data::StNamedTensor> tensors;
    for (const std::string& name : st->names()) tensors.push_back({name, *st->read(name)});
    edit(tensors);
    fs::create_directories(to);
    fs::copy_file(fs::path(from) / "config.json", fs::path(to) / "config.json");
    ASSERT_TRUE(data::write_safetensors(to + "/model.safetensors", tensors).ok());
  }

  fs::path dir_;
};

// ---- config.json ----

TEST_F(HfCheckpointTest, V3ConfigRoundTripsThroughConfigJson) {
  for (const char* name : {"tiny", "deepseek-v3-671b", "deepseek-v2-lite-16b"}) {
    SCOPED_TRACE(name);
    const model::ModelConfig c = preset(name);
    const json j = v3_config_to_hf(c);
    absl::StatusOr<model::ModelConfig> back = v3_config_from_hf(json::parse(j.dump()), "x");
    ASSERT_TRUE(back.ok()) << back.status();
    // Training-only settings that config.json does not carry keep their defaults.
    model::ModelConfig want = c;
    want.mtp_lambda = model::ModelConfig{}.mtp_lambda;
    want.bias_update_speed = model::ModelConfig{}.bias_update_speed;
    EXPECT_EQ(*back, want) << model::model_config_to_yaml(*back);
  }
  const json tiny = v3_config_to_hf(preset("tiny"));
  EXPECT_TRUE(tiny["rope_scaling"].is_null());  // no YaRN in tiny
  EXPECT_EQ(tiny["topk_method"], "noaux_tc");
  EXPECT_EQ(v3_config_to_hf(preset("deepseek-v3-671b"))["rope_scaling"]["factor"], 40.0);
}

// The published deepseek-ai/DeepSeek-V3 config.json.
constexpr char kPublishedV3Config[] = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config",
               "AutoModel": "modeling_deepseek.DeepseekV3Model",
               "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"},
  "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1,
  "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168,
  "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512,
  "max_position_embeddings": 163840, "model_type": "deepseek_v3", "moe_intermediate_size": 2048,
  "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1,
  "norm_topk_prob": true, "num_attention_heads": 128, "num_experts_per_tok": 8,
  "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1,
  "pretraining_tp": 1, "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]},
  "rms_norm_eps": 1e-06,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                   "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                   "type": "yarn"},
  "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": true,
  "tie_word_embeddings": false, "topk_group": 4, "topk_method": "noaux_tc",
  "torch_dtype": "bfloat16", "transformers_version": "4.33.1", "use_cache": true,
  "v_head_dim": 128, "vocab_size": 129280})";

TEST_F(HfCheckpointTest, PublishedV3ConfigMapsOntoThe671BPreset) {
  absl::StatusOr<model::ModelConfig> c = v3_config_from_hf(json::parse(kPublishedV3Config), "x");
  ASSERT_TRUE(c.ok()) << c.status();
  model::ModelConfig want = preset("deepseek-v3-671b");
  want.max_seq_len = 163840;  // the HF context length; the preset uses ModelArgs' 16384
  want.init_std = 0.02;       // HF's initializer_range; the report's 0.006 is in the preset
  want.balance_loss_alpha = 0.001;
  EXPECT_EQ(*c, want) << model::model_config_to_yaml(*c);
  EXPECT_TRUE(c->uses_yarn());
}

TEST_F(HfCheckpointTest, V3ConfigInconsistenciesAreErrorsNamingTheKey) {
  auto error = [](const std::function<void(json&)>& edit) {
    json j = json::parse(kPublishedV3Config);
    edit(j);
    absl::StatusOr<model::ModelConfig> c = v3_config_from_hf(j, "dir/config.json");
    EXPECT_FALSE(c.ok());
    return c.ok() ? std::string() : std::string(c.status().message());
  };
  EXPECT_THAT(error([](json& j) { j["num_key_value_heads"] = 8; }),
              AllOf(HasSubstr("dir/config.json: num_key_value_heads"), HasSubstr("128")));
  EXPECT_THAT(error([](json& j) { j["topk_method"] = "greedy"; }), HasSubstr("topk_method"));
  EXPECT_THAT(error([](json& j) { j["norm_topk_prob"] = false; }), HasSubstr("norm_topk_prob"));
  EXPECT_THAT(error([](json& j) { j["hidden_act"] = "gelu"; }), HasSubstr("hidden_act"));
  EXPECT_THAT(error([](json& j) { j["hidden_size"] = "7168"; }),
              AllOf(HasSubstr("hidden_size"), HasSubstr("expected an integer")));
  EXPECT_THAT(error([](json& j) { j.erase("kv_lora_rank"); }),
              AllOf(HasSubstr("kv_lora_rank"), HasSubstr("missing")));
  EXPECT_THAT(error([](json& j) { j["rope_scaling"]["mscale"] = 0.5; }), HasSubstr("mscale"));
  EXPECT_THAT(error([](json& j) { j["max_position_embeddings"] = 4096; }),
              HasSubstr("original_max_position_embeddings"));
  EXPECT_THAT(error([](json& j) {
                j["quantization_config"]["weight_block_size"] = {64, 64};
              }),
              HasSubstr("quantization_config"));
  EXPECT_THAT(error([](json& j) { j["n_group"] = 7; }),
              AllOf(HasSubstr("n_expert_groups"), HasSubstr("must divide")));
  EXPECT_THAT(error([](json& j) { j["tie_word_embeddings"] = true; }),
              HasSubstr("tie_word_embeddings"));
  // HF's latent norms use 1e-6 whatever rms_norm_eps says (found by hf_reference_test).
  EXPECT_THAT(error([](json& j) { j["rms_norm_eps"] = 1e-5; }),
              AllOf(HasSubstr("rms_norm_eps"), HasSubstr("q_a_layernorm")));
}

TEST_F(HfCheckpointTest, V3TensorMapCoversEveryParameterAndBuffer) {
  const model::ModelConfig c = preset("tiny");
  model::DeepSeekV3 m(c, model::TrainingPrecision::kFp32, Device::cpu());
  std::map<std::string, Shape> ours;
  for (const HfMapEntry& e : v3_tensor_map(c)) {
    if (!e.alias) ours[e.ours] = e.our_shape;
  }
  size_t expected = 0;
  for (model::Parameter* p : m.parameters()) {
    ASSERT_TRUE(ours.count(p->name)) << p->name;
    EXPECT_EQ(ours[p->name], p->value.shape()) << p->name;
    ++expected;
  }
  for (model::Buffer* b : m.buffers()) {
    ASSERT_TRUE(ours.count(b->name)) << b->name;
    ++expected;
  }
  EXPECT_EQ(ours.size(), expected);
}

// ---- DeepSeek-V3 round trips ----

TEST_F(HfCheckpointTest, TinyV3ExportedAndImportedGivesIdenticalLogitsAndBits) {
  auto original = tiny_model(7);
  save(path("ckpt"), *original,
       {{"optim.m.embed.weight", Tensor::zeros({4}, DType::kF32)}});  // skipped by the export
  HfExportOptions export_options;
  export_options.max_shard_bytes = 200000;  // several files and an index
  absl::StatusOr<ConvertReport> out =
      convert_fathom_to_hf(path("ckpt"), path("hf"), export_options);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_GT(out->files, 1);
  EXPECT_TRUE(fs::exists(path("hf/model.safetensors.index.json")));
  const auto hf = hf_contents(path("hf"));
  for (const char* name :
       {"model.embed_tokens.weight", "model.layers.0.self_attn.q_a_proj.weight",
        "model.layers.0.mlp.gate_proj.weight", "model.layers.1.mlp.experts.7.down_proj.weight",
        "model.layers.2.mlp.gate.e_score_correction_bias",
        "model.layers.2.mlp.shared_experts.up_proj.weight", "model.layers.3.enorm.weight",
        "model.layers.3.eh_proj.weight", "model.layers.3.shared_head.norm.weight",
        "model.layers.3.embed_tokens.weight", "model.layers.3.shared_head.head.weight",
        "model.layers.3.mlp.experts.0.gate_proj.weight", "lm_head.weight"}) {
    EXPECT_TRUE(hf.count(name)) << name;
  }
  // Expert 7's down_proj is row 7 of the stacked w2, byte for byte.
  const model::Parameter* w2 = nullptr;
  for (model::Parameter* p : original->parameters()) {
    if (p->name == "layers.1.ffn.experts.w2.weight") w2 = p;
  }
  ASSERT_NE(w2, nullptr);
  EXPECT_EQ(hf.at("model.layers.1.mlp.experts.7.down_proj.weight").second,
            bytes_of(w2->value.narrow(7, 1)));
  absl::StatusOr<json> config = read_config_json(path("hf"));
  ASSERT_TRUE(config.ok());
  EXPECT_EQ((*config)["model_type"], "deepseek_v3");
  EXPECT_EQ((*config)["torch_dtype"], "float32");

  HfImportOptions import_options;
  import_options.max_shard_bytes = 100000;  // stacked experts split across shard files
  absl::StatusOr<ConvertReport> in = convert_hf_to_fathom(path("hf"), path("back"), import_options);
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_GT(in->files, 1);
  EXPECT_TRUE(fs::exists(path("back/model.yaml")));
  absl::StatusOr<SavedModelConfig> saved = read_saved_model_config(path("back"));
  ASSERT_TRUE(saved.ok()) << saved.status();
  ASSERT_TRUE(saved->v3.has_value());
  EXPECT_EQ(*saved->v3, original->config());

  model::DeepSeekV3 loaded(original->config(), model::TrainingPrecision::kFp32, Device::cpu());
  ASSERT_TRUE(load_v3_weights(path("back"), loaded).ok());
  const auto params = loaded.parameters();
  const auto want = original->parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(bytes_of(params[i]->value), bytes_of(want[i]->value)) << params[i]->name;
  }
  for (size_t i = 0; i < loaded.buffers().size(); ++i) {
    EXPECT_EQ(bytes_of(loaded.buffers()[i]->value), bytes_of(original->buffers()[i]->value));
  }
  const Tensor ids = tokens(original->config());
  const Tensor a = original->logits(ids);
  const Tensor b = loaded.logits(ids);
  EXPECT_EQ(bytes_of(a), bytes_of(b));

  // Exported again: the same safetensors contents.
  ASSERT_TRUE(convert_fathom_to_hf(path("back"), path("hf2"), export_options).ok());
  EXPECT_EQ(hf_contents(path("hf2")), hf);
  // The outputs exist now: converting onto them is refused.
  EXPECT_TRUE(absl::IsAlreadyExists(
      convert_fathom_to_hf(path("back"), path("hf2"), export_options).status()));
  EXPECT_TRUE(absl::IsAlreadyExists(
      convert_hf_to_fathom(path("hf"), path("back"), import_options).status()));
}

TEST_F(HfCheckpointTest, Bf16HfCheckpointRoundTripsBitIdentically) {
  auto m = tiny_model(11);
  save(path("ckpt"), *m);
  HfExportOptions bf16;
  bf16.dtype = DType::kBF16;
  ASSERT_TRUE(convert_fathom_to_hf(path("ckpt"), path("hf"), bf16).ok());
  EXPECT_EQ(hf_contents(path("hf")).at("lm_head.weight").first, data::StDType::kBF16);
  ASSERT_TRUE(convert_hf_to_fathom(path("hf"), path("f32"), {}).ok());
  ASSERT_TRUE(convert_fathom_to_hf(path("f32"), path("hf2"), bf16).ok());
  EXPECT_EQ(hf_contents(path("hf2")), hf_contents(path("hf")));
  EXPECT_EQ((*read_config_json(path("hf2")))["torch_dtype"], "bfloat16");
}

TEST_F(HfCheckpointTest, Fp8ExportQuantizesLinearWeightsPer128x128Block) {
  auto m = tiny_model(3);
  save(path("ckpt"), *m);
  HfExportOptions fp8;
  fp8.fp8 = true;
  absl::StatusOr<ConvertReport> out = convert_fathom_to_hf(path("ckpt"), path("hf"), fp8);
  ASSERT_TRUE(out.ok()) << out.status();
  const auto hf = hf_contents(path("hf"));
  EXPECT_EQ(hf.at("model.layers.0.self_attn.q_b_proj.weight").first, data::StDType::kF8E4M3);
  EXPECT_EQ(hf.at("model.layers.0.self_attn.q_b_proj.weight_scale_inv").first, data::StDType::kF32);
  EXPECT_EQ(hf.at("model.layers.1.mlp.gate.weight").first, data::StDType::kF32);  // router: not FP8
  EXPECT_EQ(hf.at("model.layers.3.eh_proj.weight").first, data::StDType::kF32);
  EXPECT_EQ(hf.at("model.norm.weight").first, data::StDType::kF32);
  EXPECT_TRUE((*read_config_json(path("hf"))).contains("quantization_config"));

  ASSERT_TRUE(convert_hf_to_fathom(path("hf"), path("back"), {}).ok());
  model::DeepSeekV3 loaded(m->config(), model::TrainingPrecision::kFp32, Device::cpu());
  ASSERT_TRUE(load_v3_weights(path("back"), loaded).ok());
  const auto want = m->parameters();
  const auto got = loaded.parameters();
  int quantized = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const std::string& name = want[i]->name;
    const bool linear = want[i]->value.ndim() >= 2 && name.find("embed") == std::string::npos &&
                        name.find("head") == std::string::npos &&
                        name.find("gate.weight") == std::string::npos &&
                        name.find("eh_proj") == std::string::npos;
    if (!linear) {
      EXPECT_EQ(bytes_of(got[i]->value), bytes_of(want[i]->value)) << name;
      continue;
    }
    // q * scale of the kernels' own 128x128 quantizer, per expert for stacked weights.
    Tensor expected = Tensor::empty(want[i]->value.shape(), DType::kF32);
    dequantize_fp8(quantize_fp8(want[i]->value, ScaleBlock::k128x128), expected);
    EXPECT_EQ(bytes_of(got[i]->value), bytes_of(expected)) << name;
    EXPECT_NE(bytes_of(got[i]->value), bytes_of(want[i]->value)) << name;
    ++quantized;
  }
  EXPECT_GT(quantized, 20);
}

// ---- FP8 fixture from the numpy writer ----

class Fp8FixtureTest : public HfCheckpointTest {
 protected:
  void SetUp() override {
    HfCheckpointTest::SetUp();
    if (!python_has_numpy()) {
      GTEST_SKIP() << kPython << " with numpy is needed (apt-get install python3-numpy)";
    }
    const std::string cmd =
        absl::StrCat(kPython, " ", source_path("tests/reference/make_safetensors_fixture.py"),
                     " v3 ", path("hf"));
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
  // The f32 values the script computed for HF tensor `name`.
  std::vector<float> expected(const std::string& name) {
    absl::StatusOr<testing::NpyArray> a = testing::read_npy(path("hf/expected/" + name + ".npy"));
    EXPECT_TRUE(a.ok()) << a.status();
    if (!a.ok()) return {};
    absl::StatusOr<std::vector<float>> values = a->as<float>();
    EXPECT_TRUE(values.ok()) << values.status();
    return values.ok() ? *values : std::vector<float>();
  }
  static std::vector<float> read_rows(const std::string& dir, const std::string& name,
                                      const Shape& global, int64_t row) {
    Shape shape = global;
    if (row >= 0) shape[0] = 1;
    TensorShard shard{name, Tensor::empty(shape, DType::kF32), global, std::max<int64_t>(row, 0)};
    const absl::Status s = read_checkpoint(dir, absl::MakeSpan(&shard, 1), nullptr);
    EXPECT_TRUE(s.ok()) << s;
    return shard.tensor.to_floats();
  }
};

TEST_F(Fp8FixtureTest, DequantizedImportMatchesTheBlockScaleFormula) {
  absl::StatusOr<ConvertReport> in = convert_hf_to_fathom(path("hf"), path("ckpt"), {});
  ASSERT_TRUE(in.ok()) << in.status();
  absl::StatusOr<SavedModelConfig> saved = read_saved_model_config(path("ckpt"));
  ASSERT_TRUE(saved.ok() && saved->v3.has_value());
  const model::ModelConfig& c = *saved->v3;
  EXPECT_EQ(c.dim, 160);
  EXPECT_EQ(c.mtp_depth, 1);
  const int64_t qk = c.qk_nope_head_dim + c.qk_rope_head_dim;
  struct Case {
    const char* hf;
    const char* ours;
    Shape global;
    int64_t row;
  } cases[] = {
      // 2 x 2 blocks, ragged (48 x 144 of 128 x 128 in the last ones).
      {"model.layers.0.self_attn.q_b_proj.weight",
       "layers.0.attn.wq_b.weight",
       {c.n_heads * qk, c.q_lora_rank},
       -1},
      {"model.layers.0.mlp.down_proj.weight", "layers.0.ffn.w2.weight", {c.dim, c.inter_dim}, -1},
      {"model.layers.1.mlp.experts.3.up_proj.weight",
       "layers.1.ffn.experts.w3.weight",
       {c.n_routed_experts, c.moe_inter_dim, c.dim},
       3},
      {"model.layers.2.self_attn.kv_a_proj_with_mqa.weight",
       "mtp.0.block.attn.wkv_a.weight",
       {c.kv_lora_rank + c.qk_rope_head_dim, c.dim},
       -1},
      {"model.embed_tokens.weight", "embed.weight", {c.vocab_size, c.dim}, -1},  // BF16
      {"model.layers.1.mlp.gate.e_score_correction_bias",
       "layers.1.ffn.gate.bias",
       {c.n_routed_experts},
       -1},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.hf);
    const std::vector<float> got = read_rows(path("ckpt"), k.ours, k.global, k.row);
    const std::vector<float> want = expected(k.hf);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), 4 * got.size()), 0);
  }
}

TEST_F(Fp8FixtureTest, KeptFp8RoundTripsBitIdenticallyAndLoadsLikeTheDequantizedImport) {
  HfImportOptions keep;
  keep.fp8 = Fp8Import::kKeep;
  absl::StatusOr<ConvertReport> in = convert_hf_to_fathom(path("hf"), path("kept"), keep);
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_GT(in->fp8_tensors, 0);
  absl::StatusOr<std::vector<std::string>> names = list_checkpoint_tensors(path("kept"));
  ASSERT_TRUE(names.ok());
  EXPECT_THAT(*names, ::testing::Contains("layers.1.ffn.experts.w1.weight_scale_inv"));

  // Back to HF: every tensor (FP8 codes, scales, BF16 values written as BF16) as in the source.
  HfExportOptions bf16;
  bf16.dtype = DType::kBF16;
  ASSERT_TRUE(convert_fathom_to_hf(path("kept"), path("hf2"), bf16).ok());
  auto source = hf_contents(path("hf"));
  auto back = hf_contents(path("hf2"));
  // The source stores the router bias in F32; --dtype bf16 writes every non-FP8 tensor in bf16.
  for (auto it = source.begin(); it != source.end();) {
    it = absl::EndsWith(it->first, "e_score_correction_bias") ? source.erase(it) : std::next(it);
  }
  for (auto it = back.begin(); it != back.end();) {
    it = absl::EndsWith(it->first, "e_score_correction_bias") ? back.erase(it) : std::next(it);
  }
  EXPECT_EQ(back, source);

  // load_v3_weights dequantizes the kept FP8 exactly as the import does.
  ASSERT_TRUE(convert_hf_to_fathom(path("hf"), path("dequantized"), {}).ok());
  const model::ModelConfig c = *read_saved_model_config(path("kept"))->v3;
  model::DeepSeekV3 a(c, model::TrainingPrecision::kFp32, Device::cpu());
  model::DeepSeekV3 b(c, model::TrainingPrecision::kFp32, Device::cpu());
  ASSERT_TRUE(load_v3_weights(path("kept"), a).ok());
  ASSERT_TRUE(load_v3_weights(path("dequantized"), b).ok());
  for (size_t i = 0; i < a.parameters().size(); ++i) {
    EXPECT_EQ(bytes_of(a.parameters()[i]->value), bytes_of(b.parameters()[i]->value))
        << a.parameters()[i]->name;
  }
  // And the dequantized model runs.
  const Tensor logits = b.logits(tokens(c));
  for (float v : logits.to_floats()) ASSERT_TRUE(std::isfinite(v));
}

// ---- import and export errors ----

TEST_F(HfCheckpointTest, BadHfCheckpointsGetErrorsNamingTheTensor) {
  auto m = tiny_model(5);
  save(path("ckpt"), *m);
  ASSERT_TRUE(convert_fathom_to_hf(path("ckpt"), path("hf"), {}).ok());
  int variant = 0;
  auto import_error = [&](const std::function<void(std::vector<data::StNamedTensor>&)>& edit) {
    const std::string dir = path(absl::StrCat("bad", ++variant));
    rewrite_hf(path("hf"), dir, edit);
    absl::StatusOr<ConvertReport> r = convert_hf_to_fathom(dir, dir + "-out", {});
    EXPECT_FALSE(r.ok());
    EXPECT_FALSE(fs::exists(dir + "-out"));  // nothing half-written
    return r.ok() ? std::string() : std::string(r.status().message());
  };
  auto find = [](std::vector<data::StNamedTensor>& t, const std::string& name) {
    for (auto it = t.begin(); it != t.end(); ++it) {
      if (it->name == name) return it;
    }
    ADD_FAILURE() << "no " << name;
    return t.end();
  };
  EXPECT_THAT(import_error([&](auto& t) {
                t.erase(find(t, "model.layers.2.mlp.experts.5.up_proj.weight"));
              }),
              AllOf(HasSubstr("missing tensor"),
                    HasSubstr("'model.layers.2.mlp.experts.5.up_proj.weight'")));
  EXPECT_THAT(
      import_error([&](auto& t) {
        t.push_back({"model.layers.9.self_attn.o_proj.weight", Tensor::zeros({2}, DType::kF32)});
      }),
      AllOf(HasSubstr("unexpected tensor"), HasSubstr("'model.layers.9.self_attn.o_proj.weight'")));
  EXPECT_THAT(import_error([&](auto& t) {
                find(t, "model.norm.weight")->tensor = Tensor::zeros({65}, DType::kF32);
              }),
              AllOf(HasSubstr("tensor 'model.norm.weight'"), HasSubstr("shape [65]"),
                    HasSubstr("expected [64]")));
  EXPECT_THAT(import_error([&](auto& t) {
                find(t, "model.norm.weight")->tensor = Tensor::zeros({64}, DType::kI64);
              }),
              AllOf(HasSubstr("tensor 'model.norm.weight'"), HasSubstr("dtype I64")));
  EXPECT_THAT(import_error([&](auto& t) {
                auto w = find(t, "model.layers.0.self_attn.o_proj.weight");
                w->tensor =
                    Tensor::from_floats(w->tensor.to_floats(), w->tensor.shape(), DType::kF8E4M3);
              }),
              AllOf(HasSubstr("tensor 'model.layers.0.self_attn.o_proj.weight'"),
                    HasSubstr("without its block scales")));
  EXPECT_THAT(import_error([&](auto& t) {
                Tensor copy = find(t, "model.layers.3.embed_tokens.weight")->tensor.clone();
                copy.data<float>()[100] += 1.0f;
                find(t, "model.layers.3.embed_tokens.weight")->tensor = copy;
              }),
              AllOf(HasSubstr("'model.layers.3.embed_tokens.weight' should be a copy of "
                              "'model.embed_tokens.weight'"),
                    HasSubstr("element 100")));
  // A truncated shard is reported by the safetensors reader with the tensor that no longer fits.
  const std::string cut = path("cut");
  rewrite_hf(path("hf"), cut, [](auto&) {});
  fs::resize_file(cut + "/model.safetensors", fs::file_size(cut + "/model.safetensors") / 2);
  absl::StatusOr<ConvertReport> r = convert_hf_to_fathom(cut, cut + "-out", {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              AllOf(HasSubstr("model.safetensors: tensor '"), HasSubstr("truncated")));
}

TEST_F(HfCheckpointTest, ExportRefusesCheckpointsThatDoNotMatchTheirConfig) {
  auto m = tiny_model(9);
  save(path("extra"), *m, {{"layers.0.attn.unknown.weight", Tensor::zeros({3}, DType::kF32)}});
  absl::StatusOr<ConvertReport> r = convert_fathom_to_hf(path("extra"), path("hf1"), {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              AllOf(HasSubstr("unexpected tensor"), HasSubstr("'layers.0.attn.unknown.weight'")));
  EXPECT_FALSE(fs::exists(path("hf1")));

  std::vector<TensorShard> shards;
  for (model::Parameter* p : m->parameters()) {
    if (p->name != "layers.2.attn.wkv_b.weight") shards.push_back(whole(p->name, p->value));
  }
  CheckpointMeta meta;
  meta.text["config"] = model::model_config_to_yaml(m->config());
  ASSERT_TRUE(write_checkpoint_shard(path("missing"), 0, 1, shards, meta).ok());
  r = convert_fathom_to_hf(path("missing"), path("hf2"), {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              AllOf(HasSubstr("missing tensors"), HasSubstr("'layers.2.attn.wkv_b.weight'")));

  // A norm eps other than 1e-6 would mean another model to HF's latent norms.
  model::ModelConfig eps = m->config();
  eps.norm_eps = 1e-5;
  r = export_hf_v3(path("extra"), eps, path("hf3"), {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("model.norm_eps is 1e-05"));
  EXPECT_FALSE(fs::exists(path("hf3")));
  // HF's DeepSeek-V3 router is sigmoid-only: a softmax model would load as another model.
  model::ModelConfig softmax = m->config();
  softmax.score_func = model::ScoreFunc::kSoftmax;
  r = export_hf_v3(path("extra"), softmax, path("hf4"), {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("model.score_func is softmax"));
  EXPECT_FALSE(fs::exists(path("hf4")));
}

// ---- dense students ----

TEST_F(HfCheckpointTest, StudentPresetsLoadAndRoundTripThroughConfigJson) {
  for (const char* name : {"student-qwen2.5-1.5b", "student-llama3.1-8b"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<model::DenseConfig> c =
        model::load_dense_config(source_path(absl::StrCat("configs/models/", name, ".yaml")));
    ASSERT_TRUE(c.ok()) << c.status();
    absl::StatusOr<json> j = dense_config_to_hf(*c);
    ASSERT_TRUE(j.ok()) << j.status();
    absl::StatusOr<model::DenseConfig> back = dense_config_from_hf(json::parse(j->dump()), "x");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, *c);
    absl::StatusOr<YAML::Node> yaml = YAML::Load(model::dense_config_to_yaml(*c));
    EXPECT_EQ(*model::parse_dense_config((*yaml)["student"]), *c);
  }
  const model::DenseConfig qwen =
      *model::load_dense_config(source_path("configs/models/student-qwen2.5-1.5b.yaml"));
  EXPECT_EQ(model::dense_parameter_count(qwen), 1543714304);  // Qwen2.5-1.5B: 1.54B
  const model::DenseConfig llama =
      *model::load_dense_config(source_path("configs/models/student-llama3.1-8b.yaml"));
  EXPECT_EQ(model::dense_parameter_count(llama), 8030261248);  // Llama-3.1-8B: 8.03B
}

TEST_F(HfCheckpointTest, DenseHfConfigChecksNameTheKey) {
  json j = {{"model_type", "qwen2"},      {"vocab_size", 100},
            {"hidden_size", 64},          {"intermediate_size", 96},
            {"num_hidden_layers", 2},     {"num_attention_heads", 4},
            {"num_key_value_heads", 3},   {"max_position_embeddings", 128},
            {"use_sliding_window", true}, {"hidden_act", "silu"}};
  absl::StatusOr<model::DenseConfig> c = dense_config_from_hf(j, "q/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("q/config.json: use_sliding_window"));
  j["use_sliding_window"] = false;
  c = dense_config_from_hf(j, "q/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              AllOf(HasSubstr("num_key_value_heads"), HasSubstr("must divide")));
  j["num_key_value_heads"] = 2;
  j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  c = dense_config_from_hf(j, "q/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("rope_type"));
  j["rope_scaling"] = nullptr;
  c = dense_config_from_hf(j, "q/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->attention_bias);  // qwen2 always has q/k/v biases
  EXPECT_EQ(c->head_dim, 16);
}

TEST_F(HfCheckpointTest, DenseStudentsRoundTripBitIdentically) {
  model::DenseConfig qwen;
  qwen.architecture = model::DenseArchitecture::kQwen2;
  qwen.vocab_size = 50;
  qwen.hidden_size = 32;
  qwen.intermediate_size = 48;
  qwen.num_hidden_layers = 2;
  qwen.num_attention_heads = 4;
  qwen.num_key_value_heads = 2;
  qwen.head_dim = 8;
  qwen.attention_bias = true;
  qwen.tie_word_embeddings = true;
  model::DenseConfig llama = qwen;
  llama.architecture = model::DenseArchitecture::kLlama;
  llama.attention_bias = false;
  llama.tie_word_embeddings = false;
  llama.head_dim = 16;  // head_dim * heads != hidden_size: Llama allows it
  llama.rope_scaling = model::DenseRopeScaling::kLlama3;
  for (const model::DenseConfig& c : {qwen, llama}) {
    const std::string arch(model::dense_architecture_name(c.architecture));
    SCOPED_TRACE(arch);
    std::vector<TensorShard> shards;
    uint32_t seed = 0;
    for (const model::DenseParameterInfo& p : model::dense_parameters(c)) {
      shards.push_back(whole(p.name, random_f32(p.shape, ++seed)));
    }
    CheckpointMeta meta;
    meta.text["config"] = model::dense_config_to_yaml(c);
    const std::string ckpt = path(arch + "-ckpt");
    ASSERT_TRUE(write_checkpoint_shard(ckpt, 0, 1, shards, meta).ok());
    HfExportOptions options;
    options.fp8 = true;  // V3 only: refused for a student, naming the option
    absl::StatusOr<ConvertReport> refused =
        convert_fathom_to_hf(ckpt, path(arch + "-hf-fp8"), options);
    ASSERT_FALSE(refused.ok());
    EXPECT_THAT(std::string(refused.status().message()), HasSubstr("--fp8 export applies to"));
    options.fp8 = false;
    options.max_shard_bytes = 8000;
    absl::StatusOr<ConvertReport> out = convert_fathom_to_hf(ckpt, path(arch + "-hf"), options);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_GT(out->files, 1);
    const auto hf = hf_contents(path(arch + "-hf"));
    EXPECT_EQ(hf.count("lm_head.weight"), c.tie_word_embeddings ? 0u : 1u);
    EXPECT_EQ(hf.count("model.layers.1.self_attn.k_proj.bias"), c.attention_bias ? 1u : 0u);
    EXPECT_EQ(hf.count("model.layers.1.mlp.down_proj.weight"), 1u);
    absl::StatusOr<json> config = read_config_json(path(arch + "-hf"));
    ASSERT_TRUE(config.ok());
    EXPECT_EQ((*config)["model_type"], arch);

    absl::StatusOr<ConvertReport> in =
        convert_hf_to_fathom(path(arch + "-hf"), path(arch + "-back"), {});
    ASSERT_TRUE(in.ok()) << in.status();
    EXPECT_EQ(in->kind, arch);
    absl::StatusOr<SavedModelConfig> saved = read_saved_model_config(path(arch + "-back"));
    ASSERT_TRUE(saved.ok() && saved->dense.has_value());
    EXPECT_EQ(*saved->dense, c);
    for (const TensorShard& s : shards) {
      TensorShard back{s.name, Tensor::empty(s.tensor.shape(), DType::kF32)};
      ASSERT_TRUE(read_checkpoint(path(arch + "-back"), absl::MakeSpan(&back, 1), nullptr).ok());
      EXPECT_EQ(bytes_of(back.tensor), bytes_of(s.tensor)) << s.name;
    }
  }
}

TEST_F(HfCheckpointTest, TiedStudentAcceptsAnLmHeadCopyOnlyWhenEqual) {
  model::DenseConfig c;
  c.architecture = model::DenseArchitecture::kQwen2;
  c.vocab_size = 20;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 8;
  c.attention_bias = true;
  c.tie_word_embeddings = true;
  std::vector<TensorShard> shards;
  uint32_t seed = 100;
  for (const model::DenseParameterInfo& p : model::dense_parameters(c)) {
    shards.push_back(whole(p.name, random_f32(p.shape, ++seed)));
  }
  CheckpointMeta meta;
  meta.text["config"] = model::dense_config_to_yaml(c);
  ASSERT_TRUE(write_checkpoint_shard(path("ckpt"), 0, 1, shards, meta).ok());
  ASSERT_TRUE(convert_fathom_to_hf(path("ckpt"), path("hf"), {}).ok());
  // Some tied checkpoints store lm_head.weight anyway: equal is fine, different is an error.
  rewrite_hf(path("hf"), path("with_head"), [](std::vector<data::StNamedTensor>& t) {
    for (const auto& x : std::vector<data::StNamedTensor>(t)) {
      if (x.name == "model.embed_tokens.weight") t.push_back({"lm_head.weight", x.tensor});
    }
  });
  EXPECT_TRUE(convert_hf_to_fathom(path("with_head"), path("a"), {}).ok());
  rewrite_hf(path("hf"), path("other_head"), [](std::vector<data::StNamedTensor>& t) {
    t.push_back({"lm_head.weight", Tensor::zeros({20, 16}, DType::kF32)});
  });
  absl::StatusOr<ConvertReport> r = convert_hf_to_fathom(path("other_head"), path("b"), {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("'lm_head.weight' should be a copy of 'model.embed_tokens.weight'"));
}

}  // namespace
}  // namespace fathom::trainer
