// Golden test of DeepSeekV3 against the independent PyTorch implementation
// tests/reference/deepseek_v3_reference.py (CONVENTIONS.md 7): the fp32 CPU model's logits, its 4
// losses and the gradient of EVERY parameter must match the float64 reference computed from the
// same weights, router biases and tokens. Skips when Debian's /usr/bin/python3 cannot import torch.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/tensor.h"
#include "model/config.h"
#include "model/deepseek_v3.h"
#include "model/module.h"
#include "model/precision.h"
#include "tests/model/presets.h"
#include "tests/reference/npy.h"
#include "tests/reference/python.h"

namespace fathom::model {
namespace {

namespace fs = std::filesystem;
using ::fathom::testing::kPython;
using ::fathom::testing::NpyArray;
using ::fathom::testing::python_has_torch;
using ::fathom::testing::run_command;
using ::fathom::testing::read_npy;
using ::fathom::testing::write_npy;


// A fresh directory under the system temp dir, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "fathom_golden_XXXXXX").string();
    if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string describe(const ModelConfig& c, int64_t batch, int64_t seq) {
  std::ostringstream os;
  os << "B=" << batch << " S=" << seq << " q_lora_rank=" << c.q_lora_rank
     << " score_func=" << score_func_name(c.score_func) << " n_expert_groups=" << c.n_expert_groups
     << " n_limited_groups=" << c.n_limited_groups << " n_dense_layers=" << c.n_dense_layers
     << " n_shared_experts=" << c.n_shared_experts << " mtp_depth=" << c.mtp_depth
     << " yarn=" << c.uses_yarn();
  return os.str();
}

// Expects |got - want| <= atol + rtol * |want| elementwise, atol = atol_fraction * max |want|
// (gradients span orders of magnitude between tensors; within one tensor, entries far below its
// largest are dominated by f32 rounding of the big ones). Reports the worst entry.
void expect_tensor_close(const std::string& name, const std::vector<float>& got,
                         const NpyArray& want_array, const std::vector<int64_t>& shape, double rtol,
                         double atol_fraction, const std::string& context) {
  ASSERT_EQ(want_array.shape, shape) << name << ": reference shape " << want_array.shape_str()
                                     << " differs from the model's; " << context;
  const std::vector<double> want = want_array.to_doubles();
  ASSERT_EQ(want.size(), got.size()) << name;
  double max_abs = 0;
  for (double w : want) max_abs = std::max(max_abs, std::abs(w));
  const double atol = std::max(atol_fraction * max_abs, 1e-30);
  int64_t bad = 0;
  size_t worst = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < want.size(); ++i) {
    const double err = std::abs(static_cast<double>(got[i]) - want[i]);
    const double allowed = atol + rtol * std::abs(want[i]);
    if (!(err <= allowed)) ++bad;  // NaN counts as bad
    const double excess = std::isnan(err) ? INFINITY : err / allowed;
    if (excess > worst_excess) {
      worst_excess = excess;
      worst = i;
    }
  }
  EXPECT_EQ(bad, 0) << name << ": " << bad << " of " << want.size()
                    << " entries differ from the reference; worst at flat index " << worst
                    << ": fathom " << got[worst] << " vs reference " << want[worst] << " (rtol "
                    << rtol << ", atol " << atol << " = " << atol_fraction << " x max|ref| "
                    << max_abs << "); " << context;
}

void expect_loss_close(const char* name, double got, double want, double rtol, double atol,
                       const std::string& context) {
  EXPECT_NEAR(got, want, atol + rtol * std::abs(want))
      << name << " loss: fathom " << got << " vs reference " << want << "; " << context;
}

// Builds the fp32 CPU model, perturbs it away from the trivial init (random norm weights, larger
// matrices, random router bias), runs forward_backward and logits, runs the reference on the same
// inputs and compares everything.
void check_against_reference(ModelConfig config, int64_t batch, int64_t seq, uint64_t seed) {
  if (!python_has_torch()) {
    GTEST_SKIP() << kPython << " cannot import torch and numpy (apt-get install python3-torch "
                 << "python3-numpy)";
  }
  const std::string root = testing::source_root();
  ASSERT_FALSE(root.empty()) << "cannot find the source tree (set FATHOM_SOURCE_DIR)";
  const std::string script = root + "/tests/reference/deepseek_v3_reference.py";
  ASSERT_TRUE(fs::exists(script)) << script;
  const std::string context = describe(config, batch, seq);

  DeepSeekV3 model(config, TrainingPrecision::kFp32, Device::cpu());
  model.init(seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (Parameter* p : model.parameters()) {
    std::vector<float> v = p->value.to_vector<float>();
    const bool is_norm =
        p->name.size() >= 11 && p->name.compare(p->name.size() - 11, 11, "norm.weight") == 0;
    for (float& x : v) x = is_norm ? 1.0f + 0.2f * normal(rng) : 4.0f * x;
    p->value.copy_from(Tensor::from_vector(v, p->value.shape()));
    ++p->version;
  }
  for (Buffer* b : model.buffers()) {
    std::vector<float> v = b->value.to_vector<float>();
    for (float& x : v) x = 0.05f * normal(rng);
    b->value.copy_from(Tensor::from_vector(v, b->value.shape()));
  }
  const int64_t width = seq + config.mtp_depth + 1;
  std::vector<int32_t> ids(static_cast<size_t>(batch * width));
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(config.vocab_size) - 1);
  for (int32_t& id : ids) id = token(rng);
  const Tensor tokens = Tensor::from_vector(ids, {batch, width});

  // Inputs for the reference.
  TempDir dir;
  ASSERT_FALSE(dir.path().empty()) << "mkdtemp failed";
  const std::string in = dir.path() + "/in";
  const std::string out = dir.path() + "/out";
  fs::create_directories(in);
  {
    std::ofstream yaml(in + "/config.yaml");
    yaml << model_config_to_yaml(config);
    ASSERT_TRUE(yaml.good());
  }
  auto save = [&](const std::string& name, const Tensor& t) {
    const std::vector<float> v = t.to_vector<float>();
    const std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
    const absl::Status s = write_npy(in + "/" + name + ".npy", shape, v.data());
    ASSERT_TRUE(s.ok()) << s;
  };
  for (Parameter* p : model.parameters()) save(p->name, p->value);
  for (Buffer* b : model.buffers()) save(b->name, b->value);
  {
    const absl::Status s = write_npy(in + "/tokens.npy", {batch, width}, ids.data());
    ASSERT_TRUE(s.ok()) << s;
  }

  // Fathom.
  for (Parameter* p : model.parameters()) {
    std::vector<float> g = p->grad.to_vector<float>();
    for (float x : g) ASSERT_EQ(x, 0.0f) << p->name << ": gradient not zero before the step";
  }
  const Losses losses = model.forward_backward(tokens, /*loss_scale=*/1.0);
  const Tensor logits = model.logits(tokens);

  // Reference.
  std::string log;
  const int rc = run_command(std::string(kPython) + " " + script + " " + in + " " + out, &log);
  ASSERT_EQ(rc, 0) << "reference failed:\n" << log;

  absl::StatusOr<NpyArray> ref_losses = read_npy(out + "/losses.npy");
  ASSERT_TRUE(ref_losses.ok()) << ref_losses.status();
  ASSERT_EQ(ref_losses->numel(), 4);
  const std::vector<double> l = ref_losses->to_doubles();
  expect_loss_close("total", losses.total, l[0], 1e-5, 0, context);
  expect_loss_close("lm", losses.lm, l[1], 1e-5, 0, context);
  expect_loss_close("mtp", losses.mtp, l[2], 1e-5, config.mtp_depth == 0 ? 1e-12 : 0, context);
  expect_loss_close("balance", losses.balance, l[3], 1e-4, 1e-10, context);
  // The losses must be informative: a random model predicts about uniformly.
  EXPECT_GT(l[1], 0.5 * std::log(static_cast<double>(config.vocab_size))) << context;
  EXPECT_GT(l[3], 0.0) << context;

  absl::StatusOr<NpyArray> ref_logits = read_npy(out + "/logits.npy");
  ASSERT_TRUE(ref_logits.ok()) << ref_logits.status();
  expect_tensor_close("logits", logits.to_vector<float>(), *ref_logits,
                      {batch * seq, config.vocab_size}, 1e-4, 1e-5, context);

  std::set<std::string> names;
  for (Parameter* p : model.parameters()) {
    ASSERT_TRUE(names.insert(p->name).second) << "duplicate parameter name " << p->name;
    absl::StatusOr<NpyArray> ref_grad = read_npy(out + "/grad." + p->name + ".npy");
    ASSERT_TRUE(ref_grad.ok()) << ref_grad.status();
    const std::vector<int64_t> shape(p->grad.shape().begin(), p->grad.shape().end());
    expect_tensor_close("grad " + p->name, p->grad.to_vector<float>(), *ref_grad, shape, 1e-4, 1e-5,
                        context);
  }
  // The reference writes one gradient per parameter of ITS model: the two name sets must agree.
  int64_t ref_grads = 0;
  for (const auto& entry : fs::directory_iterator(out)) {
    const std::string f = entry.path().filename().string();
    if (f.rfind("grad.", 0) != 0) continue;
    ++ref_grads;
    EXPECT_TRUE(names.count(f.substr(5, f.size() - 9)) == 1)
        << "the reference has a parameter the model lacks: " << f;
  }
  EXPECT_EQ(ref_grads, static_cast<int64_t>(names.size())) << context;
}

// The .npy helper that carries the golden data: round trips and the errors it must report.
TEST(NpyTest, RoundTripsEveryDtypeAndShape) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::vector<float> f = {1.5f, -2.25f, 3e-8f, 4e9f, -0.0f, 6.0f};
  const std::vector<double> d = {1.0 / 3.0, -1e-300, 2.5};
  const std::vector<int32_t> i = {-2147483647 - 1, 0, 2147483647};
  ASSERT_TRUE(write_npy(dir.path() + "/f.npy", {2, 3}, f.data()).ok());
  ASSERT_TRUE(write_npy(dir.path() + "/d.npy", {3}, d.data()).ok());
  ASSERT_TRUE(write_npy(dir.path() + "/i.npy", {1, 3, 1}, i.data()).ok());
  ASSERT_TRUE(write_npy(dir.path() + "/s.npy", {}, d.data()).ok());

  absl::StatusOr<NpyArray> a = read_npy(dir.path() + "/f.npy");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(*a->as<float>(), f);
  absl::StatusOr<NpyArray> b = read_npy(dir.path() + "/d.npy");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(*b->as<double>(), d);
  absl::StatusOr<NpyArray> c = read_npy(dir.path() + "/i.npy");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->shape, (std::vector<int64_t>{1, 3, 1}));
  EXPECT_EQ(*c->as<int32_t>(), i);
  EXPECT_EQ(c->to_doubles()[0], -2147483648.0);
  absl::StatusOr<NpyArray> s = read_npy(dir.path() + "/s.npy");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->shape.empty());
  EXPECT_EQ(s->to_doubles(), std::vector<double>{d[0]});

  // Data starts on a 64-byte boundary, as NumPy writes it.
  EXPECT_EQ((fs::file_size(dir.path() + "/f.npy") - f.size() * 4) % 64, 0u);
}

TEST(NpyTest, ReportsBadFilesByName) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string missing = dir.path() + "/missing.npy";
  absl::StatusOr<NpyArray> a = read_npy(missing);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(a.status().message().find(missing), std::string::npos) << a.status();

  const std::vector<float> f = {1, 2, 3, 4};
  const std::string good = dir.path() + "/good.npy";
  ASSERT_TRUE(write_npy(good, {4}, f.data()).ok());
  absl::StatusOr<NpyArray> wrong_type = read_npy(good);
  ASSERT_TRUE(wrong_type.ok());
  EXPECT_FALSE(wrong_type->as<int32_t>().ok());

  std::string bytes;
  {
    std::ifstream in(good, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  auto expect_rejected = [&](const std::string& name, const std::string& content,
                             const std::string& why) {
    const std::string path = dir.path() + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    absl::StatusOr<NpyArray> r = read_npy(path);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << name << ": " << r.status();
    EXPECT_NE(r.status().message().find(why), std::string::npos) << name << ": " << r.status();
  };
  expect_rejected("truncated.npy", bytes.substr(0, bytes.size() - 1), "data bytes");
  expect_rejected("not_npy.npy", "hello world", "magic");
  std::string fortran = bytes;
  fortran.replace(fortran.find("False"), 5, "True ");
  expect_rejected("fortran.npy", fortran, "fortran_order");
  std::string big_endian = bytes;
  big_endian[big_endian.find("<f4")] = '>';
  expect_rejected("big_endian.npy", big_endian, "'>f4'");
}

ModelConfig tiny() {
  absl::StatusOr<ModelConfig> config = load_model_config(testing::preset_path("tiny"));
  FATHOM_CHECK(config.ok()) << config.status();
  return *config;
}

// The tiny preset: MLA with query compression, a dense block then MoE blocks, sigmoid routing,
// group-limited top-2, a shared expert, route_scale 2.5, one MTP module.
TEST(GoldenTest, TinyPresetMatchesReference) { check_against_reference(tiny(), 2, 16, 1234); }

// V2-style options: direct query projection, softmax scores (weights not renormalised), one
// expert group.
TEST(GoldenTest, NoQueryCompressionSoftmaxOneGroupMatchesReference) {
  ModelConfig c = tiny();
  c.q_lora_rank = 0;
  c.score_func = ScoreFunc::kSoftmax;
  c.n_expert_groups = 1;
  c.n_limited_groups = 1;
  ASSERT_TRUE(validate(c).ok()) << validate(c);
  check_against_reference(c, 2, 16, 77);
}

// The remaining switches: YaRN frequencies and softmax scale, every block MoE, no shared expert,
// two MTP depths chained, top-3.
TEST(GoldenTest, YarnAllMoeDeepMtpMatchesReference) {
  ModelConfig c = tiny();
  c.max_seq_len = 64;
  c.original_seq_len = 8;
  c.rope_factor = 4.0;
  c.n_dense_layers = 0;
  c.n_layers = 2;
  c.n_shared_experts = 0;
  c.n_activated_experts = 3;
  c.mtp_depth = 2;
  ASSERT_TRUE(validate(c).ok()) << validate(c);
  ASSERT_TRUE(c.uses_yarn());
  check_against_reference(c, 3, 12, 5);
}

}  // namespace
}  // namespace fathom::model
