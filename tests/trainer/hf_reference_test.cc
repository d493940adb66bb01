// Independent check of the Hugging Face DeepSeek-V3 export (trainer/hf_checkpoint.h): a tiny V3
// is exported with export_hf_v3() and the directory is read by
// tests/reference/hf_deepseek_v3_logits.py, a float64 loader written from Hugging Face's
// modeling_deepseek.py and DeepSeek's inference code (its own safetensors reader, FP8 decoder,
// config.json mapping and tensor names). Its logits must match DeepSeekV3::logits of the model
// that was exported. Skips when Debian's /usr/bin/python3 cannot import torch and numpy.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "data/safetensors.h"
#include "model/config.h"
#include "model/deepseek_v3.h"
#include "tests/reference/npy.h"
#include "tests/reference/python.h"
#include "trainer/checkpoint.h"
#include "trainer/hf_checkpoint.h"
#include "trainer/hf_convert.h"

namespace fathom::trainer {
namespace {

namespace fs = std::filesystem;
using ::fathom::testing::kPython;
using ::fathom::testing::NpyArray;
using ::fathom::testing::python_has_torch;
using ::fathom::testing::run_command;
using ::fathom::testing::read_npy;
using ::fathom::testing::write_npy;
using ::testing::HasSubstr;

constexpr int64_t kBatch = 2;
constexpr int64_t kSeq = 12;

std::string source_path(const std::string& relative) {
  return std::string(FATHOM_SOURCE_DIR) + "/" + relative;
}


model::ModelConfig tiny_config() {
  absl::StatusOr<model::ModelConfig> c =
      model::load_model_config(source_path("configs/models/tiny.yaml"));
  FATHOM_CHECK(c.ok()) << c.status();
  return *c;
}

// tiny with YaRN active (max_seq_len > original_seq_len, so config.json gets rope_scaling; every
// rotary pair falls in a different part of the ramp for rope dim 8) and no query compression
// (q_proj).
model::ModelConfig yarn_no_q_lora_config() {
  model::ModelConfig c = tiny_config();
  c.q_lora_rank = 0;
  c.original_seq_len = 64;
  c.max_seq_len = 256;
  c.rope_factor = 4.0;
  c.mscale = 0.707;
  FATHOM_CHECK(model::validate(c).ok());
  FATHOM_CHECK(c.uses_yarn());
  return c;
}

std::string describe(const model::ModelConfig& c) {
  std::ostringstream os;
  os << "q_lora_rank=" << c.q_lora_rank << " yarn=" << c.uses_yarn()
     << " rope_factor=" << c.rope_factor << " original_seq_len=" << c.original_seq_len
     << " mscale=" << c.mscale << " n_expert_groups=" << c.n_expert_groups
     << " n_limited_groups=" << c.n_limited_groups << " mtp_depth=" << c.mtp_depth;
  return os.str();
}

// A model away from the trivial init: matrices 4x the init (routing scores spread out), norm
// weights 1 + 0.2 N(0, 1), router biases 0.1 N(0, 1) (they change which experts are chosen).
std::unique_ptr<model::DeepSeekV3> random_model(const model::ModelConfig& config, uint64_t seed,
                                                float matrix_scale = 4.0f) {
  auto m =
      std::make_unique<model::DeepSeekV3>(config, model::TrainingPrecision::kFp32, Device::cpu());
  m->init(seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (model::Parameter* p : m->parameters()) {
    std::vector<float> v = p->value.to_vector<float>();
    for (float& x : v) x = p->value.ndim() == 1 ? 1.0f + 0.2f * normal(rng) : matrix_scale * x;
    p->value.copy_from(Tensor::from_vector(v, p->value.shape()));
    ++p->version;
  }
  for (model::Buffer* b : m->buffers()) {
    std::vector<float> v = b->value.to_vector<float>();
    for (float& x : v) x = 0.1f * normal(rng);
    b->value.copy_from(Tensor::from_vector(v, b->value.shape()));
  }
  return m;
}

// Random ids (B, S + mtp_depth + 1): what DeepSeekV3::logits takes; the script gets columns
// 0..S-1, the positions whose logits both compute.
std::vector<int32_t> random_tokens(const model::ModelConfig& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(c.vocab_size) - 1);
  std::vector<int32_t> ids(static_cast<size_t>(kBatch * (kSeq + c.mtp_depth + 1)));
  for (int32_t& x : ids) x = id(rng);
  return ids;
}

struct Comparison {
  int64_t bad = 0;
  size_t worst = 0;
  double worst_excess = -1;  // err / allowed at `worst`
  double max_ref = 0;
  double rel_rms = 0;  // ||got - ref||_2 / ||ref||_2
};

// |got - ref| <= atol_fraction * max|ref| + rtol * |ref| elementwise, and the relative RMS error.
Comparison compare(const std::vector<float>& got, const std::vector<double>& ref, double rtol,
                   double atol_fraction) {
  Comparison c;
  for (double r : ref) c.max_ref = std::max(c.max_ref, std::abs(r));
  const double atol = atol_fraction * c.max_ref;
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::abs(static_cast<double>(got[i]) - ref[i]);
    const double allowed = atol + rtol * std::abs(ref[i]);
    if (!(err <= allowed)) ++c.bad;  // NaN counts as bad
    const double excess = std::isnan(err) ? INFINITY : err / allowed;
    if (excess > c.worst_excess) {
      c.worst_excess = excess;
      c.worst = i;
    }
    err2 += err * err;
    ref2 += ref[i] * ref[i];
  }
  c.rel_rms = std::sqrt(err2 / ref2);
  return c;
}

class HfReferenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!python_has_torch()) {
      GTEST_SKIP() << kPython << " cannot import torch and numpy (apt-get install python3-torch "
                   << "python3-numpy)";
    }
    dir_ = fs::temp_directory_path() /
           absl::StrCat("fathom_hfref_", ::getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Saves `m` as a one-shard fathom checkpoint at `ckpt` and exports it to `hf` with `options`.
  static void save_and_export(model::DeepSeekV3& m, const std::string& ckpt, const std::string& hf,
                              const HfExportOptions& options) {
    std::vector<TensorShard> shards;
    auto add = [&](const std::string& name, const Tensor& value) {
      TensorShard s;
      s.name = name;
      s.tensor = value;
      shards.push_back(s);
    };
    for (model::Parameter* p : m.parameters()) add(p->name, p->value);
    for (model::Buffer* b : m.buffers()) add(b->name, b->value);
    CheckpointMeta meta;
    meta.text["config"] = model::model_config_to_yaml(m.config());
    ASSERT_TRUE(write_checkpoint_shard(ckpt, 0, 1, shards, meta).ok());
    absl::StatusOr<ConvertReport> report = export_hf_v3(ckpt, m.config(), hf, options);
    ASSERT_TRUE(report.ok()) << report.status();
  }

  // Writes the first kSeq columns of `ids` as (B, S) int32 and runs the script on `hf`; returns
  // its exit status, its output in *log and, on success, its logits in *logits.
  int run_script(const std::string& hf, const model::ModelConfig& c,
                 const std::vector<int32_t>& ids, std::string* log, NpyArray* logits) {
    const int64_t width = kSeq + c.mtp_depth + 1;
    std::vector<int32_t> main_ids;
    for (int64_t b = 0; b < kBatch; ++b) {
      for (int64_t s = 0; s < kSeq; ++s) main_ids.push_back(ids[b * width + s]);
    }
    const std::string tokens = path("tokens.npy");
    const std::string out = path("hf_logits.npy");
    fs::remove(out);
    const absl::Status written = write_npy(tokens, {kBatch, kSeq}, main_ids.data());
    EXPECT_TRUE(written.ok()) << written;
    const int rc = run_command(
        absl::StrCat(kPython, " ", source_path("tests/reference/hf_deepseek_v3_logits.py"), " ", hf,
                     " ", tokens, " ", out),
        log);
    if (rc == 0 && logits != nullptr) {
      absl::StatusOr<NpyArray> a = read_npy(out);
      EXPECT_TRUE(a.ok()) << a.status();
      if (a.ok()) *logits = *std::move(a);
    }
    return rc;
  }

  // Exports `m` with `options`, runs the script and returns its logits (empty on failure).
  std::vector<double> hf_logits(model::DeepSeekV3& m, const std::vector<int32_t>& ids,
                                const HfExportOptions& options, const std::string& name) {
    save_and_export(m, path(name + "_ckpt"), path(name), options);
    if (::testing::Test::HasFatalFailure()) return {};
    std::string log;
    NpyArray logits;
    const int rc = run_script(path(name), m.config(), ids, &log, &logits);
    EXPECT_EQ(rc, 0) << "the HF reference loader failed on the export:\n" << log;
    if (rc != 0) return {};
    EXPECT_EQ(logits.shape, (std::vector<int64_t>{kBatch * kSeq, m.config().vocab_size}));
    return logits.to_doubles();
  }

  static std::vector<float> fathom_logits(model::DeepSeekV3& m, const std::vector<int32_t>& ids) {
    const Tensor tokens = Tensor::from_vector(ids, {kBatch, kSeq + m.config().mtp_depth + 1});
    return m.logits(tokens).to_vector<float>();
  }

  // The script's logits of an f32 export of a random model with `config` match the model's.
  void check_f32_export(const model::ModelConfig& config, uint64_t seed, uint64_t max_shard_bytes) {
    auto m = random_model(config, seed);
    const std::vector<int32_t> ids = random_tokens(config, seed + 1);
    HfExportOptions options;
    options.max_shard_bytes = max_shard_bytes;
    const std::vector<double> ref = hf_logits(*m, ids, options, "hf");
    ASSERT_FALSE(ref.empty());
    const std::vector<float> got = fathom_logits(*m, ids);
    ASSERT_EQ(got.size(), ref.size());
    // float64 reference vs the f32 model: f32 rounding through 3 blocks and the head.
    const Comparison c = compare(got, ref, 1e-4, 1e-5);
    EXPECT_EQ(c.bad, 0) << c.bad << " of " << ref.size() << " logits differ; worst at " << c.worst
                        << ": fathom " << got[c.worst] << " vs HF reference " << ref[c.worst]
                        << " (rtol 1e-4, atol 1e-5 x max|ref| " << c.max_ref << "); "
                        << describe(config);
    // Informative logits: a model that ignored its weights would give near-constant ones.
    EXPECT_GT(c.max_ref, 0.1) << describe(config);
  }

  fs::path dir_;
};

TEST_F(HfReferenceTest, TinyF32ExportGivesTheSameLogitsToAnHfLoader) {
  // 200 kB shards: several files and model.safetensors.index.json.
  check_f32_export(tiny_config(), 21, 200000);
  EXPECT_TRUE(fs::exists(path("hf/model.safetensors.index.json")));
}

TEST_F(HfReferenceTest, YarnWithoutQueryCompressionGivesTheSameLogitsToAnHfLoader) {
  check_f32_export(yarn_no_q_lora_config(), 22, uint64_t{1} << 30);
  absl::StatusOr<nlohmann::json> config = read_config_json(path("hf"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE((*config)["q_lora_rank"].is_null());
  EXPECT_EQ((*config)["rope_scaling"]["type"], "yarn");
}

// DeepSeek's FP8 release format: E4M3 weights with 128x128 weight_scale_inv, which the script
// dequantizes itself.
TEST_F(HfReferenceTest, Fp8ExportIsDequantizedByAnHfLoader) {
  // FFN sizes over 128 so that the dense and expert weights have several, ragged 128x128 scale
  // blocks in each direction (tiny's weights all fit one block).
  model::ModelConfig config = tiny_config();
  config.inter_dim = 200;
  config.moe_inter_dim = 136;
  // Matrices at their init scale: the 4x of the f32 tests makes the model chaotic enough that
  // FP8 rounding alone moves its logits by ~30% (and flips some routing choices), which would
  // hide the difference between right and wrong dequantization in the loose check below.
  auto m = random_model(config, 23, /*matrix_scale=*/1.0f);
  const std::vector<int32_t> ids = random_tokens(config, 24);
  HfExportOptions fp8;
  fp8.fp8 = true;
  const std::vector<double> ref = hf_logits(*m, ids, fp8, "hf");
  ASSERT_FALSE(ref.empty());

  // Against fathom's own import of the same directory (dequantized by trainer/hf_convert): the
  // same weights, so the f32 tolerance applies. Checks the script's block-scale decoding and
  // fathom's agree on every quantized tensor.
  ASSERT_TRUE(convert_hf_to_fathom(path("hf"), path("imported"), {}).ok());
  model::DeepSeekV3 dequantized(config, model::TrainingPrecision::kFp32, Device::cpu());
  ASSERT_TRUE(load_v3_weights(path("imported"), dequantized).ok());
  const std::vector<float> same_weights = fathom_logits(dequantized, ids);
  const Comparison tight = compare(same_weights, ref, 1e-4, 1e-5);
  EXPECT_EQ(tight.bad, 0) << tight.bad << " of " << ref.size() << " logits differ; worst at "
                          << tight.worst << ": fathom " << same_weights[tight.worst]
                          << " vs HF reference " << ref[tight.worst] << " (rtol 1e-4)";

  // Against the f32 model that was exported: E4M3 keeps 3 mantissa bits, so the weights move by
  // ~2.7% RMS (up to 2^-4 each), and the logits by about as much (3.8% measured); a near tie in the
  // routing could also send a token to another expert. So the whole-tensor relative RMS error is
  // bounded, not each entry: scales divided instead of multiplied give 140% (measured), scales
  // on the wrong blocks fail the entrywise check above.
  const std::vector<float> original = fathom_logits(*m, ids);
  const Comparison loose = compare(original, ref, 0, 0);
  EXPECT_LT(loose.rel_rms, 0.06) << "FP8 export vs the f32 model it came from";
  EXPECT_GT(loose.rel_rms, 0.005) << "the FP8 export seems not to have quantized anything";
}

// The script is a loader that refuses what an HF loader would refuse: a missing tensor, an
// unknown one, a wrong shape. (Otherwise a broken export could pass by luck.)
TEST_F(HfReferenceTest, ScriptRejectsMissingUnknownAndMisshapenTensors) {
  const model::ModelConfig config = tiny_config();
  auto m = random_model(config, 25);
  save_and_export(*m, path("ckpt"), path("hf"), HfExportOptions{});
  const std::vector<int32_t> ids = random_tokens(config, 26);

  // Rewrites the export as `to` with `edit` applied to its tensor list.
  auto rewrite = [&](const std::string& to,
                     const std::function<void(std::vector<data::StNamedTensor>&)>& edit) {
    absl::StatusOr<data::SafetensorsDir> st = data::SafetensorsDir::open(path("hf"));
    ASSERT_TRUE(st.ok()) << st.status();
    std::vector<data::StNamedTensor> tensors;
    for (const std::string& name : st->names()) tensors.push_back({name, *st->read(name)});
    edit(tensors);
    fs::create_directories(path(to));
    fs::copy_file(path("hf/config.json"), path(to + "/config.json"));
    ASSERT_TRUE(data::write_safetensors(path(to + "/model.safetensors"), tensors).ok());
  };
  auto rename = [](std::vector<data::StNamedTensor>& t, const std::string& from,
                   const std::string& to) {
    for (data::StNamedTensor& x : t) {
      if (x.name == from) x.name = to;
    }
  };
  const std::string bias = "model.layers.2.mlp.gate.e_score_correction_bias";
  rewrite("renamed", [&](auto& t) { rename(t, bias, "model.layers.2.mlp.gate.bias"); });
  rewrite("misshapen", [&](auto& t) {
    for (data::StNamedTensor& x : t) {
      if (x.name == "model.layers.0.self_attn.kv_b_proj.weight") {
        x.tensor = Tensor::zeros({x.tensor.shape()[1], x.tensor.shape()[0]}, DType::kF32);
      }
    }
  });

  std::string log;
  EXPECT_NE(run_script(path("renamed"), config, ids, &log, nullptr), 0);
  EXPECT_THAT(log, HasSubstr("missing tensor(s): " + bias));
  EXPECT_THAT(log, HasSubstr("unexpected tensor(s): model.layers.2.mlp.gate.bias"));
  log.clear();
  EXPECT_NE(run_script(path("misshapen"), config, ids, &log, nullptr), 0);
  EXPECT_THAT(log, HasSubstr("model.layers.0.self_attn.kv_b_proj.weight: shape"));
}

}  // namespace
}  // namespace fathom::trainer
