#include "model/precision.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fathom::model {

std::string_view precision_name(TrainingPrecision p) {
  switch (p) {
    case TrainingPrecision::kFp32:
      return "fp32";
    case TrainingPrecision::kBf16:
      return "bf16";
    case TrainingPrecision::kFp8:
      return "fp8";
  }
  return "?";
}

absl::StatusOr<TrainingPrecision> parse_precision(std::string_view name) {
  for (TrainingPrecision p :
       {TrainingPrecision::kFp32, TrainingPrecision::kBf16, TrainingPrecision::kFp8}) {
    if (precision_name(p) == name) return p;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown precision '", std::string(name),
                                                 "' (expected fp32, bf16 or fp8)"));
}

}  // namespace fathom::model
