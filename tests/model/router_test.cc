// Tests of the MoE router (model/router.h): group-limited selection against a brute-force
// reference, gate normalisation, the bias (selection only), softmax scoring, tie-breaking, and the
// backward of the gate values and of the balance loss against finite differences.
#include "model/router.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <utility>
#include <vector>

#include "tests/kernels/test_util.h"
#include "tests/model/grad_check.h"

namespace fathom::model {
namespace {

using fathom::testing::expect_gradient_matches;
using fathom::testing::probe_loss;
using fathom::testing::random_tensor;

RouterConfig make_config(int64_t e, int64_t k, int64_t groups, int64_t limited, ScoreFunc f,
                         double route_scale) {
  return RouterConfig{.n_experts = e,
                      .top_k = k,
                      .n_groups = groups,
                      .n_limited_groups = limited,
                      .score_func = f,
                      .route_scale = route_scale};
}

std::string describe(const RouterConfig& c) {
  return "E=" + std::to_string(c.n_experts) + " K=" + std::to_string(c.top_k) +
         " groups=" + std::to_string(c.n_groups) +
         " limited=" + std::to_string(c.n_limited_groups) + " " +
         std::string(score_func_name(c.score_func)) +
         " route_scale=" + std::to_string(c.route_scale);
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Brute force: every group's top-2 sum from a full sort; groups ranked by a full sort of
// (score, -index); the experts of the kept groups ranked the same way.
std::vector<int32_t> reference_selection(const std::vector<float>& biased, const RouterConfig& c) {
  const int64_t per = c.n_experts / c.n_groups;
  std::vector<std::pair<float, int>> groups;
  for (int g = 0; g < c.n_groups; ++g) {
    std::vector<float> members(biased.begin() + g * per, biased.begin() + (g + 1) * per);
    std::sort(members.begin(), members.end(), std::greater<float>());
    groups.push_back({c.n_groups > 1 ? members[0] + members[1] : 0.0f, g});
  }
  auto better = [](const std::pair<float, int>& a, const std::pair<float, int>& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  };
  std::sort(groups.begin(), groups.end(), better);
  std::vector<std::pair<float, int>> experts;
  for (int j = 0; j < c.n_limited_groups; ++j) {
    const int g = groups[j].second;
    for (int i = g * per; i < (g + 1) * per; ++i) experts.push_back({biased[i], i});
  }
  std::sort(experts.begin(), experts.end(), better);
  std::vector<int32_t> out;
  for (int j = 0; j < c.top_k; ++j) out.push_back(experts[j].second);
  return out;
}

TEST(RouterTest, GroupLimitedSelectionMatchesBruteForce) {
  const RouterConfig cfg = make_config(16, 4, 4, 2, ScoreFunc::kSigmoid, 2.5);
  const int64_t t = 64;
  const Tensor logits = random_tensor({t, 16}, 11, DType::kF32, Device::cpu(), -3.0f, 3.0f);
  const Tensor bias = random_tensor({16}, 12, DType::kF32, Device::cpu(), -0.2f, 0.2f);
  const Routing r = route(logits, bias, cfg);
  const std::vector<float> l = logits.to_floats();
  const std::vector<float> b = bias.to_floats();
  const std::vector<int32_t> idx = r.topk_idx.to_vector<int32_t>();
  const std::vector<float> w = r.topk_weight.to_floats();
  int limited_by_groups = 0;  // tokens whose unrestricted top-K spans more than 2 groups
  for (int64_t row = 0; row < t; ++row) {
    std::vector<float> biased(16);
    for (int i = 0; i < 16; ++i) {
      biased[i] = static_cast<float>(sigmoid(l[row * 16 + i])) + b[i];
    }
    const std::vector<int32_t> want = reference_selection(biased, cfg);
    const std::vector<int32_t> got(idx.begin() + row * 4, idx.begin() + (row + 1) * 4);
    EXPECT_EQ(got, want) << describe(cfg) << " token " << row;
    std::set<int> groups_used;
    for (int32_t e : got) groups_used.insert(e / 4);
    EXPECT_LE(groups_used.size(), 2u) << "token " << row;
    const std::vector<int32_t> free =
        reference_selection(biased, make_config(16, 4, 1, 1, ScoreFunc::kSigmoid, 2.5));
    std::set<int> free_groups;
    for (int32_t e : free) free_groups.insert(e / 4);
    if (free_groups.size() > 2) ++limited_by_groups;
    // Gate values: unbiased scores of the selection, normalised, times route_scale.
    double sum = 0;
    for (int32_t e : got) sum += static_cast<float>(sigmoid(l[row * 16 + e]));
    double wsum = 0;
    for (int j = 0; j < 4; ++j) {
      const double s = static_cast<float>(sigmoid(l[row * 16 + got[j]]));
      EXPECT_NEAR(w[row * 4 + j], 2.5 * s / sum, 1e-6) << "token " << row << " slot " << j;
      wsum += w[row * 4 + j];
    }
    EXPECT_NEAR(wsum, 2.5, 1e-5) << "token " << row;
  }
  // The group limit actually changed some selections, so the check above is not vacuous.
  EXPECT_GT(limited_by_groups, 0);
}

TEST(RouterTest, SigmoidScoresAndNormalisedGates) {
  for (double rs : {1.0, 2.5}) {
    const RouterConfig cfg = make_config(8, 3, 1, 1, ScoreFunc::kSigmoid, rs);
    const Tensor logits = random_tensor({10, 8}, 21, DType::kF32, Device::cpu(), -2.0f, 2.0f);
    const Routing r = route(logits, Tensor::zeros({8}, DType::kF32), cfg);
    const std::vector<float> l = logits.to_floats();
    const std::vector<float> s = r.scores.to_floats();
    for (size_t i = 0; i < l.size(); ++i) EXPECT_NEAR(s[i], sigmoid(l[i]), 1e-7) << i;
    const std::vector<float> w = r.topk_weight.to_floats();
    const std::vector<int32_t> idx = r.topk_idx.to_vector<int32_t>();
    for (int row = 0; row < 10; ++row) {
      EXPECT_NEAR(w[row * 3] + w[row * 3 + 1] + w[row * 3 + 2], rs, 1e-5) << "rs " << rs;
      // Descending by score (no bias here).
      EXPECT_GE(s[row * 8 + idx[row * 3]], s[row * 8 + idx[row * 3 + 1]]);
      EXPECT_GE(s[row * 8 + idx[row * 3 + 1]], s[row * 8 + idx[row * 3 + 2]]);
    }
  }
}

TEST(RouterTest, BiasChangesSelectionButNotGateValues) {
  const RouterConfig cfg = make_config(8, 2, 1, 1, ScoreFunc::kSigmoid, 2.5);
  const int64_t t = 32;
  const Tensor logits = random_tensor({t, 8}, 31, DType::kF32, Device::cpu(), -2.0f, 2.0f);
  std::vector<float> bias(8, 0.0f);
  const Routing plain = route(logits, Tensor::from_floats(bias, {8}), cfg);
  bias[5] = 1.0f;  // larger than any score gap: expert 5 is always chosen
  const Routing biased = route(logits, Tensor::from_floats(bias, {8}), cfg);
  EXPECT_EQ(plain.scores.to_floats(), biased.scores.to_floats());
  const std::vector<int32_t> pi = plain.topk_idx.to_vector<int32_t>();
  const std::vector<int32_t> bi = biased.topk_idx.to_vector<int32_t>();
  const std::vector<float> s = biased.scores.to_floats();
  const std::vector<float> bw = biased.topk_weight.to_floats();
  int changed = 0;
  for (int64_t row = 0; row < t; ++row) {
    EXPECT_EQ(bi[row * 2], 5) << "token " << row << ": bias +1 must rank expert 5 first";
    if (pi[row * 2] != bi[row * 2] || pi[row * 2 + 1] != bi[row * 2 + 1]) ++changed;
    const double s0 = s[row * 8 + bi[row * 2]];
    const double s1 = s[row * 8 + bi[row * 2 + 1]];
    EXPECT_NEAR(bw[row * 2], 2.5 * s0 / (s0 + s1), 1e-6) << "token " << row;
    EXPECT_NEAR(bw[row * 2 + 1], 2.5 * s1 / (s0 + s1), 1e-6) << "token " << row;
  }
  EXPECT_GT(changed, t / 2);
}

TEST(RouterTest, SoftmaxScoresAreNotRenormalised) {
  const RouterConfig cfg = make_config(6, 2, 3, 2, ScoreFunc::kSoftmax, 1.5);
  const int64_t t = 12;
  const Tensor logits = random_tensor({t, 6}, 41, DType::kF32, Device::cpu(), -2.0f, 2.0f);
  const Tensor bias = random_tensor({6}, 42, DType::kF32, Device::cpu(), -0.1f, 0.1f);
  const Routing r = route(logits, bias, cfg);
  const std::vector<float> l = logits.to_floats();
  const std::vector<float> b = bias.to_floats();
  const std::vector<float> s = r.scores.to_floats();
  const std::vector<float> w = r.topk_weight.to_floats();
  const std::vector<int32_t> idx = r.topk_idx.to_vector<int32_t>();
  for (int64_t row = 0; row < t; ++row) {
    double z = 0;
    for (int i = 0; i < 6; ++i) z += std::exp(double{l[row * 6 + i]});
    std::vector<float> biased(6);
    for (int i = 0; i < 6; ++i) {
      const double p = std::exp(double{l[row * 6 + i]}) / z;
      EXPECT_NEAR(s[row * 6 + i], p, 1e-6) << "token " << row << " expert " << i;
      biased[i] = s[row * 6 + i] + b[i];
    }
    const std::vector<int32_t> want = reference_selection(biased, cfg);
    EXPECT_EQ(idx[row * 2], want[0]) << "token " << row;
    EXPECT_EQ(idx[row * 2 + 1], want[1]) << "token " << row;
    for (int j = 0; j < 2; ++j) {
      EXPECT_NEAR(w[row * 2 + j], 1.5 * s[row * 6 + idx[row * 2 + j]], 1e-6) << "token " << row;
    }
    EXPECT_LT(w[row * 2] + w[row * 2 + 1], 1.5) << "softmax gates are not normalised to 1";
  }
}

TEST(RouterTest, TiesGoToLowerIndex) {
  // All equal: experts 0, 1, 2; with groups, groups 0 and 1.
  {
    const RouterConfig cfg = make_config(8, 3, 1, 1, ScoreFunc::kSigmoid, 1.0);
    const Routing r =
        route(Tensor::zeros({2, 8}, DType::kF32), Tensor::zeros({8}, DType::kF32), cfg);
    EXPECT_EQ(r.topk_idx.to_vector<int32_t>(), (std::vector<int32_t>{0, 1, 2, 0, 1, 2}));
  }
  {
    // Groups of 2: {0,1} {2,3} {4,5} {6,7}. Groups 1 and 3 tie for best; one group allowed.
    const RouterConfig cfg = make_config(8, 2, 4, 1, ScoreFunc::kSigmoid, 1.0);
    const std::vector<float> l = {0, 0, 1, 1, 0, 0, 1, 1};
    const Routing r = route(Tensor::from_floats(l, {1, 8}), Tensor::zeros({8}, DType::kF32), cfg);
    EXPECT_EQ(r.topk_idx.to_vector<int32_t>(), (std::vector<int32_t>{2, 3}));
  }
  {
    // Experts 6 and 2 tie on top; 4 and 1 tie next (K = 3 takes 1).
    const RouterConfig cfg = make_config(8, 3, 1, 1, ScoreFunc::kSoftmax, 1.0);
    const std::vector<float> l = {0, 0.5f, 2, 0, 0.5f, 0, 2, 0};
    const Routing r = route(Tensor::from_floats(l, {1, 8}), Tensor::zeros({8}, DType::kF32), cfg);
    EXPECT_EQ(r.topk_idx.to_vector<int32_t>(), (std::vector<int32_t>{2, 6, 1}));
  }
}

TEST(RouterTest, RouteFixedReproducesRoute) {
  const RouterConfig cfg = make_config(8, 2, 4, 2, ScoreFunc::kSigmoid, 2.5);
  const Tensor logits = random_tensor({9, 8}, 51);
  const Routing r =
      route(logits, random_tensor({8}, 52, DType::kF32, Device::cpu(), -0.1f, 0.1f), cfg);
  const Routing f = route_fixed(logits, r.topk_idx, cfg);
  EXPECT_EQ(f.scores.to_floats(), r.scores.to_floats());
  EXPECT_EQ(f.topk_idx.to_vector<int32_t>(), r.topk_idx.to_vector<int32_t>());
  EXPECT_EQ(f.topk_weight.to_floats(), r.topk_weight.to_floats());
}

class RouterBackwardTest : public ::testing::TestWithParam<ScoreFunc> {};

TEST_P(RouterBackwardTest, GateValuesMatchFiniteDifferences) {
  const RouterConfig cfg = make_config(8, 3, 4, 2, GetParam(), 2.5);
  const int64_t t = 6;
  Tensor logits = random_tensor({t, 8}, 61, DType::kF32, Device::cpu(), -2.0f, 2.0f);
  const Routing r = route(logits, Tensor::zeros({8}, DType::kF32), cfg);
  const Tensor probe = random_tensor({t, 3}, 62);
  Tensor d_logits = Tensor::empty({t, 8}, DType::kF32);
  route_backward(probe, r, cfg, d_logits);
  // Selection held fixed: a finite-difference step must not flip it.
  expect_gradient_matches("d_logits " + describe(cfg), logits, d_logits, [&] {
    return probe_loss(route_fixed(logits, r.topk_idx, cfg).topk_weight, probe);
  });
}

TEST_P(RouterBackwardTest, BalanceLossMatchesFiniteDifferences) {
  const RouterConfig cfg = make_config(8, 2, 4, 2, GetParam(), 2.5);
  const int64_t seq_len = 4;
  const int64_t t = 3 * seq_len;
  const double alpha = 0.5;
  const double grad = 2.0;
  Tensor logits = random_tensor({t, 8}, 71, DType::kF32, Device::cpu(), -2.0f, 2.0f);
  const Routing r = route(logits, Tensor::zeros({8}, DType::kF32), cfg);
  // (+=): start from a known non-zero gradient.
  const Tensor base = random_tensor({t, 8}, 72);
  Tensor d_logits = base.clone();
  balance_loss_backward(r, seq_len, alpha, grad, cfg, d_logits);
  std::vector<float> delta = d_logits.to_floats();
  const std::vector<float> b = base.to_floats();
  for (size_t i = 0; i < delta.size(); ++i) delta[i] -= b[i];
  expect_gradient_matches(
      "balance d_logits " + describe(cfg), logits, Tensor::from_floats(delta, {t, 8}), [&] {
        return grad * balance_loss(route_fixed(logits, r.topk_idx, cfg), seq_len, alpha, cfg);
      });
}

INSTANTIATE_TEST_SUITE_P(ScoreFuncs, RouterBackwardTest,
                         ::testing::Values(ScoreFunc::kSigmoid, ScoreFunc::kSoftmax),
                         [](const ::testing::TestParamInfo<ScoreFunc>& info) {
                           return std::string(score_func_name(info.param));
                         });

TEST(RouterTest, RejectsBadInputs) {
  const RouterConfig cfg = make_config(8, 2, 4, 2, ScoreFunc::kSigmoid, 1.0);
  const Tensor logits = random_tensor({3, 8}, 81);
  EXPECT_THROW(route(logits, Tensor::zeros({7}, DType::kF32), cfg), Error);
  EXPECT_THROW(route(random_tensor({3, 7}, 82), Tensor::zeros({8}, DType::kF32), cfg), Error);
  std::vector<float> bad = logits.to_floats();
  bad[5] = std::nanf("");
  EXPECT_THROW(route(Tensor::from_floats(bad, {3, 8}), Tensor::zeros({8}, DType::kF32), cfg),
               Error);
  // top-5 cannot fit in 2 groups of 2 experts.
  EXPECT_THROW(route(logits, Tensor::zeros({8}, DType::kF32),
                     make_config(8, 5, 4, 2, ScoreFunc::kSigmoid, 1.0)),
               Error);
  const std::vector<int32_t> twice = {1, 1, 0, 2, 3, 4};
  EXPECT_THROW(route_fixed(logits, Tensor::from_vector(twice, {3, 2}), cfg), Error);
  const Routing r = route(logits, Tensor::zeros({8}, DType::kF32), cfg);
  EXPECT_THROW(balance_loss(r, 2, 1.0, cfg), Error);  // 2 does not divide 3 tokens
}

}  // namespace
}  // namespace fathom::model
