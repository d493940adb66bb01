#include "trainer/lr_schedule.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <numbers>
#include <string>

#include "absl/strings/str_cat.h"

namespace fathom::trainer {
namespace {

using ::testing::HasSubstr;

std::string describe(const LrSchedule& s) {
  return absl::StrCat(std::string(schedule_type_name(s.type)), " lr=", s.lr, " min_lr=", s.min_lr,
                      " warmup=", s.warmup_steps, " decay_start=", s.decay_start,
                      " decay_steps=", s.decay_steps,
                      " shape=", std::string(decay_shape_name(s.decay_shape)));
}

LrSchedule wcc(double lr, double min_lr, int64_t warmup, int64_t start, int64_t steps) {
  LrSchedule s;
  s.type = ScheduleType::kWcc;
  s.lr = lr;
  s.min_lr = min_lr;
  s.warmup_steps = warmup;
  s.decay_start = start;
  s.decay_steps = steps;
  return s;
}

TEST(LrSchedule, WccMatchesHandComputedValues) {
  const LrSchedule s = wcc(1e-3, 1e-4, 10, 50, 20);
  ASSERT_TRUE(validate(s).ok()) << validate(s);
  struct Case {
    int64_t step;
    double lr;
  };
  // Cosine stretch: 1e-4 + 9e-4 * 0.5 * (1 + cos(pi * p)).
  const Case cases[] = {
      {0, 1e-4},             // warmup: 1/10 of lr
      {4, 5e-4},             // 5/10
      {9, 1e-3},             // the last warmup step reaches lr
      {10, 1e-3},            // constant
      {49, 1e-3},            //
      {50, 1e-3},            // p = 0
      {55, 8.681980515e-4},  // p = 1/4: 1e-4 + 9e-4 * 0.853553390593
      {60, 5.5e-4},          // p = 1/2
      {65, 2.318019485e-4},  // p = 3/4: 1e-4 + 9e-4 * 0.146446609407
      {70, 1e-4},            // p = 1: min_lr
      {71, 1e-4},            // constant tail
      {100000, 1e-4},
  };
  for (const Case& c : cases) {
    EXPECT_NEAR(learning_rate(s, c.step), c.lr, 1e-12) << "step " << c.step << " " << describe(s);
  }
}

TEST(LrSchedule, WsdDecaysLinearlyOrOneMinusSqrt) {
  LrSchedule s = wcc(1.0, 0.1, 0, 80, 20);
  s.type = ScheduleType::kWsd;
  EXPECT_DOUBLE_EQ(learning_rate(s, 0), 1.0);  // no warmup
  EXPECT_DOUBLE_EQ(learning_rate(s, 79), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(s, 80), 1.0);
  EXPECT_NEAR(learning_rate(s, 85), 0.775, 1e-12);  // 0.1 + 0.9 * 3/4
  EXPECT_NEAR(learning_rate(s, 90), 0.55, 1e-12);   // 0.1 + 0.9 * 1/2
  EXPECT_NEAR(learning_rate(s, 100), 0.1, 1e-12);
  s.decay_shape = DecayShape::kOneMinusSqrt;
  EXPECT_NEAR(learning_rate(s, 85), 0.55, 1e-12);  // 0.1 + 0.9 * (1 - sqrt(1/4))
  EXPECT_NEAR(learning_rate(s, 89), 0.1 + 0.9 * (1 - std::sqrt(0.45)), 1e-12);
  EXPECT_NEAR(learning_rate(s, 100), 0.1, 1e-12);
  // 1-sqrt drops faster at first and ends at the same value: it is below linear everywhere
  // inside the decay.
  LrSchedule linear = s;
  linear.decay_shape = DecayShape::kLinear;
  for (int64_t step = 81; step < 100; ++step) {
    EXPECT_LT(learning_rate(s, step), learning_rate(linear, step)) << "step " << step;
  }
}

TEST(LrSchedule, CosineReachesMinLrAtTotalSteps) {
  const LrSchedule s = make_cosine(2.0, 0.2, 5, 105);
  EXPECT_EQ(s.type, ScheduleType::kCosine);
  EXPECT_EQ(s.decay_start, 5);
  EXPECT_EQ(s.decay_steps, 100);
  EXPECT_NEAR(learning_rate(s, 0), 0.4, 1e-12);
  EXPECT_NEAR(learning_rate(s, 4), 2.0, 1e-12);
  EXPECT_NEAR(learning_rate(s, 5), 2.0, 1e-12);
  EXPECT_NEAR(learning_rate(s, 30), 0.2 + 1.8 * 0.853553390593, 1e-9);
  EXPECT_NEAR(learning_rate(s, 55), 1.1, 1e-12);
  EXPECT_NEAR(learning_rate(s, 105), 0.2, 1e-12);
  EXPECT_NEAR(learning_rate(s, 500), 0.2, 1e-12);
}

// Warmup rises, everything after it falls, and no step jumps by more than the steepest slope of
// the schedule allows (the warmup increment, or the steepest point of the decay curve).
TEST(LrSchedule, MonotoneAndContinuous) {
  LrSchedule wsd_sqrt = wcc(3e-3, 3e-4, 30, 200, 100);
  wsd_sqrt.type = ScheduleType::kWsd;
  wsd_sqrt.decay_shape = DecayShape::kOneMinusSqrt;
  LrSchedule wsd_linear = wsd_sqrt;
  wsd_linear.decay_shape = DecayShape::kLinear;
  const LrSchedule schedules[] = {wcc(3e-3, 3e-4, 30, 180, 100), wsd_linear, wsd_sqrt,
                                  make_cosine(3e-3, 3e-4, 30, 300), wcc(1e-3, 1e-3, 0, 0, 7)};
  for (const LrSchedule& s : schedules) {
    ASSERT_TRUE(validate(s).ok()) << describe(s);
    const double range = s.lr - s.min_lr;
    // Steepest step of each curve: cosine pi/2 * range / n; linear range / n; 1-sqrt range *
    // sqrt(1/n) (its first step).
    double max_jump = s.warmup_steps > 0 ? s.lr / static_cast<double>(s.warmup_steps) : 0;
    const double n = static_cast<double>(s.decay_steps);
    if (s.type != ScheduleType::kWsd) {
      max_jump = std::max(max_jump, range * std::numbers::pi / 2 / n);
    } else if (s.decay_shape == DecayShape::kLinear) {
      max_jump = std::max(max_jump, range / n);
    } else {
      max_jump = std::max(max_jump, range * std::sqrt(1 / n));
    }
    for (int64_t step = 0; step < 400; ++step) {
      const double a = learning_rate(s, step), b = learning_rate(s, step + 1);
      if (step + 1 < s.warmup_steps) {
        EXPECT_GT(b, a) << "step " << step << " " << describe(s);
      } else {
        EXPECT_LE(b, a) << "step " << step << " " << describe(s);
      }
      EXPECT_LE(std::fabs(b - a), max_jump * (1 + 1e-9)) << "step " << step << " " << describe(s);
      // Warmup starts below min_lr; from its end on the lr stays within [min_lr, lr].
      if (step + 1 >= s.warmup_steps) {
        EXPECT_GE(b, s.min_lr - 1e-15) << "step " << step << " " << describe(s);
      }
      EXPECT_GT(b, 0) << "step " << step << " " << describe(s);
      EXPECT_LE(b, s.lr + 1e-15) << "step " << step << " " << describe(s);
    }
  }
}

TEST(LrSchedule, ValidateReportsEveryProblem) {
  const absl::Status ok = validate(wcc(1e-3, 0, 0, 0, 1));
  EXPECT_TRUE(ok.ok()) << ok;
  const absl::Status bad = validate(wcc(0, 1e-3, -1, -5, 0));
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.message(), HasSubstr("lr: must be positive, got 0"));
  EXPECT_THAT(bad.message(), HasSubstr("min_lr: must be between 0 and lr"));
  EXPECT_THAT(bad.message(), HasSubstr("warmup_steps: must be zero or positive, got -1"));
  EXPECT_THAT(bad.message(), HasSubstr("decay_start: must be at least warmup_steps"));
  EXPECT_THAT(bad.message(), HasSubstr("decay_steps: must be positive, got 0"));
  EXPECT_FALSE(validate(wcc(1e-3, 1e-4, 20, 10, 5)).ok());  // decay before the warmup ends
}

TEST(LrSchedule, NamesRoundTrip) {
  for (ScheduleType t : {ScheduleType::kWcc, ScheduleType::kWsd, ScheduleType::kCosine}) {
    absl::StatusOr<ScheduleType> parsed = parse_schedule_type(schedule_type_name(t));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, t);
  }
  for (DecayShape d : {DecayShape::kLinear, DecayShape::kOneMinusSqrt}) {
    absl::StatusOr<DecayShape> parsed = parse_decay_shape(decay_shape_name(d));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_THAT(parse_schedule_type("cosin").status().message(), HasSubstr("'cosin'"));
  EXPECT_FALSE(parse_decay_shape("sqrt").ok());
}

TEST(MtpSchedule, SwitchesAtTheSwitchStep) {
  const MtpSchedule m{0.3, 0.1, 100};
  EXPECT_DOUBLE_EQ(mtp_lambda(m, 0), 0.3);
  EXPECT_DOUBLE_EQ(mtp_lambda(m, 99), 0.3);
  EXPECT_DOUBLE_EQ(mtp_lambda(m, 100), 0.1);
  EXPECT_DOUBLE_EQ(mtp_lambda(m, 5000), 0.1);
  const MtpSchedule from_start{0.3, 0.1, 0};
  EXPECT_DOUBLE_EQ(mtp_lambda(from_start, 0), 0.1);
}

}  // namespace
}  // namespace fathom::trainer
