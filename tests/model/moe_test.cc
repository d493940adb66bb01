// Tests of the DeepSeekMoE layer (model/moe.h) and the LocalDispatcher (model/token_dispatcher.h):
// forward against a naive per-token reference, gradient checks of dx and every parameter with the
// routing held fixed, the sequence-wise balance loss on a hand-computed case and its gradient, the
// expert-load counter and the auxiliary-loss-free bias update, the dispatcher's permutations and
// their adjoints, deferred weight gradients, and the bf16 / fp8 precisions against fp32.
#include "model/moe.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "model/token_dispatcher.h"
#include "tests/kernels/test_util.h"
#include "tests/model/grad_check.h"

namespace fathom::model {
namespace {

using fathom::testing::expect_gradient_matches;
using fathom::testing::probe_loss;
using fathom::testing::random_tensor;

ModelConfig small_config(int64_t n_shared, ScoreFunc score_func) {
  ModelConfig c;
  c.dim = 16;
  c.moe_inter_dim = 8;
  c.n_routed_experts = 8;
  c.n_shared_experts = n_shared;
  c.n_activated_experts = 2;
  c.n_expert_groups = 4;
  c.n_limited_groups = 2;
  c.score_func = score_func;
  c.route_scale = 2.5;
  c.balance_loss_alpha = 0.01;
  return c;
}

std::string describe(const ModelConfig& c, TrainingPrecision p = TrainingPrecision::kFp32) {
  return "dim=" + std::to_string(c.dim) + " E=" + std::to_string(c.n_routed_experts) +
         " K=" + std::to_string(c.n_activated_experts) +
         " shared=" + std::to_string(c.n_shared_experts) + " " +
         std::string(score_func_name(c.score_func)) + " " + std::string(precision_name(p));
}

double silu(double g) { return g / (1.0 + std::exp(-g)); }

// SwiGLU of one row with weights w1, w3 (inter, dim) and w2 (dim, inter) at the given offsets.
std::vector<double> swiglu_row(const float* x, const float* w1, const float* w2, const float* w3,
                               int64_t dim, int64_t inter) {
  std::vector<double> h(inter);
  for (int64_t j = 0; j < inter; ++j) {
    double g = 0, u = 0;
    for (int64_t i = 0; i < dim; ++i) {
      g += double{w1[j * dim + i]} * x[i];
      u += double{w3[j * dim + i]} * x[i];
    }
    h[j] = silu(g) * u;
  }
  std::vector<double> out(dim);
  for (int64_t i = 0; i < dim; ++i) {
    for (int64_t j = 0; j < inter; ++j) out[i] += double{w2[i * inter + j]} * h[j];
  }
  return out;
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (float v : t.to_floats()) m = std::max(m, std::abs(double{v}));
  return m;
}

double rel_l2(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += (double{got[i]} - want[i]) * (double{got[i]} - want[i]);
    den += double{want[i]} * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

TEST(MoeTest, ForwardMatchesNaiveReference) {
  for (int64_t n_shared : {0, 1}) {
    const ModelConfig cfg = small_config(n_shared, ScoreFunc::kSigmoid);
    Moe moe("layers.1.ffn", cfg, TrainingPrecision::kFp32, Device::cpu());
    moe.init(7, 0.3);
    const int64_t t = 8;
    const int64_t dim = cfg.dim;
    const int64_t inter = cfg.moe_inter_dim;
    const int64_t k = cfg.n_activated_experts;
    const Tensor x = random_tensor({t, dim}, 1);
    Tensor y = Tensor::empty({t, dim}, DType::kF32);
    Moe::Saved saved;
    moe.forward(x, 4, y, saved);

    // Gate logits by hand; the router itself is tested in router_test.
    const std::vector<float> xv = x.to_floats();
    const std::vector<float> wg = moe.gate.weight.value.to_floats();
    std::vector<float> logits(t * cfg.n_routed_experts);
    for (int64_t row = 0; row < t; ++row) {
      for (int64_t e = 0; e < cfg.n_routed_experts; ++e) {
        double acc = 0;
        for (int64_t i = 0; i < dim; ++i) acc += double{xv[row * dim + i]} * wg[e * dim + i];
        logits[row * cfg.n_routed_experts + e] = static_cast<float>(acc);
      }
    }
    const Routing r = route(Tensor::from_floats(logits, {t, cfg.n_routed_experts}),
                            moe.gate_bias.value, router_config(cfg));
    ASSERT_EQ(r.topk_idx.to_vector<int32_t>(), saved.routing.topk_idx.to_vector<int32_t>());
    const std::vector<int32_t> idx = r.topk_idx.to_vector<int32_t>();
    const std::vector<float> w = r.topk_weight.to_floats();
    const std::vector<float> w1 = moe.w1.weight.value.to_floats();
    const std::vector<float> w2 = moe.w2.weight.value.to_floats();
    const std::vector<float> w3 = moe.w3.weight.value.to_floats();
    std::vector<float> want(t * dim, 0.0f);
    for (int64_t row = 0; row < t; ++row) {
      std::vector<double> acc(dim, 0.0);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t e = idx[row * k + j];
        const std::vector<double> o =
            swiglu_row(&xv[row * dim], &w1[e * inter * dim], &w2[e * dim * inter],
                       &w3[e * inter * dim], dim, inter);
        for (int64_t i = 0; i < dim; ++i) acc[i] += w[row * k + j] * o[i];
      }
      if (n_shared > 0) {
        const std::vector<double> o = swiglu_row(
            &xv[row * dim], moe.shared_experts->w1.weight.value.to_floats().data(),
            moe.shared_experts->w2.weight.value.to_floats().data(),
            moe.shared_experts->w3.weight.value.to_floats().data(), dim, n_shared * inter);
        for (int64_t i = 0; i < dim; ++i) acc[i] += o[i];
      }
      for (int64_t i = 0; i < dim; ++i) want[row * dim + i] = static_cast<float>(acc[i]);
    }
    fathom::testing::expect_close(y.to_floats(), want, {1e-5, 1e-4}, describe(cfg));
  }
}

TEST(MoeTest, ParameterNamesAndShapes) {
  const ModelConfig cfg = small_config(2, ScoreFunc::kSigmoid);
  Moe moe("layers.3.ffn", cfg, TrainingPrecision::kFp32, Device::cpu());
  ParameterList params;
  moe.append_parameters(params);
  std::vector<std::string> names;
  for (Parameter* p : params) names.push_back(p->name + shape_str(p->value.shape()));
  EXPECT_EQ(names, (std::vector<std::string>{
                       "layers.3.ffn.gate.weight[8, 16]",
                       "layers.3.ffn.experts.w1.weight[8, 8, 16]",
                       "layers.3.ffn.experts.w2.weight[8, 16, 8]",
                       "layers.3.ffn.experts.w3.weight[8, 8, 16]",
                       "layers.3.ffn.shared_experts.w1.weight[16, 16]",
                       "layers.3.ffn.shared_experts.w2.weight[16, 16]",
                       "layers.3.ffn.shared_experts.w3.weight[16, 16]",
                   }));
  BufferList buffers;
  moe.append_buffers(buffers);
  ASSERT_EQ(buffers.size(), 1u);
  EXPECT_EQ(buffers[0]->name, "layers.3.ffn.gate.bias");
  EXPECT_EQ(buffers[0]->value.shape(), Shape({8}));
  Moe no_shared("layers.3.ffn", small_config(0, ScoreFunc::kSigmoid), TrainingPrecision::kFp32,
                Device::cpu());
  ParameterList fewer;
  no_shared.append_parameters(fewer);
  EXPECT_EQ(fewer.size(), 4u);
}

struct GradCase {
  int64_t n_shared;
  ScoreFunc score_func;
};

class MoeGradTest : public ::testing::TestWithParam<GradCase> {};

TEST_P(MoeGradTest, GradientsMatchFiniteDifferences) {
  const ModelConfig cfg = small_config(GetParam().n_shared, GetParam().score_func);
  Moe moe("layers.1.ffn", cfg, TrainingPrecision::kFp32, Device::cpu());
  moe.init(3, 0.3);
  const int64_t t = 8;
  const int64_t seq_len = 4;
  // The balance loss enters with a weight large enough to matter next to sum(probe * y).
  const double balance_grad = 20.0;
  Tensor x = random_tensor({t, cfg.dim}, 5);
  const Tensor probe = random_tensor({t, cfg.dim}, 6);
  Tensor y = Tensor::empty({t, cfg.dim}, DType::kF32);
  Moe::Saved saved;
  moe.forward(x, seq_len, y, saved);
  moe.set_fixed_routing(saved.routing.topk_idx);
  const auto loss = [&] {
    Moe::Saved s;
    Tensor out = Tensor::empty({t, cfg.dim}, DType::kF32);
    moe.forward(x, seq_len, out, s);
    return probe_loss(out, probe) + balance_grad * s.balance_loss;
  };
  Tensor dx = Tensor::empty({t, cfg.dim}, DType::kF32);
  moe.backward(probe, balance_grad, saved, dx, nullptr);
  expect_gradient_matches("dx " + describe(cfg), x, dx, loss);
  ParameterList params;
  moe.append_parameters(params);
  for (Parameter* p : params) {
    expect_gradient_matches(p->name + " " + describe(cfg), p->value, p->grad, loss);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, MoeGradTest,
                         ::testing::Values(GradCase{0, ScoreFunc::kSigmoid},
                                           GradCase{1, ScoreFunc::kSigmoid},
                                           GradCase{0, ScoreFunc::kSoftmax},
                                           GradCase{2, ScoreFunc::kSoftmax}),
                         [](const ::testing::TestParamInfo<GradCase>& info) {
                           return std::string(score_func_name(info.param.score_func)) + "_shared" +
                                  std::to_string(info.param.n_shared);
                         });

// T = 8, E = 4, K = 2, two sequences of 4. dim = 4 and x_t = e_t (one-hot) for the first
// sequence, so logits[t, e] = W_g[e, t] are set directly; the second sequence is x = 0.
TEST(MoeTest, BalanceLossHandComputed) {
  ModelConfig cfg;
  cfg.dim = 4;
  cfg.moe_inter_dim = 4;
  cfg.n_routed_experts = 4;
  cfg.n_shared_experts = 0;
  cfg.n_activated_experts = 2;
  cfg.n_expert_groups = 1;
  cfg.n_limited_groups = 1;
  cfg.score_func = ScoreFunc::kSigmoid;
  cfg.route_scale = 1.0;
  cfg.balance_loss_alpha = 0.01;
  Moe moe("ffn", cfg, TrainingPrecision::kFp32, Device::cpu());
  moe.init(1, 0.1);
  // Sigmoid scores s[t][e] (each row sums to 2): logit(0.8) = ln 4, logit(0.5) = 0.
  const double hi = std::log(4.0);
  const double lo = -hi;
  const double logit[4][4] = {{hi, 0, lo, 0},     // s = .8 .5 .2 .5  -> {0, 1} (1 beats 3 on tie)
                              {lo, hi, hi, lo},   // s = .2 .8 .8 .2  -> {1, 2}
                              {0, lo, 0, hi},     // s = .5 .2 .5 .8  -> {3, 0} (0 beats 2 on tie)
                              {hi, lo, lo, hi}};  // s = .8 .2 .2 .8  -> {0, 3}
  std::vector<float> wg(16);
  for (int t = 0; t < 4; ++t) {
    for (int e = 0; e < 4; ++e) wg[e * 4 + t] = static_cast<float>(logit[t][e]);
  }
  moe.gate.weight.value.copy_from(Tensor::from_floats(wg, {4, 4}));
  std::vector<float> x(32, 0.0f);
  for (int t = 0; t < 4; ++t) x[t * 4 + t] = 1.0f;
  Tensor y = Tensor::empty({8, 4}, DType::kF32);
  Moe::Saved saved;
  moe.forward(Tensor::from_floats(x, {8, 4}), 4, y, saved);
  // Second sequence: all scores 0.5, every token picks {0, 1}.
  EXPECT_EQ(saved.routing.topk_idx.to_vector<int32_t>(),
            (std::vector<int32_t>{0, 1, 1, 2, 3, 0, 0, 3, 0, 1, 0, 1, 0, 1, 0, 1}));
  // Sequence 1: counts {3, 2, 1, 2}, f = E / (K S) * count = {1.5, 1, 0.5, 1};
  //   P = (1/S) sum_t s / 2 = {2.3, 1.7, 1.7, 2.3} / 8;  sum f P = 1.0375.
  // Sequence 2: counts {4, 4, 0, 0}, f = {2, 2, 0, 0}, P = {.25, .25, .25, .25};  sum f P = 1.
  // L = alpha * mean over the two sequences = 0.01 * 1.01875.
  EXPECT_NEAR(saved.balance_loss, 0.01 * (1.0375 + 1.0) / 2, 1e-8);
  EXPECT_EQ(moe.expert_load(), (std::vector<int64_t>{7, 6, 1, 2}));
}

TEST(MoeTest, BalanceLossGradientMatchesFiniteDifferences) {
  for (ScoreFunc f : {ScoreFunc::kSigmoid, ScoreFunc::kSoftmax}) {
    ModelConfig cfg = small_config(1, f);
    cfg.balance_loss_alpha = 1.0;
    Moe moe("ffn", cfg, TrainingPrecision::kFp32, Device::cpu());
    moe.init(9, 0.5);
    const int64_t t = 12;
    const int64_t seq_len = 6;
    Tensor x = random_tensor({t, cfg.dim}, 10);
    Tensor y = Tensor::empty({t, cfg.dim}, DType::kF32);
    Moe::Saved saved;
    moe.forward(x, seq_len, y, saved);
    EXPECT_GT(saved.balance_loss, 0.0);
    moe.set_fixed_routing(saved.routing.topk_idx);
    const auto loss = [&] {
      Moe::Saved s;
      Tensor out = Tensor::empty({t, cfg.dim}, DType::kF32);
      moe.forward(x, seq_len, out, s);
      return s.balance_loss;
    };
    Tensor dx = Tensor::empty({t, cfg.dim}, DType::kF32);
    moe.backward(Tensor::zeros({t, cfg.dim}, DType::kF32), 1.0, saved, dx, nullptr);
    expect_gradient_matches("balance dx " + describe(cfg), x, dx, loss);
    expect_gradient_matches("balance gate " + describe(cfg), moe.gate.weight.value,
                            moe.gate.weight.grad, loss);
    // Only the router sees the balance loss.
    EXPECT_EQ(max_abs(moe.w1.weight.grad), 0.0);
  }
}

TEST(MoeTest, ExpertLoadAccumulatesAndResets) {
  const ModelConfig cfg = small_config(0, ScoreFunc::kSigmoid);
  Moe moe("ffn", cfg, TrainingPrecision::kFp32, Device::cpu());
  moe.init(2, 0.3);
  std::vector<int64_t> want(8, 0);
  for (uint32_t seed : {20u, 21u}) {
    const Tensor x = random_tensor({6, cfg.dim}, seed);
    Tensor y = Tensor::empty({6, cfg.dim}, DType::kF32);
    Moe::Saved saved;
    moe.forward(x, 3, y, saved);
    for (int32_t e : saved.routing.topk_idx.to_vector<int32_t>()) ++want[e];
  }
  EXPECT_EQ(moe.expert_load(), want);
  EXPECT_EQ(std::accumulate(want.begin(), want.end(), int64_t{0}), 2 * 6 * 2);
  moe.reset_load();
  EXPECT_EQ(moe.expert_load(), std::vector<int64_t>(8, 0));
  moe.set_expert_load(want);
  EXPECT_EQ(moe.expert_load(), want);
}

TEST(MoeTest, UpdateBiasMovesByGammaAgainstLoad) {
  ModelConfig cfg = small_config(0, ScoreFunc::kSigmoid);
  cfg.n_routed_experts = 4;
  cfg.n_expert_groups = 2;
  cfg.n_limited_groups = 1;
  Moe moe("ffn", cfg, TrainingPrecision::kFp32, Device::cpu());
  const std::vector<double> load = {3, 1, 2, 2};  // mean 2
  moe.update_bias(load, 0.25);
  EXPECT_EQ(moe.gate_bias.value.to_floats(), (std::vector<float>{-0.25f, 0.25f, 0.0f, 0.0f}));
  moe.update_bias(load, 0.25);
  EXPECT_EQ(moe.gate_bias.value.to_floats(), (std::vector<float>{-0.5f, 0.5f, 0.0f, 0.0f}));
  EXPECT_THROW(moe.update_bias(std::vector<double>{1, 2, 3}, 0.25), Error);
  moe.init(1, 0.1);
  EXPECT_EQ(moe.gate_bias.value.to_floats(), std::vector<float>(4, 0.0f));
}

// Forward (route) + bias update on fixed inputs with a strongly skewed router, the trainer's loop
// on one rank: the imbalance max/mean of the load falls, as in auxiliary-loss-free balancing.
TEST(MoeTest, BiasUpdateBalancesLoad) {
  const ModelConfig cfg = small_config(0, ScoreFunc::kSigmoid);
  Moe moe("ffn", cfg, TrainingPrecision::kFp32, Device::cpu());
  moe.init(4, 0.5);
  const int64_t t = 256;
  // x with a common offset: each expert gets a fixed logit shift, so some experts dominate.
  std::vector<float> xv = fathom::testing::random_values(t * cfg.dim, 30);
  for (float& v : xv) v += 0.7f;
  const Tensor x = Tensor::from_floats(xv, {t, cfg.dim});
  Tensor y = Tensor::empty({t, cfg.dim}, DType::kF32);
  const auto step = [&] {
    moe.reset_load();
    Moe::Saved saved;
    moe.forward(x, 64, y, saved);
    const std::vector<double> load(moe.expert_load().begin(), moe.expert_load().end());
    const double mean = std::accumulate(load.begin(), load.end(), 0.0) / load.size();
    moe.update_bias(load, 0.01);
    return *std::max_element(load.begin(), load.end()) / mean;
  };
  const double before = step();
  double after = before;
  for (int i = 0; i < 150; ++i) after = step();
  EXPECT_GT(before, 2.0) << "the test needs a skewed router to start from";
  EXPECT_LT(after, 1.35) << "imbalance before " << before;
  // The bias moved selections, not gate values: they are still the normalised unbiased scores.
  Moe::Saved saved;
  moe.forward(x, 64, y, saved);
  const std::vector<float> s = saved.routing.scores.to_floats();
  const std::vector<int32_t> idx = saved.routing.topk_idx.to_vector<int32_t>();
  const std::vector<float> w = saved.routing.topk_weight.to_floats();
  for (int64_t row = 0; row < t; row += 17) {
    const double s0 = s[row * 8 + idx[row * 2]], s1 = s[row * 8 + idx[row * 2 + 1]];
    EXPECT_NEAR(w[row * 2], 2.5 * s0 / (s0 + s1), 1e-6) << "token " << row;
  }
}

TEST(LocalDispatcherTest, PermutationsAndAdjoints) {
  const int64_t e = 5, t = 7, k = 3, dim = 6;
  // Distinct experts per token from 0..3: expert 4 gets nothing (an empty group).
  std::vector<int32_t> idx;
  std::mt19937 rng(40);
  for (int64_t row = 0; row < t; ++row) {
    std::vector<int32_t> experts = {0, 1, 2, 3};
    std::shuffle(experts.begin(), experts.end(), rng);
    idx.insert(idx.end(), experts.begin(), experts.begin() + k);
  }
  LocalDispatcher dispatcher(e);
  EXPECT_EQ(dispatcher.n_local_experts(), e);
  EXPECT_EQ(dispatcher.first_local_expert(), 0);
  const Tensor x = random_tensor({t, dim}, 41);
  DispatchPlan plan;
  Tensor tokens;
  std::vector<int64_t> counts;
  dispatcher.dispatch(x, Tensor::from_vector(idx, {t, k}), plan, tokens, counts);
  ASSERT_EQ(tokens.shape(), Shape({t * k, dim}));
  // Reference order: expert by expert, selections in increasing t * K + k.
  std::vector<int64_t> want_counts(e, 0);
  std::vector<int64_t> row_of(t * k);
  int64_t r = 0;
  for (int64_t ex = 0; ex < e; ++ex) {
    for (int64_t sel = 0; sel < t * k; ++sel) {
      if (idx[sel] == ex) {
        row_of[sel] = r++;
        ++want_counts[ex];
      }
    }
  }
  EXPECT_EQ(counts, want_counts);
  EXPECT_EQ(counts[4], 0);
  const std::vector<float> xv = x.to_floats();
  const std::vector<float> tv = tokens.to_floats();
  for (int64_t sel = 0; sel < t * k; ++sel) {
    for (int64_t i = 0; i < dim; ++i) {
      ASSERT_EQ(tv[row_of[sel] * dim + i], xv[(sel / k) * dim + i]) << "selection " << sel;
    }
  }
  const Tensor expert_out = random_tensor({t * k, dim}, 42);
  Tensor selection_out;
  dispatcher.combine(expert_out, plan, selection_out);
  ASSERT_EQ(selection_out.shape(), Shape({t * k, dim}));
  const std::vector<float> ev = expert_out.to_floats();
  const std::vector<float> sv = selection_out.to_floats();
  for (int64_t sel = 0; sel < t * k; ++sel) {
    for (int64_t i = 0; i < dim; ++i) {
      ASSERT_EQ(sv[sel * dim + i], ev[row_of[sel] * dim + i]) << "selection " << sel;
    }
  }
  // Adjoints: <combine(a), b> = <a, combine_backward(b)>, <dispatch(x), c> = <x, dispatch_bwd(c)>.
  const Tensor b = random_tensor({t * k, dim}, 43);
  Tensor d_expert_out;
  dispatcher.combine_backward(b, plan, d_expert_out);
  EXPECT_NEAR(probe_loss(selection_out, b), probe_loss(expert_out, d_expert_out), 1e-5);
  const Tensor c = random_tensor({t * k, dim}, 44);
  Tensor dx;
  dispatcher.dispatch_backward(c, plan, dx);
  ASSERT_EQ(dx.shape(), Shape({t, dim}));
  EXPECT_NEAR(probe_loss(tokens, c), probe_loss(x, dx), 1e-5);
  // And dx[t] is exactly the sum of its K rows.
  const std::vector<float> cv = c.to_floats();
  const std::vector<float> dxv = dx.to_floats();
  for (int64_t row = 0; row < t; ++row) {
    for (int64_t i = 0; i < dim; ++i) {
      double want = 0;
      for (int64_t j = 0; j < k; ++j) want += cv[row_of[row * k + j] * dim + i];
      EXPECT_NEAR(dxv[row * dim + i], want, 1e-6) << "token " << row;
    }
  }
  EXPECT_THROW(dispatcher.dispatch(x, Tensor::from_vector(std::vector<int32_t>(t * k, 5), {t, k}),
                                   plan, tokens, counts),
               Error);
}

TEST(MoeTest, DeferredWeightGradsEqualImmediate) {
  const ModelConfig cfg = small_config(1, ScoreFunc::kSigmoid);
  Moe now("ffn", cfg, TrainingPrecision::kFp32, Device::cpu());
  Moe later("ffn", cfg, TrainingPrecision::kFp32, Device::cpu());
  now.init(8, 0.3);
  later.init(8, 0.3);
  const int64_t t = 8;
  const Tensor x = random_tensor({t, cfg.dim}, 50);
  const Tensor dy = random_tensor({t, cfg.dim}, 51);
  Tensor y1 = Tensor::empty({t, cfg.dim}, DType::kF32), y2 = y1.clone();
  Moe::Saved s1, s2;
  now.forward(x, 4, y1, s1);
  later.forward(x, 4, y2, s2);
  Tensor dx1 = Tensor::empty({t, cfg.dim}, DType::kF32), dx2 = dx1.clone();
  now.backward(dy, 1.0, s1, dx1, nullptr);
  WeightGradStore store;
  later.backward(dy, 1.0, s2, dx2, &store);
  EXPECT_EQ(dx1.to_floats(), dx2.to_floats());
  ParameterList p1, p2;
  now.append_parameters(p1);
  later.append_parameters(p2);
  ASSERT_EQ(p1.size(), p2.size());
  for (Parameter* p : p2) EXPECT_EQ(max_abs(p->grad), 0.0) << p->name << " before the store ran";
  store.run_all();
  for (size_t i = 0; i < p1.size(); ++i) {
    EXPECT_GT(max_abs(p1[i]->grad), 0.0) << p1[i]->name;
    EXPECT_EQ(p1[i]->grad.to_floats(), p2[i]->grad.to_floats()) << p1[i]->name;
  }
}

class MoePrecisionTest : public ::testing::TestWithParam<TrainingPrecision> {};

TEST_P(MoePrecisionTest, CloseToFp32) {
  const TrainingPrecision precision = GetParam();
  const ModelConfig cfg = small_config(1, ScoreFunc::kSigmoid);
  Moe ref("ffn", cfg, TrainingPrecision::kFp32, Device::cpu());
  Moe low("ffn", cfg, precision, Device::cpu());
  ref.init(12, 0.3);
  low.init(12, 0.3);
  const int64_t t = 16;
  const Tensor x = random_tensor({t, cfg.dim}, 60);
  const Tensor dy = random_tensor({t, cfg.dim}, 61);
  Tensor y_ref = Tensor::empty({t, cfg.dim}, DType::kF32), y_low = y_ref.clone();
  Moe::Saved s_ref, s_low;
  ref.forward(x, 8, y_ref, s_ref);
  low.forward(x, 8, y_low, s_low);
  // The gate is f32 in every precision: identical routing and balance loss.
  EXPECT_EQ(s_low.routing.topk_idx.to_vector<int32_t>(),
            s_ref.routing.topk_idx.to_vector<int32_t>());
  EXPECT_EQ(s_low.routing.topk_weight.to_floats(), s_ref.routing.topk_weight.to_floats());
  EXPECT_EQ(s_low.balance_loss, s_ref.balance_loss);
  // Relative L2 error. Measured: bf16 <= 0.8%, fp8 (3 mantissa bits, four quantized operands on
  // the path to y) 5-9%, the gate gradient the largest.
  const double tol = precision == TrainingPrecision::kBf16 ? 0.02 : 0.15;
  const std::string what = describe(cfg, precision);
  EXPECT_LT(rel_l2(y_low.to_floats(), y_ref.to_floats()), tol) << what << " y";
  EXPECT_GT(rel_l2(y_low.to_floats(), y_ref.to_floats()), 0.0) << what << ": not low precision";
  Tensor dx_ref = Tensor::empty({t, cfg.dim}, DType::kF32), dx_low = dx_ref.clone();
  ref.backward(dy, 1.0, s_ref, dx_ref, nullptr);
  low.backward(dy, 1.0, s_low, dx_low, nullptr);
  EXPECT_LT(rel_l2(dx_low.to_floats(), dx_ref.to_floats()), tol) << what << " dx";
  ParameterList p_ref, p_low;
  ref.append_parameters(p_ref);
  low.append_parameters(p_low);
  for (size_t i = 0; i < p_ref.size(); ++i) {
    EXPECT_LT(rel_l2(p_low[i]->grad.to_floats(), p_ref[i]->grad.to_floats()), tol)
        << what << " " << p_ref[i]->name;
  }
}

INSTANTIATE_TEST_SUITE_P(LowPrecision, MoePrecisionTest,
                         ::testing::Values(TrainingPrecision::kBf16, TrainingPrecision::kFp8),
                         [](const ::testing::TestParamInfo<TrainingPrecision>& info) {
                           return std::string(precision_name(info.param));
                         });

TEST(MoeTest, RejectsBadInputs) {
  const ModelConfig cfg = small_config(0, ScoreFunc::kSigmoid);
  Moe moe("ffn", cfg, TrainingPrecision::kFp32, Device::cpu());
  Tensor y = Tensor::empty({6, cfg.dim}, DType::kF32);
  Moe::Saved saved;
  EXPECT_THROW(moe.forward(random_tensor({6, cfg.dim + 1}, 70), 3, y, saved), Error);
  EXPECT_THROW(moe.forward(random_tensor({6, cfg.dim}, 71), 4, y, saved),
               Error);  // 4 does not divide 6
  EXPECT_THROW(moe.set_fixed_routing(Tensor::zeros({6, 3}, DType::kI32)), Error);
}

}  // namespace
}  // namespace fathom::model
