// Learning-rate and MTP-weight schedules: pure functions of the optimizer step (SPEC.md section 2).
//
// Steps are 0-based: step s is the (s+1)-th optimizer update. Every schedule starts with a linear
// warmup that reaches `lr` at the last warmup step (step s < warmup_steps uses
// lr * (s + 1) / warmup_steps, so the first update is not wasted with lr 0), then:
//   wcc     (DeepSeek-V3: warmup, constant, cosine) constant lr until decay_start, cosine from lr
//           to min_lr over [decay_start, decay_start + decay_steps], then constant min_lr.
//   wsd     (warmup, stable, decay) the same stretches as wcc, but the decay is linear, or "1-sqrt"
//           (min_lr + (lr - min_lr) (1 - sqrt(p))), which keeps the lr higher for longer.
//   cosine  cosine from lr right after warmup to min_lr at total_steps (decay_start is
//           warmup_steps and decay_steps is total_steps - warmup_steps; see make_cosine()).
// With p = (s - decay_start) / decay_steps in [0, 1] the decay factor is 1 at p = 0 and 0 at p = 1,
// so the warmup reaches lr exactly where the constant stretch begins, and every schedule is
// non-decreasing during warmup and non-increasing after it. Steps past the end keep min_lr.
//
// The MTP loss weight (V3: lambda 0.3 for the first 10T tokens, then 0.1) is a step function:
// lambda for steps < switch_step, lambda_after from switch_step on.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fathom::trainer {

enum class ScheduleType : uint8_t { kWcc, kWsd, kCosine };
// Shape of the wsd decay.
enum class DecayShape : uint8_t { kLinear, kOneMinusSqrt };

std::string_view schedule_type_name(ScheduleType type);  // "wcc" / "wsd" / "cosine"
// InvalidArgument naming the value and the accepted names.
absl::StatusOr<ScheduleType> parse_schedule_type(std::string_view name);
std::string_view decay_shape_name(DecayShape shape);  // "linear" / "1-sqrt"
absl::StatusOr<DecayShape> parse_decay_shape(std::string_view name);

struct LrSchedule {
  ScheduleType type = ScheduleType::kWcc;
  double lr = 3e-3;      // peak learning rate
  double min_lr = 3e-4;  // final learning rate
  int64_t warmup_steps = 0;
  int64_t decay_start = 0;                       // first step of the decay
  int64_t decay_steps = 1;                       // length of the decay
  DecayShape decay_shape = DecayShape::kLinear;  // wsd only

  bool operator==(const LrSchedule&) const = default;
};

// The cosine schedule of a run of total_steps steps (decay_start = warmup_steps, decay_steps =
// total_steps - warmup_steps).
LrSchedule make_cosine(double lr, double min_lr, int64_t warmup_steps, int64_t total_steps);

// InvalidArgument, one line per violated constraint ("lr: must be positive, got 0"): lr > 0,
// 0 <= min_lr <= lr, warmup_steps >= 0, decay_start >= warmup_steps, decay_steps >= 1.
absl::Status validate(const LrSchedule& schedule);

// The learning rate of step `step` (>= 0; FATHOM_CHECK otherwise). `schedule` must be valid.
double learning_rate(const LrSchedule& schedule, int64_t step);

struct MtpSchedule {
  double lambda = 0.3;
  double lambda_after = 0.1;
  int64_t switch_step = 0;

  bool operator==(const MtpSchedule&) const = default;
};

// lambda for step < switch_step, lambda_after otherwise.
double mtp_lambda(const MtpSchedule& schedule, int64_t step);

}  // namespace fathom::trainer
