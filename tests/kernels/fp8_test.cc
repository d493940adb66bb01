// FP8 E4M3 block quantization (kernels/fp8.h): scale shapes, bit-exact agreement with a scalar
// restatement of the contract, the round-trip error bound, the block maximum at +-448, power-of-two
// scales, zero blocks, per-expert weights and bf16 input.
#include "kernels/cpu/fp8_encode.h"
#include "kernels/fp8.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "tests/kernels/test_util.h"

namespace fathom {
namespace {

using testing::error_of;

using ::testing::HasSubstr;

int64_t ceil128(int64_t n) { return (n + 127) / 128; }

// Values whose magnitudes span 2^-12 .. 2^6, so blocks hold both normal and subnormal E4M3 codes.
std::vector<float> wide_values(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> mant(-1.0f, 1.0f);
  std::uniform_int_distribution<int> exp(-12, 6);
  std::vector<float> v(n);
  for (float& x : v) x = std::ldexp(mant(rng), exp(rng));
  return v;
}

// Block coordinates of element i of data shaped (batch, m, k) for `block`: returns the index into
// the flattened scale tensor.
int64_t scale_index(int64_t i, int64_t m, int64_t k, ScaleBlock block) {
  const int64_t row = i / k;  // row of the (rows, k) view
  const int64_t col = i % k;
  if (block == ScaleBlock::k1x128) return row * ceil128(k) + col / 128;
  const int64_t g = row / m;
  return (g * ceil128(m) + (row % m) / 128) * ceil128(k) + col / 128;
}

// The contract restated element by element: amax over the block's valid elements, scale =
// amax / 448 (or its power-of-two ceiling), q = e4m3(x / scale).
struct Reference {
  std::vector<float> scales;
  std::vector<uint8_t> bits;
};
Reference reference_quantize(const std::vector<float>& x, int64_t m, int64_t k, ScaleBlock block,
                             bool pow2, int64_t n_scales) {
  Reference ref;
  std::vector<float> amax(n_scales, 0.0f);
  for (size_t i = 0; i < x.size(); ++i) {
    float& a = amax[scale_index(static_cast<int64_t>(i), m, k, block)];
    a = std::max(a, std::fabs(x[i]));
  }
  for (float a : amax) {
    float s = a / 448.0f;
    if (s == 0.0f) s = 1.0f;
    if (pow2) {
      // Smallest power of two >= s, by doubling from below (independent of frexp).
      float p = std::ldexp(1.0f, -140);
      while (p < s) p *= 2.0f;
      s = p;
    }
    ref.scales.push_back(s);
  }
  for (size_t i = 0; i < x.size(); ++i) {
    const float s = ref.scales[scale_index(static_cast<int64_t>(i), m, k, block)];
    ref.bits.push_back(float_to_fp8e4m3(x[i] / s).bits);
  }
  return ref;
}

std::vector<uint8_t> fp8_bits(const Tensor& t) {
  const fp8e4m3* p = t.data<fp8e4m3>();
  std::vector<uint8_t> out(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = p[i].bits;
  return out;
}

struct Case {
  Shape shape;
  ScaleBlock block;
};
std::string case_str(const Case& c, bool pow2) {
  return shape_str(c.shape) + (c.block == ScaleBlock::k1x128 ? " 1x128" : " 128x128") +
         (pow2 ? " pow2" : "");
}

// Ragged K (and ragged M for 128x128), with and without leading batch dims.
std::vector<Case> ragged_cases() {
  std::vector<Case> cases;
  for (int64_t k : {1, 127, 128, 129, 300}) {
    cases.push_back({{k}, ScaleBlock::k1x128});
    cases.push_back({{3, k}, ScaleBlock::k1x128});
    cases.push_back({{2, 3, k}, ScaleBlock::k1x128});
  }
  for (int64_t m : {1, 127, 129, 300}) {
    for (int64_t k : {1, 129, 300}) cases.push_back({{m, k}, ScaleBlock::k128x128});
  }
  cases.push_back({{3, 130, 200}, ScaleBlock::k128x128});
  return cases;
}

// The quantization loops use a branch-free encoder so that they vectorise; it must equal the
// reference conversion (itself checked against NVIDIA's, dtype_test.cc). It was checked over all
// 2^32 floats when written (4 s); the test covers every float of the exponents where a rule
// changes (zero, denormal, normal, saturation boundaries) and every 61st float of every exponent,
// both signs.
TEST(Fp8Encode, BranchFreeEncoderEqualsTheReference) {
  int64_t checked = 0;
  std::vector<uint32_t> wrong;
  const auto check = [&](uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    ++checked;
    if (cpu::encode_e4m3_saturating(f) != float_to_fp8e4m3(f).bits && wrong.size() < 8) {
      wrong.push_back(u);
    }
  };
  for (uint32_t sign : {0u, 0x80000000u}) {
    // 2^-10 (zero below), 2^-6 (smallest normal), 464 (saturation), Inf / NaN.
    for (uint32_t exponent : {116u, 117u, 120u, 121u, 135u, 136u, 255u}) {
      for (uint32_t mantissa = 0; mantissa < (1u << 23); ++mantissa) {
        check(sign | (exponent << 23) | mantissa);
      }
    }
    for (uint32_t exponent = 0; exponent < 256; ++exponent) {
      for (uint32_t mantissa = 0; mantissa < (1u << 23); mantissa += 61) {
        check(sign | (exponent << 23) | mantissa);
      }
    }
  }
  EXPECT_GT(checked, 100'000'000);
  EXPECT_TRUE(wrong.empty()) << "first mismatching float bits: 0x" << std::hex << wrong[0];
}

TEST(Fp8Quant, ScaleShapes) {
  for (int64_t k : {1, 127, 128, 129, 300}) {
    EXPECT_EQ(fp8_scale_shape({k}, ScaleBlock::k1x128), (Shape{1, ceil128(k)})) << k;
    EXPECT_EQ(fp8_scale_shape({4, 5, k}, ScaleBlock::k1x128), (Shape{20, ceil128(k)})) << k;
    for (int64_t m : {1, 127, 128, 129, 300}) {
      EXPECT_EQ(fp8_scale_shape({m, k}, ScaleBlock::k128x128), (Shape{ceil128(m), ceil128(k)}))
          << m << "x" << k;
      EXPECT_EQ(fp8_scale_shape({7, m, k}, ScaleBlock::k128x128),
                (Shape{7, ceil128(m), ceil128(k)}))
          << m << "x" << k;
    }
  }
  EXPECT_EQ(fp8_scale_shape({1, 300}, ScaleBlock::k1x128), (Shape{1, 3}));
  EXPECT_EQ(fp8_scale_shape({129, 1}, ScaleBlock::k128x128), (Shape{2, 1}));
  EXPECT_THAT(error_of([] { fp8_scale_shape({128}, ScaleBlock::k128x128); }),
              HasSubstr("128x128 blocks need >= 2 dims, got [128]"));
  EXPECT_THAT(error_of([] { fp8_scale_shape({}, ScaleBlock::k1x128); }),
              HasSubstr("fp8_scale_shape"));
}

TEST(Fp8Quant, MatchesScalarContractBitForBit) {
  uint32_t seed = 1;
  for (const Case& c : ragged_cases()) {
    for (bool pow2 : {false, true}) {
      const int64_t k = c.shape.back();
      const int64_t m = c.shape.size() >= 2 ? c.shape[c.shape.size() - 2] : 1;
      int64_t n = 1;
      for (int64_t d : c.shape) n *= d;
      const std::vector<float> x = wide_values(n, seed++);
      const Fp8Tensor q = quantize_fp8(Tensor::from_floats(x, c.shape), c.block, {pow2});
      ASSERT_EQ(q.scales.shape(), fp8_scale_shape(c.shape, c.block)) << case_str(c, pow2);
      ASSERT_EQ(q.data.shape(), c.shape) << case_str(c, pow2);
      EXPECT_EQ(q.block, c.block);
      const Reference ref = reference_quantize(x, m, k, c.block, pow2, q.scales.numel());
      EXPECT_EQ(q.scales.to_vector<float>(), ref.scales) << case_str(c, pow2);
      EXPECT_EQ(fp8_bits(q.data), ref.bits) << case_str(c, pow2);
    }
  }
}

// |dequant(q(x)) - x| <= half an E4M3 ulp of x / s, times s. For |x / s| >= 2^-6 (normal) the ulp
// is 2^(e - 3) with 2^e <= |x / s|, so half an ulp <= 2^-4 |x / s|; below, the subnormal step is
// 2^-9, half of it 2^-10. The f32 division and the f32 product in dequantization add 2^-24
// relative each, covered by the 2^-20 |x| term.
TEST(Fp8Quant, RoundTripWithinHalfUlp) {
  uint32_t seed = 100;
  for (const Case& c : ragged_cases()) {
    for (bool pow2 : {false, true}) {
      const int64_t k = c.shape.back();
      const int64_t m = c.shape.size() >= 2 ? c.shape[c.shape.size() - 2] : 1;
      int64_t n = 1;
      for (int64_t d : c.shape) n *= d;
      const std::vector<float> x = wide_values(n, seed++);
      const Fp8Tensor q = quantize_fp8(Tensor::from_floats(x, c.shape), c.block, {pow2});
      Tensor back = Tensor::empty(c.shape, DType::kF32);
      dequantize_fp8(q, back);
      const std::vector<float> y = back.to_floats();
      const std::vector<float> scales = q.scales.to_floats();
      int bad = 0;
      for (int64_t i = 0; i < n; ++i) {
        const double s = scales[scale_index(i, m, k, c.block)];
        const double bound =
            std::ldexp(std::fabs(x[i]), -4) + std::ldexp(s, -10) + std::ldexp(std::fabs(x[i]), -20);
        const double err = std::fabs(static_cast<double>(y[i]) - x[i]);
        if (err > bound && bad++ < 5) {
          ADD_FAILURE() << case_str(c, pow2) << " element " << i << ": x " << x[i] << " dequant "
                        << y[i] << " scale " << s << " error " << err << " > bound " << bound;
        }
      }
      EXPECT_EQ(bad, 0) << case_str(c, pow2);
    }
  }
}

// Without pow2, the largest magnitude of each block maps to exactly +-448 (codes 0x7E / 0xFE).
TEST(Fp8Quant, BlockMaximumIs448) {
  uint32_t seed = 200;
  for (const Case& c : ragged_cases()) {
    const int64_t k = c.shape.back();
    const int64_t m = c.shape.size() >= 2 ? c.shape[c.shape.size() - 2] : 1;
    int64_t n = 1;
    for (int64_t d : c.shape) n *= d;
    const std::vector<float> x = wide_values(n, seed++);
    const Fp8Tensor q = quantize_fp8(Tensor::from_floats(x, c.shape), c.block);
    const std::vector<float> qv = q.data.to_floats();
    std::vector<int64_t> argmax(q.scales.numel(), -1);
    for (int64_t i = 0; i < n; ++i) {
      int64_t& a = argmax[scale_index(i, m, k, c.block)];
      if (a < 0 || std::fabs(x[i]) > std::fabs(x[a])) a = i;
    }
    for (size_t b = 0; b < argmax.size(); ++b) {
      const int64_t i = argmax[b];
      ASSERT_GE(i, 0) << case_str(c, false) << " block " << b << " has no element";
      EXPECT_EQ(qv[i], std::copysign(448.0f, x[i]))
          << case_str(c, false) << " block " << b << " max element " << i << " = " << x[i];
    }
  }
}

TEST(Fp8Quant, Pow2ScalesArePowersOfTwoAtOrAboveAmaxOver448) {
  uint32_t seed = 300;
  for (const Case& c : ragged_cases()) {
    const int64_t k = c.shape.back();
    const int64_t m = c.shape.size() >= 2 ? c.shape[c.shape.size() - 2] : 1;
    int64_t n = 1;
    for (int64_t d : c.shape) n *= d;
    std::vector<float> x = wide_values(n, seed++);
    // 56 / 448 = 2^-3 exactly: a 1x128 tile whose amax is 56 must keep scale 2^-3, not double it.
    for (int64_t i = 0; i < std::min<int64_t>(k, 128); ++i) {
      if (std::fabs(x[i]) >= 56.0f) x[i] *= 0.5f;
    }
    x[0] = 56.0f;
    const Fp8Tensor q = quantize_fp8(Tensor::from_floats(x, c.shape), c.block, {true});
    std::vector<float> amax(q.scales.numel(), 0.0f);
    for (int64_t i = 0; i < n; ++i) {
      float& a = amax[scale_index(i, m, k, c.block)];
      a = std::max(a, std::fabs(x[i]));
    }
    const std::vector<float> scales = q.scales.to_floats();
    for (size_t b = 0; b < scales.size(); ++b) {
      int e = 0;
      EXPECT_EQ(std::frexp(scales[b], &e), 0.5f) << case_str(c, true) << " block " << b;
      const float ratio = amax[b] / 448.0f;
      EXPECT_GE(scales[b], ratio) << case_str(c, true) << " block " << b;
      EXPECT_LT(scales[b], 2.0f * ratio) << case_str(c, true) << " block " << b;
    }
    if (c.block == ScaleBlock::k1x128 && k >= 128) {
      EXPECT_EQ(scales[0], 0.125f) << case_str(c, true);
    }
  }
}

TEST(Fp8Quant, ZeroBlocksGetScaleOne) {
  // 1x128: row 1 is all zero; row 0 has a zero second tile.
  std::vector<float> x(2 * 200, 0.0f);
  for (int i = 0; i < 128; ++i) x[i] = 0.01f * (i + 1);
  for (bool pow2 : {false, true}) {
    const Fp8Tensor q = quantize_fp8(Tensor::from_floats(x, {2, 200}), ScaleBlock::k1x128, {pow2});
    const std::vector<float> s = q.scales.to_floats();
    EXPECT_EQ(s[1], 1.0f) << "pow2 " << pow2;
    EXPECT_EQ(s[2], 1.0f) << "pow2 " << pow2;
    EXPECT_EQ(s[3], 1.0f) << "pow2 " << pow2;
    const std::vector<uint8_t> bits = fp8_bits(q.data);
    for (int i = 128; i < 400; ++i) ASSERT_EQ(bits[i], 0) << "element " << i << " pow2 " << pow2;
  }
  // 128x128: expert 1 of (3, 130, 5) all zero.
  std::vector<float> w = wide_values(3 * 130 * 5, 7);
  std::fill(w.begin() + 650, w.begin() + 1300, 0.0f);
  const Fp8Tensor qw = quantize_fp8(Tensor::from_floats(w, {3, 130, 5}), ScaleBlock::k128x128);
  ASSERT_EQ(qw.scales.shape(), (Shape{3, 2, 1}));
  const std::vector<float> s = qw.scales.to_floats();
  EXPECT_EQ(s[2], 1.0f);
  EXPECT_EQ(s[3], 1.0f);
  EXPECT_NE(s[0], 1.0f);
  Tensor back = Tensor::empty({3, 130, 5}, DType::kF32);
  dequantize_fp8(qw, back);
  const std::vector<float> y = back.to_floats();
  for (int i = 650; i < 1300; ++i) ASSERT_EQ(y[i], 0.0f) << "element " << i;
}

// Expert weights (G, N, K) quantize expert by expert: blocks never straddle experts.
TEST(Fp8Quant, BatchedWeightsQuantizePerExpert) {
  const int64_t g = 3, n = 130, k = 200;
  const std::vector<float> w = wide_values(g * n * k, 11);
  const Fp8Tensor all = quantize_fp8(Tensor::from_floats(w, {g, n, k}), ScaleBlock::k128x128);
  ASSERT_EQ(all.scales.shape(), (Shape{g, 2, 2}));
  const std::vector<uint8_t> bits = fp8_bits(all.data);
  const std::vector<float> scales = all.scales.to_floats();
  for (int64_t e = 0; e < g; ++e) {
    const std::vector<float> one(w.begin() + e * n * k, w.begin() + (e + 1) * n * k);
    const Fp8Tensor q = quantize_fp8(Tensor::from_floats(one, {n, k}), ScaleBlock::k128x128);
    EXPECT_EQ(fp8_bits(q.data),
              std::vector<uint8_t>(bits.begin() + e * n * k, bits.begin() + (e + 1) * n * k))
        << "expert " << e;
    EXPECT_EQ(q.scales.to_floats(),
              std::vector<float>(scales.begin() + e * 4, scales.begin() + (e + 1) * 4))
        << "expert " << e;
  }
}

// bf16 input quantizes exactly like the same values in f32; dequantization into bf16 rounds q * s.
TEST(Fp8Quant, Bf16InputAndOutput) {
  for (ScaleBlock block : {ScaleBlock::k1x128, ScaleBlock::k128x128}) {
    const Tensor xb = Tensor::from_floats(wide_values(130 * 300, 21), {130, 300}, DType::kBF16);
    const Tensor xf = Tensor::from_floats(xb.to_floats(), {130, 300});
    const Fp8Tensor qb = quantize_fp8(xb, block);
    const Fp8Tensor qf = quantize_fp8(xf, block);
    EXPECT_EQ(fp8_bits(qb.data), fp8_bits(qf.data));
    EXPECT_EQ(qb.scales.to_floats(), qf.scales.to_floats());
    Tensor yf = Tensor::empty({130, 300}, DType::kF32);
    Tensor yb = Tensor::empty({130, 300}, DType::kBF16);
    dequantize_fp8(qb, yf);
    dequantize_fp8(qb, yb);
    const std::vector<float> f = yf.to_floats();
    const std::vector<float> b = yb.to_floats();
    for (size_t i = 0; i < f.size(); ++i) {
      ASSERT_EQ(b[i], bf16_to_float(float_to_bf16(f[i]))) << "element " << i;
    }
  }
}

// quantize_fp8_into writes preallocated tensors identically to quantize_fp8.
TEST(Fp8Quant, IntoPreallocated) {
  const Tensor x = Tensor::from_floats(wide_values(5 * 129, 31), {5, 129});
  Fp8Tensor out;
  out.block = ScaleBlock::k1x128;
  out.data = Tensor::empty({5, 129}, DType::kF8E4M3);
  out.scales = Tensor::empty({5, 2}, DType::kF32);
  quantize_fp8_into(x, out, {true});
  const Fp8Tensor q = quantize_fp8(x, ScaleBlock::k1x128, {true});
  EXPECT_EQ(fp8_bits(out.data), fp8_bits(q.data));
  EXPECT_EQ(out.scales.to_floats(), q.scales.to_floats());
}

TEST(Fp8Quant, BadArgumentsNameOpAndShapes) {
  const Tensor x = Tensor::zeros({4, 300}, DType::kF32);
  Fp8Tensor out;
  out.data = Tensor::empty({4, 300}, DType::kF8E4M3);
  out.scales = Tensor::empty({4, 2}, DType::kF32);
  EXPECT_THAT(error_of([&] { quantize_fp8_into(x, out); }),
              HasSubstr("quantize_fp8_into: out.scales for f8e4m3[4, 300]@cpu with 1x128 blocks "
                        "must have shape [4, 3], got f32[4, 2]@cpu"));
  out.scales = Tensor::empty({4, 3}, DType::kF32);
  out.data = Tensor::empty({4, 300}, DType::kBF16);
  EXPECT_THAT(error_of([&] { quantize_fp8_into(x, out); }),
              HasSubstr("quantize_fp8_into: out.data must be f8e4m3, got bf16[4, 300]@cpu"));
  EXPECT_THAT(error_of([&] { quantize_fp8(Tensor::zeros({4}, DType::kI32), ScaleBlock::k1x128); }),
              HasSubstr("quantize_fp8: x must be f32 or bf16, got i32[4]@cpu"));
  EXPECT_THAT(
      error_of([&] { quantize_fp8(Tensor::zeros({4}, DType::kF32), ScaleBlock::k128x128); }),
      HasSubstr("quantize_fp8: 128x128 blocks need x with >= 2 dims, got f32[4]@cpu"));
  const Fp8Tensor q = quantize_fp8(x, ScaleBlock::k1x128);
  Tensor wrong = Tensor::empty({4, 301}, DType::kF32);
  EXPECT_THAT(error_of([&] { dequantize_fp8(q, wrong); }),
              HasSubstr("dequantize_fp8: out must have shape [4, 300], got f32[4, 301]@cpu"));
}

}  // namespace
}  // namespace fathom
