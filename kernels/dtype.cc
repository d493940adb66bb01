#include "kernels/dtype.h"

#include <array>
#include <cmath>
#include <limits>

#include "kernels/check.h"

namespace fathom {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kBF16: return 2;
    case DType::kF8E4M3: return 1;
    case DType::kF8E5M2: return 1;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
    case DType::kU8: return 1;
  }
  FATHOM_CHECK(false) << "unknown dtype " << static_cast<int>(dtype);
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "f32";
    case DType::kBF16: return "bf16";
    case DType::kF8E4M3: return "f8e4m3";
    case DType::kF8E5M2: return "f8e5m2";
    case DType::kI32: return "i32";
    case DType::kI64: return "i64";
    case DType::kU8: return "u8";
  }
  return "invalid";
}

bool dtype_is_float(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF8E4M3 ||
         dtype == DType::kF8E5M2;
}

namespace {

// Parameters of an 8-bit float format.
struct Fp8Format {
  int mant_bits;
  int bias;
  uint32_t overflow_bits;       // float bits above which a value overflows (max + ulp/2, exclusive
                                // for e4m3; e5m2 overflows at the midpoint itself: RNE goes up)
  uint32_t half_min_denorm_bits;  // float bits of min_denorm / 2: at or below rounds to zero
  uint8_t max_code;             // code of the largest finite value
};

constexpr Fp8Format kE4M3{3, 7, 0x43E80000u /*464*/, 0x3A800000u /*2^-10*/,
                          0x7E};
constexpr Fp8Format kE5M2{2, 15, 0x476FFFFFu /*61440 - ulp*/,
                          0x37000000u /*2^-17*/, 0x7B};

uint8_t round_to_fp8(float f, const Fp8Format& fmt, bool sat, bool is_e4m3) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return 0x7F;  // NaN: canonical positive NaN in both formats, as NVIDIA
  if (a > fmt.overflow_bits) {  // includes +-Inf
    if (sat) return sign | fmt.max_code;
    return sign | (is_e4m3 ? 0x7F : 0x7C);
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

float decode_fp8(uint8_t code, int mant_bits, int bias, bool is_e4m3) {
  const bool negative = code & 0x80;
  const int exp_field = (code & 0x7F) >> mant_bits;
  const int mant = code & ((1 << mant_bits) - 1);
  const int max_exp_field = (1 << (7 - mant_bits)) - 1;
  float value;
  if (is_e4m3 && exp_field == max_exp_field && mant == (1 << mant_bits) - 1) {
    return std::numeric_limits<float>::quiet_NaN();
  } else if (!is_e4m3 && exp_field == max_exp_field) {
    if (mant != 0) return std::numeric_limits<float>::quiet_NaN();
    value = std::numeric_limits<float>::infinity();
  } else if (exp_field == 0) {
    value = std::ldexp(static_cast<float>(mant), 1 - bias - mant_bits);
  } else {
    value = std::ldexp(static_cast<float>(mant + (1 << mant_bits)), exp_field - bias - mant_bits);
  }
  return negative ? -value : value;
}

template <bool kIsE4M3>
const std::array<float, 256>& decode_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) {
      t[c] = kIsE4M3 ? decode_fp8(static_cast<uint8_t>(c), 3, 7, true)
                     : decode_fp8(static_cast<uint8_t>(c), 2, 15, false);
    }
    return t;
  }();
  return table;
}

}  // namespace

float fp8e4m3_to_float(fp8e4m3 x) { return decode_table<true>()[x.bits]; }
float fp8e5m2_to_float(fp8e5m2 x) { return decode_table<false>()[x.bits]; }

fp8e4m3 float_to_fp8e4m3(float f, Fp8Saturation sat) {
  return fp8e4m3{round_to_fp8(f, kE4M3, sat == Fp8Saturation::kFinite, true)};
}
fp8e5m2 float_to_fp8e5m2(float f, Fp8Saturation sat) {
  return fp8e5m2{round_to_fp8(f, kE5M2, sat == Fp8Saturation::kFinite, false)};
}

}  // namespace fathom
