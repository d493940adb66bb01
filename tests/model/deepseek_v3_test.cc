// The whole DeepSeek-V3 model (model/deepseek_v3.h): gradient check of every parameter on a tiny
// config, deferred and recomputed backward equal to the plain one, loss bookkeeping, expert load
// accounting and input errors.
#include "model/deepseek_v3.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <random>
#include <vector>

#include "kernels/ops/elementwise.h"
#include "model/moe.h"
#include "tests/kernels/test_util.h"
#include "tests/model/grad_check.h"

namespace fathom::model {
namespace {

using testing::error_of;
using testing::expect_gradient_matches;
using ::testing::HasSubstr;

// Every feature on, small enough for finite differences over every parameter tensor. Every
// expert is selected (top-4 of 4), so a finite-difference step cannot flip a selection; routing
// choices themselves are tested in router_test / moe_test.
ModelConfig grad_config() {
  ModelConfig c;
  c.vocab_size = 19;
  c.dim = 16;
  c.inter_dim = 24;
  c.moe_inter_dim = 8;
  c.n_layers = 2;
  c.n_dense_layers = 1;
  c.n_heads = 2;
  c.n_routed_experts = 4;
  c.n_shared_experts = 1;
  c.n_activated_experts = 4;
  c.n_expert_groups = 2;
  c.n_limited_groups = 2;
  c.score_func = ScoreFunc::kSigmoid;
  c.route_scale = 2.5;
  c.q_lora_rank = 8;
  c.kv_lora_rank = 8;
  c.qk_nope_head_dim = 4;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 6;
  c.max_seq_len = 16;
  c.original_seq_len = 16;
  c.mtp_depth = 1;
  c.mtp_lambda = 0.3;
  c.init_std = 0.3;
  c.balance_loss_alpha = 0.05;  // large enough that its gradient shows in the check
  return c;
}

Tensor random_tokens(int64_t batch, int64_t width, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> v(batch * width);
  for (int32_t& x : v) x = static_cast<int32_t>(rng() % vocab);
  return Tensor::from_vector(v, {batch, width});
}

void set_random_biases(DeepSeekV3& m, uint32_t seed) {
  for (Buffer* b : m.buffers()) {
    b->value.copy_from(testing::random_tensor(b->value.shape(), seed++, DType::kF32,
                                              Device::cpu(), -0.1f, 0.1f));
  }
}

std::vector<std::vector<float>> grads_of(DeepSeekV3& m) {
  std::vector<std::vector<float>> out;
  for (Parameter* p : m.parameters()) out.push_back(p->grad.to_floats());
  return out;
}

TEST(DeepSeekV3Test, EveryParameterGradientMatchesFiniteDifferences) {
  const ModelConfig config = grad_config();
  DeepSeekV3 model(config, TrainingPrecision::kFp32, Device::cpu());
  model.init(5);
  set_random_biases(model, 11);
  const Tensor tokens = random_tokens(2, 5 + 2, config.vocab_size, 3);
  const Losses losses = model.forward_backward(tokens, 1.0);
  EXPECT_GT(losses.balance, 0.0);
  EXPECT_GT(losses.mtp, 0.0);
  EXPECT_NEAR(losses.total, losses.lm + 0.3 * losses.mtp + losses.balance, 1e-9);
  EXPECT_EQ(losses.tokens, 10);
  const auto loss = [&] { return model.evaluate(tokens).total; };
  testing::GradCheckOptions options;
  options.max_elements = 6;
  options.eps = 3e-3;
  const ParameterList params = model.parameters();
  EXPECT_EQ(params.size(), 51u);
  for (Parameter* p : params) {
    expect_gradient_matches(p->name, p->value, p->grad, loss, options);
  }
}

TEST(DeepSeekV3Test, DeferredAndRecomputedBackwardEqualPlainBackward) {
  ModelConfig config = grad_config();
  config.n_activated_experts = 2;
  const Tensor tokens = random_tokens(3, 6 + 2, config.vocab_size, 4);
  DeepSeekV3 plain(config, TrainingPrecision::kFp32, Device::cpu());
  plain.init(1);
  plain.forward_backward(tokens, 0.5);
  const auto want = grads_of(plain);

  DeepSeekV3 deferred(config, TrainingPrecision::kFp32, Device::cpu());
  deferred.init(1);
  WeightGradStore store;
  deferred.forward_backward(tokens, 0.5, &store);
  store.run_all();
  EXPECT_EQ(grads_of(deferred), want);

  ModelOptions options;
  options.recompute = true;
  DeepSeekV3 recomputed(config, TrainingPrecision::kFp32, Device::cpu(), options);
  recomputed.init(1);
  recomputed.forward_backward(tokens, 0.5);
  EXPECT_EQ(grads_of(recomputed), want);
}

TEST(DeepSeekV3Test, StageLayersBalanceBlocksAndMtpModules) {
  // 3 blocks, no MTP, 2 stages: the first takes the extra block.
  EXPECT_EQ(stage_layers(3, 0, 0, 2).begin, 0);
  EXPECT_EQ(stage_layers(3, 0, 0, 2).end, 2);
  EXPECT_EQ(stage_layers(3, 0, 1, 2).begin, 2);
  EXPECT_EQ(stage_layers(3, 0, 1, 2).end, 3);
  // 8 blocks + 1 MTP module over 4 stages: 3, 2, 2, and 1 block + the MTP module.
  EXPECT_EQ(stage_layers(8, 1, 0, 4).end, 3);
  EXPECT_EQ(stage_layers(8, 1, 3, 4).begin, 7);
  // 4 blocks + 1 MTP over 4 stages: the last stage runs the MTP module alone.
  EXPECT_EQ(stage_layers(4, 1, 3, 4).begin, 4);
  EXPECT_EQ(stage_layers(4, 1, 3, 4).end, 4);
  for (int64_t mtp : {0, 1, 2}) {
    for (int stages = 1; stages <= 7; ++stages) {
      int64_t next = 0;
      for (int s = 0; s < stages; ++s) {
        const LayerRange r = stage_layers(7, mtp, s, stages);
        const int64_t units = (r.end - r.begin) + (s + 1 == stages ? mtp : 0);
        EXPECT_EQ(r.begin, next) << s << "/" << stages << " mtp " << mtp;
        EXPECT_GE(units, (7 + mtp) / stages - 1) << s << "/" << stages << " mtp " << mtp;
        EXPECT_LE(units, (7 + mtp + stages - 1) / stages) << s << "/" << stages << " mtp " << mtp;
        next = r.end;
      }
      EXPECT_EQ(next, 7);
    }
  }
  EXPECT_THAT(error_of([] { stage_layers(3, 1, 0, 4); }), HasSubstr("stages <= n_layers"));
}

// The stages of a pipeline, run one after the other, compute exactly what the whole model does:
// the same losses (summed over stages) and, parameter by parameter, the same gradients. The
// embedding has two copies (the first stage's and the last stage's, which MTP reads) whose
// gradients sum to the whole model's, up to the order of that sum.
TEST(DeepSeekV3Test, StagesRunInSequenceEqualTheWholeModel) {
  ModelConfig config = grad_config();
  config.n_layers = 4;
  config.n_activated_experts = 2;
  const Tensor tokens = random_tokens(2, 6 + 2, config.vocab_size, 9);
  DeepSeekV3 whole(config, TrainingPrecision::kFp32, Device::cpu());
  whole.init(3);
  set_random_biases(whole, 4);
  const Losses want = whole.forward_backward(tokens, 0.5);
  std::map<std::string, std::vector<float>> want_grads;
  for (Parameter* p : whole.parameters()) want_grads[p->name] = p->grad.to_floats();
  std::map<std::string, Tensor> biases;
  for (Buffer* b : whole.buffers()) biases[b->name] = b->value;

  for (int stages : {2, 3, 4}) {
    SCOPED_TRACE(stages);
    std::vector<std::unique_ptr<DeepSeekV3>> chunks;
    for (int s = 0; s < stages; ++s) {
      ModelOptions options;
      options.stage = s;
      options.stages = stages;
      chunks.push_back(
          std::make_unique<DeepSeekV3>(config, TrainingPrecision::kFp32, Device::cpu(), options));
      chunks.back()->init(3);
      for (Buffer* b : chunks.back()->buffers()) b->value.copy_from(biases.at(b->name));
    }
    EXPECT_TRUE(chunks.front()->first_stage() && chunks.back()->last_stage());
    std::vector<DeepSeekV3::StagePass> passes(stages);
    Tensor h;
    Losses sum;
    for (int s = 0; s < stages; ++s) {
      Losses l;
      h = chunks[s]->forward_stage(tokens, h, passes[s], &l);
      EXPECT_EQ(h.defined(), s + 1 < stages);
      sum.total += l.total;
      sum.lm += l.lm;
      sum.balance += l.balance;
    }
    EXPECT_NEAR(sum.total, want.total, 1e-12 * std::abs(want.total));
    EXPECT_EQ(sum.lm, want.lm);
    Tensor dh;
    for (int s = stages - 1; s >= 0; --s) {
      dh = chunks[s]->backward_stage(0.5, dh, passes[s]);
      EXPECT_EQ(dh.defined(), s > 0);
    }
    std::map<std::string, std::vector<float>> got;
    for (auto& chunk : chunks) {
      for (Parameter* p : chunk->parameters()) {
        const std::vector<float> g = p->grad.to_floats();
        auto [it, fresh] = got.emplace(p->name, g);
        if (!fresh) {
          EXPECT_EQ(p->name, "embed.weight");  // the only parameter with two copies
          for (size_t i = 0; i < g.size(); ++i) it->second[i] += g[i];
        }
      }
    }
    ASSERT_EQ(got.size(), want_grads.size());
    for (const auto& [name, g] : want_grads) {
      if (name == "embed.weight") {
        for (size_t i = 0; i < g.size(); ++i) {
          EXPECT_NEAR(got[name][i], g[i], 1e-6f * (std::abs(g[i]) + 1e-6f)) << i;
        }
      } else {
        EXPECT_EQ(got[name], g) << name;
      }
    }
  }
}

TEST(DeepSeekV3Test, StageObjectsRefuseWholeModelCalls) {
  ModelOptions options;
  options.stage = 1;
  options.stages = 2;
  DeepSeekV3 chunk(grad_config(), TrainingPrecision::kFp32, Device::cpu(), options);
  const Tensor tokens = random_tokens(1, 4, 19, 1);
  EXPECT_THAT(error_of([&] { chunk.evaluate(tokens); }), HasSubstr("pipeline stage 1 of 2"));
  DeepSeekV3::StagePass pass;
  EXPECT_THAT(error_of([&] { chunk.forward_stage(tokens, Tensor(), pass, nullptr); }),
              HasSubstr("input"));
}

TEST(DeepSeekV3Test, LossScaleScalesGradientsAndGradientsAccumulate) {
  const ModelConfig config = grad_config();
  const Tensor tokens = random_tokens(2, 4 + 2, config.vocab_size, 5);
  DeepSeekV3 model(config, TrainingPrecision::kFp32, Device::cpu());
  model.init(2);
  model.forward_backward(tokens, 1.0);
  const auto once = grads_of(model);
  model.forward_backward(tokens, 1.0);
  const auto twice = grads_of(model);
  for (size_t i = 0; i < once.size(); ++i) {
    for (size_t j = 0; j < once[i].size(); ++j) {
      ASSERT_NEAR(twice[i][j], 2 * once[i][j], 1e-6 + 1e-5 * std::abs(once[i][j])) << i;
    }
  }
}

TEST(DeepSeekV3Test, ExpertLoadCountsTrainingTokensOnly) {
  ModelConfig config = grad_config();
  config.n_activated_experts = 2;
  DeepSeekV3 model(config, TrainingPrecision::kFp32, Device::cpu());
  model.init(3);
  const Tensor tokens = random_tokens(2, 5 + 2, config.vocab_size, 6);
  const std::vector<Moe*> moes = model.moe_layers();
  ASSERT_EQ(moes.size(), 2u);  // layer 1 and the MTP block
  model.evaluate(tokens);
  for (Moe* moe : moes) {
    for (int64_t n : moe->expert_load()) EXPECT_EQ(n, 0);
  }
  model.forward_backward(tokens, 1.0);
  for (Moe* moe : moes) {
    int64_t total = 0;
    for (int64_t n : moe->expert_load()) total += n;
    EXPECT_EQ(total, 10 * 2) << "T * top-k selections";
  }
}

TEST(DeepSeekV3Test, OverfitsOneBatch) {
  ModelConfig config = grad_config();
  config.init_std = 0.02;
  DeepSeekV3 model(config, TrainingPrecision::kFp32, Device::cpu());
  model.init(4);
  const Tensor tokens = random_tokens(2, 8 + 2, config.vocab_size, 7);
  double first = 0, last = 0;
  const ParameterList params = model.parameters();
  for (int step = 0; step < 60; ++step) {
    for (Parameter* p : params) fill(p->grad, 0.0f);
    const Losses l = model.forward_backward(tokens, 1.0);
    if (step == 0) first = l.lm;
    last = l.lm;
    for (Parameter* p : params) {
      axpy(-0.5f, p->grad, p->value);  // plain SGD
      ++p->version;
    }
  }
  EXPECT_NEAR(first, std::log(19.0), 0.2) << "initial loss ~ ln(vocab)";
  EXPECT_LT(last, 0.5 * first);
}

TEST(DeepSeekV3Test, RejectsBadTokens) {
  const ModelConfig config = grad_config();
  DeepSeekV3 model(config, TrainingPrecision::kFp32, Device::cpu());
  EXPECT_THAT(error_of([&] {
                model.evaluate(Tensor::from_vector<int32_t>({1, 2, 19, 3}, {1, 4}));
              }),
              HasSubstr("token id 19 at (0, 2) outside [0, 19)"));
  EXPECT_THAT(error_of([&] { model.evaluate(Tensor::from_vector<int32_t>({1, 2}, {1, 2})); }),
              HasSubstr("hold no prediction"));
  EXPECT_THAT(error_of([&] { model.evaluate(random_tokens(1, 17 + 2, 19, 1)); }),
              HasSubstr("sequence length 17 exceeds max_seq_len 16"));
}

}  // namespace
}  // namespace fathom::model
