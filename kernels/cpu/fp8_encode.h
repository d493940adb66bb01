// A branch-free float -> E4M3 encoder with saturation for the CPU quantization loops, bit-identical
// to float_to_fp8e4m3(f, Fp8Saturation::kFinite) (kernels/dtype.h) for every float. Its selects
// instead of branches let the compiler vectorise a loop of conversions. Not for use outside
// kernels/cpu/ and its tests.
#pragma once

#include <cstdint>
#include <cstring>

namespace fathom::cpu {

inline uint8_t encode_e4m3_saturating(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t a = u & 0x7FFFFFFFu;
  // Normals (|f| >= 2^-6): round the mantissa to 3 bits, nearest even, as float_to_bf16 does to
  // 7; a carry moves into the exponent. Rebias the exponent from 127 to 7.
  const uint32_t rounded = a + 0x7FFFFu + ((a >> 20) & 1u);
  const uint32_t normal = (rounded >> 20) - (120u << 3);
  // Denormals (2^-10 < |f| < 2^-6): the code is |f| / 2^-9 rounded to the nearest even integer
  // (adding and subtracting 2^23 rounds in the default mode); 8 is the smallest normal's code.
  float af;
  std::memcpy(&af, &a, sizeof af);
  const float steps = (af * 512.0f + 8388608.0f) - 8388608.0f;
  const uint32_t denormal = static_cast<uint32_t>(static_cast<int32_t>(steps));  // 0..8
  // Selects as masks (all ones where the condition holds), which the compiler vectorises.
  const auto mask = [](bool condition) { return 0u - static_cast<uint32_t>(condition); };
  const auto select = [](uint32_t m, uint32_t yes, uint32_t no) { return (yes & m) | (no & ~m); };
  uint32_t code = select(mask(a >= 0x3C800000u), normal, denormal);
  code = select(mask(a > 0x43E80000u), 0x7Eu, code);  // above 464 (and Inf): saturate to 448
  code = select(mask(a <= 0x3A800000u), 0u, code);    // at or below 2^-10: signed zero
  code |= sign;
  code = select(mask(a > 0x7F800000u), 0x7Fu, code);  // NaN: the canonical positive NaN
  return static_cast<uint8_t>(code);
}

}  // namespace fathom::cpu
