// dtype conversions against NVIDIA's host conversions (cuda_bf16.h / cuda_fp8.h): exhaustive over
// all 256 fp8 codes, and over f32 inputs at and around every rounding boundary.
#include "kernels/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#if FATHOM_HAVE_NV_HOST_CONVERSIONS
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#endif

namespace fathom {
namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

TEST(DType, SizesAndNames) {
  EXPECT_EQ(dtype_size(DType::kF32), 4u);
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(dtype_size(DType::kF8E4M3), 1u);
  EXPECT_EQ(dtype_size(DType::kI64), 8u);
  EXPECT_EQ(dtype_name(DType::kF8E5M2), "f8e5m2");
}

TEST(DType, E4M3KnownValues) {
  EXPECT_EQ(fp8e4m3_to_float({0x7E}), 448.0f);
  EXPECT_EQ(float_to_fp8e4m3(448.0f).bits, 0x7E);
  EXPECT_EQ(float_to_fp8e4m3(1e6f).bits, 0x7E);          // saturates
  EXPECT_EQ(float_to_fp8e4m3(-1e6f).bits, 0xFE);
  EXPECT_EQ(float_to_fp8e4m3(INFINITY).bits, 0x7E);
  EXPECT_EQ(float_to_fp8e4m3(1e6f, Fp8Saturation::kNone).bits, 0x7F);  // NaN without saturation
  EXPECT_TRUE(std::isnan(fp8e4m3_to_float({0x7F})));
  EXPECT_EQ(fp8e4m3_to_float({0x01}), std::ldexp(1.0f, -9));  // smallest denormal
  EXPECT_EQ(float_to_fp8e4m3(1.0f).bits, 0x38);
  EXPECT_EQ(float_to_fp8e4m3(-0.0f).bits, 0x80);
}

TEST(DType, E5M2KnownValues) {
  EXPECT_EQ(fp8e5m2_to_float({0x7B}), 57344.0f);
  EXPECT_TRUE(std::isinf(fp8e5m2_to_float({0x7C})));
  EXPECT_EQ(float_to_fp8e5m2(INFINITY, Fp8Saturation::kNone).bits, 0x7C);
  EXPECT_EQ(float_to_fp8e5m2(INFINITY).bits, 0x7B);
  EXPECT_EQ(float_to_fp8e5m2(1.0f).bits, 0x3C);
}

TEST(DType, Bf16KnownValues) {
  EXPECT_EQ(float_to_bf16(1.0f).bits, 0x3F80);
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties to even (down).
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)).bits, 0x3F80);
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)).bits, 0x3F82);  // tie, rounds up
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(NAN))));
  EXPECT_EQ(bf16_to_float(float_to_bf16(3.0e38f * 10)), INFINITY);
}

// Every fp8 code decodes to a value that re-encodes to the same code (NaNs stay NaN).
TEST(DType, Fp8RoundTripAllCodes) {
  for (int c = 0; c < 256; ++c) {
    const float e4 = fp8e4m3_to_float({static_cast<uint8_t>(c)});
    if (std::isnan(e4)) {
      EXPECT_TRUE(std::isnan(fp8e4m3_to_float(float_to_fp8e4m3(e4)))) << c;
    } else {
      EXPECT_EQ(float_to_fp8e4m3(e4).bits, c) << "e4m3 code " << c;
    }
    const float e5 = fp8e5m2_to_float({static_cast<uint8_t>(c)});
    if (std::isnan(e5)) {
      EXPECT_TRUE(std::isnan(fp8e5m2_to_float(float_to_fp8e5m2(e5)))) << c;
    } else {
      EXPECT_EQ(float_to_fp8e5m2(e5, Fp8Saturation::kNone).bits, c) << "e5m2 code " << c;
    }
  }
}

#if FATHOM_HAVE_NV_HOST_CONVERSIONS

// Inputs that exercise every rounding decision: for each pair of adjacent fp8 values, the
// midpoint and the floats on either side of it, both ends, plus the special values and random
// floats over the whole exponent range.
std::vector<float> boundary_inputs(float (*decode)(uint8_t)) {
  std::vector<float> xs = {0.0f,       -0.0f,      INFINITY,   -INFINITY,  NAN,       -NAN,
                           1e-45f,     -1e-45f,    1e-38f,     3.4e38f,    -3.4e38f,
                           float_of(0x7FC00001u),  float_of(0x7FA00000u),  float_of(0xFFE00000u)};
  std::vector<float> finite;
  for (int c = 0; c < 256; ++c) {
    const float v = decode(static_cast<uint8_t>(c));
    if (std::isfinite(v)) finite.push_back(v);
  }
  std::sort(finite.begin(), finite.end());
  finite.push_back(std::ldexp(finite.back(), 1));  // beyond the max: overflow boundaries
  finite.insert(finite.begin(), -finite.back());
  for (size_t i = 0; i + 1 < finite.size(); ++i) {
    const double mid = (static_cast<double>(finite[i]) + finite[i + 1]) / 2;
    const float m = static_cast<float>(mid);
    for (float x : {finite[i], m, std::nextafter(m, -INFINITY), std::nextafter(m, INFINITY)}) {
      xs.push_back(x);
    }
  }
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> any_bits;
  for (int i = 0; i < 200000; ++i) xs.push_back(float_of(any_bits(rng)));
  return xs;
}

float nv_e4m3_decode(uint8_t c) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(c, __NV_E4M3)));
}
float nv_e5m2_decode(uint8_t c) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(c, __NV_E5M2)));
}

void expect_same_float(float ours, float theirs, const char* what, int code) {
  if (std::isnan(theirs)) {
    EXPECT_TRUE(std::isnan(ours)) << what << " code " << code;
  } else {
    EXPECT_EQ(bits_of(ours), bits_of(theirs)) << what << " code " << code;
  }
}

TEST(DTypeVsNvidia, Fp8DecodeAll256Codes) {
  for (int c = 0; c < 256; ++c) {
    expect_same_float(fp8e4m3_to_float({static_cast<uint8_t>(c)}), nv_e4m3_decode(c), "e4m3", c);
    expect_same_float(fp8e5m2_to_float({static_cast<uint8_t>(c)}), nv_e5m2_decode(c), "e5m2", c);
  }
}

TEST(DTypeVsNvidia, E4M3EncodeBoundaries) {
  int mismatches = 0;
  for (float x : boundary_inputs(nv_e4m3_decode)) {
    for (auto [ours, theirs] : {std::pair{Fp8Saturation::kFinite, __NV_SATFINITE},
                                std::pair{Fp8Saturation::kNone, __NV_NOSAT}}) {
      const uint8_t want = __nv_cvt_float_to_fp8(x, theirs, __NV_E4M3);
      const uint8_t got = float_to_fp8e4m3(x, ours).bits;
      if (got != want && ++mismatches < 10) {
        ADD_FAILURE() << "e4m3(" << x << " bits 0x" << std::hex << bits_of(x) << ") = 0x"
                      << int(got) << ", NVIDIA 0x" << int(want);
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(DTypeVsNvidia, E5M2EncodeBoundaries) {
  int mismatches = 0;
  for (float x : boundary_inputs(nv_e5m2_decode)) {
    for (auto [ours, theirs] : {std::pair{Fp8Saturation::kFinite, __NV_SATFINITE},
                                std::pair{Fp8Saturation::kNone, __NV_NOSAT}}) {
      const uint8_t want = __nv_cvt_float_to_fp8(x, theirs, __NV_E5M2);
      const uint8_t got = float_to_fp8e5m2(x, ours).bits;
      if (got != want && ++mismatches < 10) {
        ADD_FAILURE() << "e5m2(" << x << " bits 0x" << std::hex << bits_of(x) << ") = 0x"
                      << int(got) << ", NVIDIA 0x" << int(want);
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(DTypeVsNvidia, Bf16EncodeBoundaries) {
  // Every bf16 code's neighbourhood: the value, the midpoints to the next code and the floats
  // just around them, plus random bit patterns (NaNs, denormals and infinities included).
  std::vector<float> xs;
  for (uint32_t c = 0; c < 0x10000u; ++c) {
    const uint32_t lo = c << 16;
    for (uint32_t u : {lo, lo + 0x7FFFu, lo + 0x8000u, lo + 0x8001u, lo + 0xFFFFu}) {
      xs.push_back(float_of(u));
    }
  }
  std::mt19937 rng(11);
  std::uniform_int_distribution<uint32_t> any_bits;
  for (int i = 0; i < 200000; ++i) xs.push_back(float_of(any_bits(rng)));
  int mismatches = 0;
  for (float x : xs) {
    const __nv_bfloat16 nv = __float2bfloat16(x);
    uint16_t want;
    std::memcpy(&want, &nv, sizeof want);
    const uint16_t got = float_to_bf16(x).bits;
    const bool both_nan = std::isnan(x);  // NaN payloads: both must stay NaN
    if (both_nan) {
      if (!std::isnan(bf16_to_float(bf16{got}))) ++mismatches;
      continue;
    }
    if (got != want && ++mismatches < 10) {
      ADD_FAILURE() << "bf16(bits 0x" << std::hex << bits_of(x) << ") = 0x" << got
                    << ", NVIDIA 0x" << want;
    }
    // Decoding is exact widening.
    EXPECT_EQ(bits_of(bf16_to_float(bf16{got})), static_cast<uint32_t>(got) << 16);
  }
  EXPECT_EQ(mismatches, 0);
}

#else
TEST(DTypeVsNvidia, SkippedWithoutCudaHeaders) {
  GTEST_SKIP() << "cuda_fp8.h not found: NVIDIA host conversions unavailable as a reference";
}
#endif

}  // namespace
}  // namespace fathom
