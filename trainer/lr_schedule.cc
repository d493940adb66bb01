#include "trainer/lr_schedule.h"

#include <cmath>
#include <numbers>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/check.h"

namespace fathom::trainer {

std::string_view schedule_type_name(ScheduleType type) {
  switch (type) {
    case ScheduleType::kWcc:
      return "wcc";
    case ScheduleType::kWsd:
      return "wsd";
    case ScheduleType::kCosine:
      return "cosine";
  }
  return "?";
}

absl::StatusOr<ScheduleType> parse_schedule_type(std::string_view name) {
  for (ScheduleType t : {ScheduleType::kWcc, ScheduleType::kWsd, ScheduleType::kCosine}) {
    if (schedule_type_name(t) == name) return t;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown schedule type '", std::string(name),
                                                 "' (expected wcc, wsd or cosine)"));
}

std::string_view decay_shape_name(DecayShape shape) {
  return shape == DecayShape::kLinear ? "linear" : "1-sqrt";
}

absl::StatusOr<DecayShape> parse_decay_shape(std::string_view name) {
  for (DecayShape s : {DecayShape::kLinear, DecayShape::kOneMinusSqrt}) {
    if (decay_shape_name(s) == name) return s;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown decay shape '", std::string(name), "' (expected linear or 1-sqrt)"));
}

LrSchedule make_cosine(double lr, double min_lr, int64_t warmup_steps, int64_t total_steps) {
  LrSchedule s;
  s.type = ScheduleType::kCosine;
  s.lr = lr;
  s.min_lr = min_lr;
  s.warmup_steps = warmup_steps;
  s.decay_start = warmup_steps;
  s.decay_steps = total_steps - warmup_steps;
  return s;
}

absl::Status validate(const LrSchedule& s) {
  std::vector<std::string> problems;
  if (!(s.lr > 0)) problems.push_back(absl::StrCat("lr: must be positive, got ", s.lr));
  if (!(s.min_lr >= 0 && s.min_lr <= s.lr)) {
    problems.push_back(
        absl::StrCat("min_lr: must be between 0 and lr (", s.lr, "), got ", s.min_lr));
  }
  if (s.warmup_steps < 0) {
    problems.push_back(
        absl::StrCat("warmup_steps: must be zero or positive, got ", s.warmup_steps));
  }
  if (s.decay_start < s.warmup_steps) {
    problems.push_back(absl::StrCat("decay_start: must be at least warmup_steps (", s.warmup_steps,
                                    "), got ", s.decay_start));
  }
  if (s.decay_steps < 1) {
    problems.push_back(absl::StrCat("decay_steps: must be positive, got ", s.decay_steps));
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(problems, "\n"));
}

double learning_rate(const LrSchedule& s, int64_t step) {
  FATHOM_CHECK(step >= 0) << "learning_rate: step must be >= 0, got " << step;
  if (step < s.warmup_steps) {
    return s.lr * static_cast<double>(step + 1) / static_cast<double>(s.warmup_steps);
  }
  if (step < s.decay_start) return s.lr;
  if (step >= s.decay_start + s.decay_steps) return s.min_lr;
  const double p = static_cast<double>(step - s.decay_start) / static_cast<double>(s.decay_steps);
  double factor = 0;  // 1 at the start of the decay, 0 at its end
  if (s.type == ScheduleType::kWsd) {
    factor = s.decay_shape == DecayShape::kLinear ? 1.0 - p : 1.0 - std::sqrt(p);
  } else {
    factor = 0.5 * (1.0 + std::cos(std::numbers::pi * p));
  }
  return s.min_lr + (s.lr - s.min_lr) * factor;
}

double mtp_lambda(const MtpSchedule& schedule, int64_t step) {
  return step < schedule.switch_step ? schedule.lambda : schedule.lambda_after;
}

}  // namespace fathom::trainer
