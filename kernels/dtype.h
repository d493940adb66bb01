// Element types and scalar conversions.
//
// The conversions are bit-identical to NVIDIA's host conversions in cuda_bf16.h and cuda_fp8.h
// (round to nearest, ties to even), so a CPU run quantizes exactly like a GPU run. They are
// tested exhaustively against those headers in tests/kernels/dtype_test.cc.
//
// fp8 e4m3 (OCP "E4M3FN"): no infinities, finite max 448, one NaN pattern per sign (S.1111.111).
// fp8 e5m2: IEEE-like, finite max 57344, has Inf and NaN.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string_view>

namespace fathom {

enum class DType : uint8_t { kF32, kBF16, kF8E4M3, kF8E5M2, kI32, kI64, kU8 };

// Storage structs: distinct types so templates can dispatch on them; layout = raw bits.
struct bf16 {
  uint16_t bits;
};
struct fp8e4m3 {
  uint8_t bits;
};
struct fp8e5m2 {
  uint8_t bits;
};

constexpr float kFp8E4M3Max = 448.0f;
constexpr float kFp8E5M2Max = 57344.0f;

size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);  // "f32", "bf16", "f8e4m3", ...
bool dtype_is_float(DType dtype);          // f32, bf16 and both fp8 formats

template <typename T>
constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::kF32; }
template <> constexpr DType dtype_of<bf16>() { return DType::kBF16; }
template <> constexpr DType dtype_of<fp8e4m3>() { return DType::kF8E4M3; }
template <> constexpr DType dtype_of<fp8e5m2>() { return DType::kF8E5M2; }
template <> constexpr DType dtype_of<int32_t>() { return DType::kI32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::kI64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::kU8; }

// Saturation for conversions into fp8 (matches __nv_saturation_t):
// kFinite clamps out-of-range finite values and +-Inf to +-max; kNone maps them to Inf (e5m2) or
// NaN (e4m3). NaN always stays NaN.
enum class Fp8Saturation : uint8_t { kNone, kFinite };

// ---- bf16 (inline: these sit in every hot loop) ----
inline float bf16_to_float(bf16 x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest even; NaN becomes the canonical quiet NaN 0x7FFF, as __float2bfloat16 does.
inline bf16 float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return bf16{0x7FFF};
  u += 0x7FFFu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

// ---- fp8 (inline: quantization passes convert every element) ----
namespace fp8_detail {

// Parameters of an 8-bit float format.
struct Format {
  int mant_bits;
  int bias;
  uint32_t overflow_bits;  // float bits above which a value overflows (max + ulp/2, exclusive
                           // for e4m3; e5m2 overflows at the midpoint itself: RNE goes up)
  uint32_t half_min_denorm_bits;  // float bits of min_denorm / 2: at or below rounds to zero
  uint8_t max_code;               // code of the largest finite value
  bool is_e4m3;                   // e4m3 has no infinity: its top code is NaN
};
inline constexpr Format kE4M3{3, 7, 0x43E80000u /*464*/, 0x3A800000u /*2^-10*/, 0x7E, true};
inline constexpr Format kE5M2{2, 15, 0x476FFFFFu /*61440 - ulp*/, 0x37000000u /*2^-17*/, 0x7B,
                              false};

// Round to nearest even, as __nv_cvt_float_to_fp8 does.
inline uint8_t round_to_fp8(float f, const Format& fmt, bool sat) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return 0x7F;  // NaN: canonical positive NaN in both formats, as NVIDIA
  if (a > fmt.overflow_bits) {       // includes +-Inf
    if (sat) return sign | fmt.max_code;
    return sign | (fmt.is_e4m3 ? 0x7F : 0x7C);
  }
  if (a <= fmt.half_min_denorm_bits) return sign;  // signed zero

  // 24-bit significand with the implicit bit; values this small are never float denormals.
  const uint32_t sig = (a & 0x7FFFFFu) | 0x800000u;
  const int e = static_cast<int>(a >> 23) - 127;
  const int min_normal_exp = 1 - fmt.bias;
  int drop = 23 - fmt.mant_bits;
  if (e < min_normal_exp) drop += min_normal_exp - e;  // denormal: fewer bits survive
  uint32_t kept = drop >= 32 ? 0 : sig >> drop;
  const uint32_t rem = sig & ((1u << drop) - 1u);
  const uint32_t half = 1u << (drop - 1);
  if (rem > half || (rem == half && (kept & 1u))) ++kept;  // round to nearest even
  // kept carries the implicit bit at 2^mant_bits for normals, which adds one exponent step; a
  // carry out of the mantissa moves into the exponent by plain addition.
  const uint32_t code =
      e < min_normal_exp ? kept : (static_cast<uint32_t>(e + fmt.bias - 1) << fmt.mant_bits) + kept;
  return sign | static_cast<uint8_t>(code);
}

constexpr float exp2i(int e) {
  float r = 1.0f;
  for (; e > 0; --e) r *= 2.0f;
  for (; e < 0; ++e) r *= 0.5f;  // exact: powers of two down to 2^-24 are normal floats
  return r;
}

// Every code's value, computed at compile time (exact: small integers times powers of two).
constexpr std::array<float, 256> decode_table(const Format& fmt) {
  std::array<float, 256> t{};
  const int max_exp_field = (1 << (7 - fmt.mant_bits)) - 1;
  for (int code = 0; code < 256; ++code) {
    const int exp_field = (code & 0x7F) >> fmt.mant_bits;
    const int mant = code & ((1 << fmt.mant_bits) - 1);
    float value;
    if ((fmt.is_e4m3 && exp_field == max_exp_field && mant == (1 << fmt.mant_bits) - 1) ||
        (!fmt.is_e4m3 && exp_field == max_exp_field && mant != 0)) {
      t[code] = std::numeric_limits<float>::quiet_NaN();  // the positive quiet NaN, either sign
      continue;
    } else if (!fmt.is_e4m3 && exp_field == max_exp_field) {
      value = std::numeric_limits<float>::infinity();
    } else if (exp_field == 0) {
      value = static_cast<float>(mant) * exp2i(1 - fmt.bias - fmt.mant_bits);
    } else {
      value = static_cast<float>(mant + (1 << fmt.mant_bits)) *
              exp2i(exp_field - fmt.bias - fmt.mant_bits);
    }
    t[code] = (code & 0x80) ? -value : value;
  }
  return t;
}
inline constexpr std::array<float, 256> kE4M3Values = decode_table(kE4M3);
inline constexpr std::array<float, 256> kE5M2Values = decode_table(kE5M2);

}  // namespace fp8_detail

inline float fp8e4m3_to_float(fp8e4m3 x) { return fp8_detail::kE4M3Values[x.bits]; }
inline float fp8e5m2_to_float(fp8e5m2 x) { return fp8_detail::kE5M2Values[x.bits]; }
inline fp8e4m3 float_to_fp8e4m3(float f, Fp8Saturation sat = Fp8Saturation::kFinite) {
  return fp8e4m3{fp8_detail::round_to_fp8(f, fp8_detail::kE4M3, sat == Fp8Saturation::kFinite)};
}
inline fp8e5m2 float_to_fp8e5m2(float f, Fp8Saturation sat = Fp8Saturation::kFinite) {
  return fp8e5m2{fp8_detail::round_to_fp8(f, fp8_detail::kE5M2, sat == Fp8Saturation::kFinite)};
}

// Generic load/store between a storage type and float, for templated kernels.
inline float to_float(float x) { return x; }
inline float to_float(bf16 x) { return bf16_to_float(x); }
inline float to_float(fp8e4m3 x) { return fp8e4m3_to_float(x); }
inline float to_float(fp8e5m2 x) { return fp8e5m2_to_float(x); }

template <typename T>
T from_float(float f);
template <> inline float from_float<float>(float f) { return f; }
template <> inline bf16 from_float<bf16>(float f) { return float_to_bf16(f); }
template <> inline fp8e4m3 from_float<fp8e4m3>(float f) { return float_to_fp8e4m3(f); }
template <> inline fp8e5m2 from_float<fp8e5m2>(float f) { return float_to_fp8e5m2(f); }

}  // namespace fathom
