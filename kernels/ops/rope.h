// Rotary position embedding, with DeepSeek-V3's YaRN frequency blending (SPEC.md section 1).
//
// Two pairings: kInterleaved rotates (x[2i], x[2i+1]) (GPT-J style; DeepSeek's checkpoints),
// kHalf rotates (x[i], x[i + d/2]) (GPT-NeoX style; Llama and Qwen2 checkpoints). Pair i turns by
// pos * freq_i with freq_i = base^(-2i/d).
#pragma once

#include <cstdint>
#include <optional>

#include "kernels/tensor.h"

namespace fathom {

enum class RopeStyle : uint8_t { kInterleaved, kHalf };

struct YarnConfig {
  float factor = 40.0f;
  int64_t original_max_position = 4096;
  float beta_fast = 32.0f;
  float beta_slow = 1.0f;
  float mscale = 1.0f;
};

struct RopeConfig {
  int64_t dim = 64;  // rotated dims per head (even)
  float base = 10000.0f;
  RopeStyle style = RopeStyle::kInterleaved;
  std::optional<YarnConfig> yarn = std::nullopt;  // applied when set
};

struct RopeTable {
  Tensor cos;  // (max_position, dim / 2) f32
  Tensor sin;  // (max_position, dim / 2) f32
  RopeStyle style = RopeStyle::kInterleaved;
  // Multiplier for the attention softmax scale: YaRN's mscale^2 = (0.1 * mscale * ln(factor) + 1)^2,
  // or 1 without YaRN.
  float attention_scale = 1.0f;
};

// Frequencies blended as freq / factor * (1 - smooth) + freq * smooth, with smooth a linear ramp
// between the correction dims of beta_fast and beta_slow (as in DeepSeek's reference). Tables
// are computed in double and stored as f32 on `device`.
RopeTable make_rope_table(const RopeConfig& config, int64_t max_position,
                          Device device = Device::cpu());

// In place on x: (T, H, Dh) f32/bf16; rotates the LAST table.dim dims of each head (MLA's
// [nope | rope] heads). positions: (T) i32, each in [0, max_position): checked on the CPU (error);
// on CUDA, where a check would synchronise, an out-of-range position turns its pairs into NaN so the
// loss shows it. inverse rotates by -angle, which is the backward of the forward rotation (apply
// it to the gradient).
void rope_apply(Tensor& x, const Tensor& positions, const RopeTable& table, bool inverse = false);

}  // namespace fathom
