// The demo training run composes every op with a backward; if any backward is wrong the loss
// does not fall and held-out accuracy does not rise.
#include "launch/demo_train.h"

#include <gtest/gtest.h>

#include <cmath>

namespace fathom::launch {
namespace {

TEST(Demo, LossFallsAndHeldOutAccuracyRises) {
  DemoConfig c;
  c.steps = 120;
  c.batch = 4;
  c.eval_problems = 128;
  const DemoResult r = run_demo(c);
  ASSERT_EQ(r.steps.size(), 120u);
  double first = 0, last = 0;
  for (int i = 0; i < 10; ++i) {
    first += r.steps[i].loss / 10;
    last += r.steps[r.steps.size() - 1 - i].loss / 10;
  }
  // Uniform guessing over 128 bytes is ln 128 = 4.85; the digit/operator structure alone is
  // learnable to well below 2.
  EXPECT_GT(first, 3.5);
  EXPECT_LT(last, 0.7 * first);
  EXPECT_LT(r.loss_after, r.loss_before - 1.0);
  // 120 steps of a 2-layer model: teacher-forced answer accuracy goes from chance (~0.2%) to ~7%.
  EXPECT_GT(r.accuracy_after, r.accuracy_before + 0.04);
  for (const DemoStep& s : r.steps) {
    EXPECT_TRUE(std::isfinite(s.loss) && std::isfinite(s.grad_norm)) << "step " << s.step;
  }
}

TEST(Demo, SameSeedSameLosses) {
  DemoConfig c;
  c.steps = 5;
  c.batch = 2;
  c.eval_problems = 16;
  const DemoResult a = run_demo(c), b = run_demo(c);
  for (size_t i = 0; i < a.steps.size(); ++i) EXPECT_EQ(a.steps[i].loss, b.steps[i].loss) << i;
}

}  // namespace
}  // namespace fathom::launch
