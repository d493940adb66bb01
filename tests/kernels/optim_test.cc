// AdamW (kernels/ops/optim.h): one and several steps against a hand-written double reference
// over awkward sizes, bias correction and decoupled weight decay on cases with known answers,
// bf16 moments (rounding on store, closeness to f32 moments over many steps), argument errors.
#include "kernels/ops/optim.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tests/kernels/test_util.h"

namespace fathom {
namespace {

using testing::error_of;
using testing::to_doubles;
using testing::to_floats;

using testing::expect_close;
using ::testing::HasSubstr;
using testing::random_tensor;
using testing::Tolerance;

struct RefState {
  std::vector<double> p, m, v;
};

// One AdamW step in double, written from the formula in optim.h.
void ref_adamw(RefState& s, const std::vector<float>& g, const AdamWConfig& c) {
  const double b1 = c.beta1, b2 = c.beta2, t = static_cast<double>(c.step);
  for (size_t i = 0; i < s.p.size(); ++i) {
    s.m[i] = b1 * s.m[i] + (1 - b1) * g[i];
    s.v[i] = b2 * s.v[i] + (1 - b2) * static_cast<double>(g[i]) * g[i];
    const double mhat = s.m[i] / (1 - std::pow(b1, t));
    const double vhat = s.v[i] / (1 - std::pow(b2, t));
    s.p[i] -= c.lr * (mhat / (std::sqrt(vhat) + c.eps) + c.weight_decay * s.p[i]);
  }
}

TEST(AdamWTest, StepsMatchReference) {
  for (int64_t n : {int64_t{1}, int64_t{31}, int64_t{33}, int64_t{129}, int64_t{50001}}) {
    for (int steps : {1, 6}) {
      const AdamWConfig base{
          .lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
      Tensor p = random_tensor({n}, 1);
      Tensor m = Tensor::zeros({n}, DType::kF32), v = Tensor::zeros({n}, DType::kF32);
      RefState ref{to_doubles(p), std::vector<double>(n, 0.0), std::vector<double>(n, 0.0)};
      for (int t = 1; t <= steps; ++t) {
        const Tensor g = random_tensor({n}, 100 + t, DType::kF32, Device::cpu(), -2.0f, 2.0f);
        AdamWConfig c = base;
        c.step = t;
        adamw_update(p, g, m, v, c);
        ref_adamw(ref, g.to_floats(), c);
      }
      const std::string ctx = " n=" + std::to_string(n) + " steps=" + std::to_string(steps);
      // p moves by ~lr per step; f32 rounding of p itself is ~6e-8.
      expect_close(p.to_floats(), to_floats(ref.p), {1e-6, 1e-6}, "param" + ctx);
      expect_close(m.to_floats(), to_floats(ref.m), {1e-6, 1e-5}, "m" + ctx);
      expect_close(v.to_floats(), to_floats(ref.v), {1e-7, 1e-5}, "v" + ctx);
    }
  }
}

// Step 1 from zero moments without decay: m_hat = g and v_hat = g^2, so every parameter moves
// by lr * g / (|g| + eps), i.e. lr * sign(g); without the correction it would move
// 0.1 / sqrt(0.05) = 0.45 times as far. At step 100 from zero moments the corrections
// (1 - 0.9^100, 1 - 0.95^100) are nearly 1 and the step is close to that smaller one: the
// correction follows the step number.
TEST(AdamWTest, BiasCorrection) {
  const int64_t n = 33;
  const float lr = 0.01f;
  Tensor p = random_tensor({n}, 11);
  const Tensor g = random_tensor({n}, 12, DType::kF32, Device::cpu(), -3.0f, 3.0f);
  const std::vector<float> p0 = p.to_floats(), gv = g.to_floats();
  Tensor m = Tensor::zeros({n}, DType::kF32), v = Tensor::zeros({n}, DType::kF32);
  adamw_update(p, g, m, v, {.lr = lr, .weight_decay = 0.0f, .step = 1});
  std::vector<float> want(n);
  for (int64_t i = 0; i < n; ++i) {
    const double sign_g = gv[i] / (std::abs(static_cast<double>(gv[i])) + 1e-8);
    EXPECT_NEAR(std::abs(sign_g), 1.0, 1e-6) << "g=" << gv[i];
    want[i] = static_cast<float>(p0[i] - lr * sign_g);
  }
  expect_close(p.to_floats(), want, {1e-6, 1e-6}, "first step moves by lr * sign(g)");

  Tensor q = Tensor::from_floats(p0, {n});
  Tensor m2 = Tensor::zeros({n}, DType::kF32), v2 = Tensor::zeros({n}, DType::kF32);
  adamw_update(q, g, m2, v2, {.lr = lr, .weight_decay = 0.0f, .step = 100});
  const double c1 = 1 - std::pow(0.9, 100), c2 = 1 - std::pow(0.95, 100);
  std::vector<float> want100(n);
  for (int64_t i = 0; i < n; ++i) {
    const double mhat = 0.1 * gv[i] / c1, vhat = 0.05 * gv[i] * gv[i] / c2;
    want100[i] = static_cast<float>(p0[i] - lr * mhat / (std::sqrt(vhat) + 1e-8));
  }
  expect_close(q.to_floats(), want100, {1e-6, 1e-6}, "step 100 from zero moments");
}

// Zero gradient and zero moments: the update is decay alone, p -= lr * wd * p.
TEST(AdamWTest, DecoupledWeightDecay) {
  const int64_t n = 129;
  Tensor p = random_tensor({n}, 21, DType::kF32, Device::cpu(), -4.0f, 4.0f);
  const std::vector<float> p0 = p.to_floats();
  const Tensor g = Tensor::zeros({n}, DType::kF32);
  Tensor m = Tensor::zeros({n}, DType::kF32), v = Tensor::zeros({n}, DType::kF32);
  adamw_update(p, g, m, v, {.lr = 0.05f, .weight_decay = 0.2f, .step = 3});
  std::vector<float> want(n);
  for (int64_t i = 0; i < n; ++i) want[i] = static_cast<float>(p0[i] * (1.0 - 0.05 * 0.2));
  expect_close(p.to_floats(), want, {1e-7, 1e-6}, "decay only");
  EXPECT_EQ(m.to_floats(), std::vector<float>(n, 0.0f));
  EXPECT_EQ(v.to_floats(), std::vector<float>(n, 0.0f));
}

TEST(AdamWTest, Bf16MomentsRoundOnStore) {
  const int64_t n = 127;
  Tensor p = random_tensor({n}, 31);
  const Tensor g = random_tensor({n}, 32);
  const std::vector<float> gv = g.to_floats();
  Tensor m = Tensor::zeros({n}, DType::kBF16), v = Tensor::zeros({n}, DType::kBF16);
  adamw_update(p, g, m, v, {.step = 1});
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float mf = 0.9f * 0.0f + (1.0f - 0.9f) * gv[i];
    const float vf = 0.95f * 0.0f + (1.0f - 0.95f) * (gv[i] * gv[i]);
    bad += m.data<bf16>()[i].bits != float_to_bf16(mf).bits;
    bad += v.data<bf16>()[i].bits != float_to_bf16(vf).bits;
  }
  EXPECT_EQ(bad, 0) << "bf16 moments must be the f32 moments rounded to nearest even";
}

// Twenty steps with bf16 moments stay close to the same steps with f32 moments.
TEST(AdamWTest, Bf16MomentsCloseToF32) {
  for (int64_t n : {int64_t{33}, int64_t{40000}}) {
    Tensor p32 = random_tensor({n}, 41), p16 = p32.clone();
    Tensor m32 = Tensor::zeros({n}, DType::kF32), v32 = Tensor::zeros({n}, DType::kF32);
    Tensor m16 = Tensor::zeros({n}, DType::kBF16), v16 = Tensor::zeros({n}, DType::kBF16);
    const float lr = 1e-3f;
    const int steps = 20;
    for (int t = 1; t <= steps; ++t) {
      const Tensor g = random_tensor({n}, 200 + t);
      const AdamWConfig c{.lr = lr, .step = t};
      adamw_update(p32, g, m32, v32, c);
      adamw_update(p16, g, m16, v16, c);
    }
    const std::string ctx = " n=" + std::to_string(n);
    expect_close(m16.to_floats(), m32.to_floats(), {5e-3, 2e-2}, "bf16 m vs f32 m" + ctx);
    expect_close(v16.to_floats(), v32.to_floats(), {1e-4, 2e-2}, "bf16 v vs f32 v" + ctx);
    // Each step moves p by about lr; bf16 moments change a step by well under 1%.
    expect_close(p16.to_floats(), p32.to_floats(), {0.01 * lr * steps, 0},
                 "bf16-moment params" + ctx);
  }
}

TEST(AdamWTest, ArgumentErrors) {
  Tensor p = Tensor::zeros({4, 8}, DType::kF32);
  const Tensor g = Tensor::zeros({4, 8}, DType::kF32);
  Tensor m = Tensor::zeros({4, 8}, DType::kF32);
  Tensor v16 = Tensor::zeros({4, 8}, DType::kBF16);
  std::string e = error_of([&] { adamw_update(p, g, m, v16, {}); });
  EXPECT_THAT(e, HasSubstr("adamw_update: v must be f32, got bf16[4, 8]@cpu"));

  Tensor v = Tensor::zeros({4, 8}, DType::kF32);
  const Tensor g_bad = Tensor::zeros({4, 9}, DType::kF32);
  e = error_of([&] { adamw_update(p, g_bad, m, v, {}); });
  EXPECT_THAT(e, HasSubstr("adamw_update: grad must have shape [4, 8], got f32[4, 9]@cpu"));

  Tensor p16 = Tensor::zeros({4, 8}, DType::kBF16);
  e = error_of([&] { adamw_update(p16, g, m, v, {}); });
  EXPECT_THAT(e, HasSubstr("adamw_update: param must be f32, got bf16[4, 8]@cpu"));

  Tensor undefined;
  e = error_of([&] { adamw_update(p, g, undefined, v, {}); });
  EXPECT_THAT(e, HasSubstr("adamw_update: m is undefined"));

  e = error_of([&] { adamw_update(p, g, m, v, {.step = 0}); });
  EXPECT_THAT(e, HasSubstr("adamw_update: step must be >= 1"));
  EXPECT_THAT(e, HasSubstr("f32[4, 8]@cpu"));

  e = error_of([&] { adamw_update(p, g, m, v, {.beta2 = 1.0f}); });
  EXPECT_THAT(e, HasSubstr("adamw_update: betas must be in [0, 1)"));
}

}  // namespace
}  // namespace fathom
