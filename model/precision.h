// Training precision modes (the `precision:` of a run; SPEC.md section 2, DESIGN.md decision 5).
//
//   fp32  every GEMM in f32.
//   bf16  Linear GEMMs take bf16 operands (rounded from the f32 master weights and f32
//         activations) and accumulate in f32.
//   fp8   all three GEMMs of each Linear (forward, input gradient, weight gradient) take E4M3
//         operands with 1x128 scales for activations and gradients and 128x128 scales for weights,
//         and accumulate in f32. AdamW moments are bf16.
// In every mode the embedding, output head, MoE gate, norms and the attention core run in f32,
// master weights and gradients are f32, and activations between layers are f32.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace fathom::model {

enum class TrainingPrecision : uint8_t { kFp32, kBf16, kFp8 };

std::string_view precision_name(TrainingPrecision p);  // "fp32" / "bf16" / "fp8"
// The inverse of precision_name; InvalidArgument naming the value and the accepted names.
absl::StatusOr<TrainingPrecision> parse_precision(std::string_view name);

}  // namespace fathom::model
