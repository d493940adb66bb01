// The basic layers (model/module.h, linear.h, norm.h, embedding.h, mlp.h, head.h): gradient checks
// against central differences, deferred weight gradients, and the FP8 / BF16 Linear against f32.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/ops/elementwise.h"
#include "model/embedding.h"
#include "model/head.h"
#include "model/linear.h"
#include "model/mlp.h"
#include "model/module.h"
#include "model/norm.h"
#include "tests/kernels/test_util.h"
#include "tests/model/grad_check.h"

namespace fathom::model {
namespace {

using testing::expect_gradient_matches;
using testing::probe_loss;
using testing::random_tensor;

Tensor zeros_like(const Tensor& x) { return Tensor::zeros(x.shape(), DType::kF32, x.device()); }

TEST(ModuleTest, InitNormalIsKeyedByNameAndSeedNotOrder) {
  Parameter a = make_parameter("layers.0.attn.wo.weight", {64, 32}, Device::cpu());
  Parameter b = make_parameter("layers.0.attn.wo.weight", {64, 32}, Device::cpu());
  Parameter c = make_parameter("layers.1.attn.wo.weight", {64, 32}, Device::cpu());
  init_normal(c, 7, 0.02);
  init_normal(a, 7, 0.02);
  init_normal(b, 7, 0.02);
  EXPECT_EQ(a.value.to_floats(), b.value.to_floats());
  EXPECT_NE(a.value.to_floats(), c.value.to_floats());
  EXPECT_EQ(a.version, 1u);
  // Sample moments of 2048 draws: mean ~0, std ~0.02.
  double sum = 0, sq = 0;
  for (float v : a.value.to_floats()) {
    sum += v;
    sq += static_cast<double>(v) * v;
  }
  const double mean = sum / 2048, std = std::sqrt(sq / 2048 - mean * mean);
  EXPECT_NEAR(mean, 0.0, 3 * 0.02 / std::sqrt(2048.0));
  EXPECT_NEAR(std, 0.02, 0.002);
}

// A rank holding rows [2, 5) of a global (6, 4) tensor draws exactly those rows.
TEST(ModuleTest, InitNormalWithOffsetMatchesTheGlobalTensor) {
  Parameter whole = make_parameter("experts.w1.weight", {6, 4}, Device::cpu());
  Parameter part = make_parameter("experts.w1.weight", {3, 4}, Device::cpu());
  init_normal(whole, 3, 0.1);
  init_normal(part, 3, 0.1, /*element_offset=*/2 * 4);
  EXPECT_EQ(part.value.to_floats(), whole.value.narrow(2, 3).to_floats());
}

TEST(ModuleTest, WeightGradStoreRunsFlushedGroupsInOrder) {
  WeightGradStore store;
  std::vector<int> order;
  store.push([&] { order.push_back(1); });
  store.push([&] { order.push_back(2); });
  store.flush();
  store.push([&] { order.push_back(3); });
  EXPECT_EQ(store.size(), 1);
  EXPECT_TRUE(store.has_pending());
  store.pop();
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
  store.run_all();
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(store.size(), 0);
  EXPECT_THAT(testing::error_of([&] { store.pop(); }), ::testing::HasSubstr("no flushed"));
}

TEST(LinearTest, GradientsMatchFiniteDifferences) {
  Linear lin("w.weight", 5, 7, TrainingPrecision::kFp32, Device::cpu());
  init_normal(lin.weight, 1, 0.5);
  Tensor x = random_tensor({3, 7}, 2);
  const Tensor probe = random_tensor({3, 5}, 3);
  const auto loss = [&] {
    Tensor y = Tensor::empty({3, 5}, DType::kF32);
    lin.forward(x, y);
    return probe_loss(y, probe);
  };
  Tensor dx = zeros_like(x);
  lin.backward_input(probe, dx);
  lin.backward_weight(probe, x);
  expect_gradient_matches("dx", x, dx, loss);
  expect_gradient_matches("dW", lin.weight.value, lin.weight.grad, loss);
}

// FP8 and BF16 Linears agree with f32 to their formats' precision, in all three GEMMs, and the
// FP8 forward equals the f32 GEMM of the quantize-dequantized operands exactly.
TEST(LinearTest, LowPrecisionModesTrackFp32) {
  const int64_t t = 130, in = 160, out = 140;  // ragged 128-blocks on every dim
  const Tensor x = random_tensor({t, in}, 4);
  const Tensor dy = random_tensor({t, out}, 5);
  std::vector<float> ref_y, ref_dx, ref_dw;
  for (TrainingPrecision p :
       {TrainingPrecision::kFp32, TrainingPrecision::kBf16, TrainingPrecision::kFp8}) {
    Linear lin("w.weight", out, in, p, Device::cpu());
    init_normal(lin.weight, 6, 0.05);
    Tensor y = Tensor::empty({t, out}, DType::kF32);
    Tensor dx = Tensor::empty({t, in}, DType::kF32);
    lin.forward(x, y);
    lin.backward_input(dy, dx);
    lin.backward_weight(dy, x);
    if (p == TrainingPrecision::kFp32) {
      ref_y = y.to_floats();
      ref_dx = dx.to_floats();
      ref_dw = lin.weight.grad.to_floats();
      continue;
    }
    // Relative error of the whole result (Frobenius): bf16 ~ 2^-9, e4m3 ~ 2^-4 per operand.
    const double bound = p == TrainingPrecision::kBf16 ? 1e-2 : 6e-2;
    const auto rel = [](const std::vector<float>& a, const std::vector<float>& b) {
      double num = 0, den = 0;
      for (size_t i = 0; i < a.size(); ++i) {
        num += (a[i] - b[i]) * static_cast<double>(a[i] - b[i]);
        den += static_cast<double>(b[i]) * b[i];
      }
      return std::sqrt(num / den);
    };
    const char* name = p == TrainingPrecision::kBf16 ? "bf16" : "fp8";
    EXPECT_LT(rel(y.to_floats(), ref_y), bound) << name << " forward";
    EXPECT_LT(rel(dx.to_floats(), ref_dx), bound) << name << " input grad";
    EXPECT_LT(rel(lin.weight.grad.to_floats(), ref_dw), bound) << name << " weight grad";
    EXPECT_GT(rel(y.to_floats(), ref_y), 0.0) << name << " is not running at low precision";
  }
}

TEST(LinearTest, WorkingCopyFollowsParameterVersion) {
  Linear lin("w.weight", 4, 4, TrainingPrecision::kFp8, Device::cpu());
  init_normal(lin.weight, 1, 0.5);
  const Tensor x = random_tensor({2, 4}, 2);
  Tensor y1 = Tensor::empty({2, 4}, DType::kF32);
  Tensor y2 = Tensor::empty({2, 4}, DType::kF32);
  lin.forward(x, y1);
  scale(lin.weight.value, 2.0f);
  ++lin.weight.version;
  lin.forward(x, y2);
  const std::vector<float> a = y1.to_floats(), b = y2.to_floats();
  for (size_t i = 0; i < a.size(); ++i) EXPECT_FLOAT_EQ(b[i], 2 * a[i]) << i;
}

TEST(GroupedLinearTest, GradientsMatchFiniteDifferencesWithEmptyGroup) {
  const std::vector<int64_t> counts = {2, 0, 3};
  GroupedLinear lin("experts.w1.weight", 3, 4, 6, TrainingPrecision::kFp32, Device::cpu());
  init_normal(lin.weight, 1, 0.5);
  Tensor x = random_tensor({5, 6}, 2);
  const Tensor probe = random_tensor({5, 4}, 3);
  const auto loss = [&] {
    Tensor y = Tensor::empty({5, 4}, DType::kF32);
    lin.forward(x, counts, y);
    return probe_loss(y, probe);
  };
  Tensor dx = zeros_like(x);
  lin.backward_input(probe, counts, dx);
  lin.backward_weight(probe, x, counts);
  expect_gradient_matches("dx", x, dx, loss);
  expect_gradient_matches("dW", lin.weight.value, lin.weight.grad, loss);
  // Expert 1 received no tokens: its gradient stays exactly zero.
  const std::vector<float> g = lin.weight.grad.to_floats();
  for (int i = 24; i < 48; ++i) EXPECT_EQ(g[i], 0.0f) << i;
}

TEST(GroupedLinearTest, Fp8WeightGradientMatchesPerExpertDenseFp8) {
  const std::vector<int64_t> counts = {130, 0, 7};
  GroupedLinear grouped("e.weight", 3, 32, 48, TrainingPrecision::kFp8, Device::cpu());
  const Tensor x = random_tensor({137, 48}, 4);
  const Tensor dy = random_tensor({137, 32}, 5);
  grouped.backward_weight(dy, x, counts);
  int64_t row = 0;
  for (int g = 0; g < 3; ++g) {
    Linear dense("d.weight", 32, 48, TrainingPrecision::kFp8, Device::cpu());
    if (counts[g] > 0) dense.backward_weight(dy.narrow(row, counts[g]), x.narrow(row, counts[g]));
    row += counts[g];
    const std::vector<float> want = dense.weight.grad.to_floats();
    const std::vector<float> got = grouped.weight.grad.narrow(g, 1).to_floats();
    EXPECT_EQ(got, want) << "expert " << g;
  }
}

TEST(RmsNormTest, GradientsMatchAndRecomputeIsExact) {
  RmsNorm norm("n.weight", 6, 1e-6f, Device::cpu());
  Parameter& w = norm.weight;
  w.value.copy_from(random_tensor({6}, 9, DType::kF32, Device::cpu(), 0.5f, 1.5f));
  Tensor x = random_tensor({4, 6}, 1);
  const Tensor probe = random_tensor({4, 6}, 2);
  RmsNorm::Saved saved;
  Tensor y = Tensor::empty({4, 6}, DType::kF32);
  norm.forward(x, y, saved);
  Tensor again = Tensor::empty({4, 6}, DType::kF32);
  norm.recompute(saved, again);
  EXPECT_EQ(y.to_floats(), again.to_floats());
  const auto loss = [&] {
    RmsNorm::Saved s;
    Tensor out = Tensor::empty({4, 6}, DType::kF32);
    norm.forward(x, out, s);
    return probe_loss(out, probe);
  };
  Tensor dx = zeros_like(x);
  norm.backward(probe, saved, dx);
  expect_gradient_matches("dx", x, dx, loss);
  expect_gradient_matches("dw", w.value, w.grad, loss);
}

TEST(MlpTest, GradientsMatchAndDeferredEqualsImmediate) {
  Mlp mlp("ffn", 6, 10, TrainingPrecision::kFp32, Device::cpu());
  mlp.init(3, 0.4);
  Tensor x = random_tensor({5, 6}, 4);
  const Tensor probe = random_tensor({5, 6}, 5);
  const auto loss = [&] {
    Mlp::Saved s;
    Tensor y = Tensor::empty({5, 6}, DType::kF32);
    mlp.forward(x, y, s);
    return probe_loss(y, probe);
  };
  Mlp::Saved saved;
  Tensor y = Tensor::empty({5, 6}, DType::kF32);
  mlp.forward(x, y, saved);
  Tensor dx = zeros_like(x);
  mlp.backward(probe, saved, dx, nullptr);
  expect_gradient_matches("dx", x, dx, loss);
  ParameterList params;
  mlp.append_parameters(params);
  ASSERT_EQ(params.size(), 3u);
  std::vector<std::vector<float>> immediate;
  for (Parameter* p : params) {
    expect_gradient_matches(p->name, p->value, p->grad, loss);
    immediate.push_back(p->grad.to_floats());
    fill(p->grad, 0.0f);
  }
  WeightGradStore store;
  mlp.backward(probe, saved, dx, &store);
  for (Parameter* p : params) {
    for (float g : p->grad.to_floats()) ASSERT_EQ(g, 0.0f) << p->name << " was not deferred";
  }
  store.run_all();
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(params[i]->grad.to_floats(), immediate[i]) << params[i]->name;
  }
}

TEST(EmbeddingAndHeadTest, GradientsMatchFiniteDifferences) {
  Embedding embed("embed.weight", 11, 4, Device::cpu());
  OutputHead head(11, 4, Device::cpu());
  init_normal(embed.weight, 1, 0.5);
  init_normal(head.weight, 1, 0.5);
  const Tensor ids = Tensor::from_vector<int32_t>({3, 0, 10, 3}, {4});
  const Tensor targets = Tensor::from_vector<int32_t>({1, OutputHead::kIgnoreIndex, 4, 9}, {4});
  const Tensor dloss = Tensor::from_floats({0.5f, 0.25f, 1.0f, 2.0f}, {4});
  const auto loss = [&] {
    Tensor h = Tensor::empty({4, 4}, DType::kF32);
    embed.forward(ids, h);
    OutputHead::Saved s;
    return probe_loss(head.forward(h, targets, s), dloss);
  };
  Tensor h = Tensor::empty({4, 4}, DType::kF32);
  embed.forward(ids, h);
  OutputHead::Saved saved;
  const Tensor per_token = head.forward(h, targets, saved);
  EXPECT_EQ(per_token.to_floats()[1], 0.0f) << "ignored target must contribute no loss";
  Tensor dh = zeros_like(h);
  head.backward(dloss, saved, dh);
  embed.backward_weight_or_defer(ids, dh, nullptr);
  expect_gradient_matches("head", head.weight.value, head.weight.grad, loss);
  expect_gradient_matches("embed", embed.weight.value, embed.weight.grad, loss);
  // Logits agree with the fused loss: loss_t = logsumexp(logits_t) - logits_t[target].
  const std::vector<float> logits = head.logits(h).to_floats();
  double lse = 0, mx = -1e30;
  for (int v = 0; v < 11; ++v) mx = std::max<double>(mx, logits[v]);
  for (int v = 0; v < 11; ++v) lse += std::exp(logits[v] - mx);
  EXPECT_NEAR(per_token.to_floats()[0], mx + std::log(lse) - logits[1], 1e-5);
}

}  // namespace
}  // namespace fathom::model
