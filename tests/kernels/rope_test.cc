// Rotary embedding (kernels/ops/rope.h): the two pairings on a hand-computed case, the plain and
// YaRN tables against the formulas in double, YaRN's attention scale, inverse(apply(x)) == x, the
// inverse as the backward (finite differences of a double forward), MLA heads that rotate only
// their last dims, bf16 against f32, argument errors.
#include "kernels/ops/rope.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <numbers>
#include <string>
#include <vector>

#include "kernels/ops/elementwise.h"
#include "tests/kernels/test_util.h"

namespace fathom {
namespace {

using testing::error_of;
using testing::to_doubles;
using testing::to_floats;

using testing::expect_close;
using testing::finite_difference;
using ::testing::HasSubstr;
using testing::random_tensor;
using testing::tolerance_for;

const char* style_name(RopeStyle s) { return s == RopeStyle::kHalf ? "half" : "interleaved"; }

// Rotation of x (T, H, Dh) in double: the last `dim` dims of each head, angle pos * freq[i].
std::vector<double> ref_rope(const std::vector<double>& x, const std::vector<int32_t>& pos,
                             int64_t heads, int64_t head_dim, int64_t dim, double base,
                             RopeStyle style) {
  std::vector<double> y = x;
  const int64_t half = dim / 2;
  for (size_t t = 0; t < pos.size(); ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t row = (static_cast<int64_t>(t) * heads + h) * head_dim + head_dim - dim;
      for (int64_t i = 0; i < half; ++i) {
        const double angle = pos[t] * std::pow(base, -2.0 * i / dim);
        const int64_t a = style == RopeStyle::kHalf ? row + i : row + 2 * i;
        const int64_t b = style == RopeStyle::kHalf ? row + i + half : row + 2 * i + 1;
        y[a] = x[a] * std::cos(angle) - x[b] * std::sin(angle);
        y[b] = x[a] * std::sin(angle) + x[b] * std::cos(angle);
      }
    }
  }
  return y;
}

TEST(RopeTest, PairingsOnHandComputedCase) {
  // dim 4, base 10000: pair 0 turns by pos * 1, pair 1 by pos * 10000^(-1/2) = pos * 0.01.
  const std::vector<float> x = {1, 2, 3, 4};
  const double c1 = std::cos(1.0), s1 = std::sin(1.0);
  const double c2 = std::cos(0.01), s2 = std::sin(0.01);
  const Tensor positions = Tensor::from_vector(std::vector<int32_t>{1}, {1});

  RopeTable inter = make_rope_table({.dim = 4, .style = RopeStyle::kInterleaved}, 8);
  Tensor xi = Tensor::from_floats(x, {1, 1, 4});
  rope_apply(xi, positions, inter);
  // Interleaved pairs (x0, x1) and (x2, x3).
  expect_close(xi.to_floats(),
               {static_cast<float>(1 * c1 - 2 * s1), static_cast<float>(1 * s1 + 2 * c1),
                static_cast<float>(3 * c2 - 4 * s2), static_cast<float>(3 * s2 + 4 * c2)},
               tolerance_for(DType::kF32), "interleaved");

  RopeTable half = make_rope_table({.dim = 4, .style = RopeStyle::kHalf}, 8);
  Tensor xh = Tensor::from_floats(x, {1, 1, 4});
  rope_apply(xh, positions, half);
  // Half pairs (x0, x2) and (x1, x3).
  expect_close(xh.to_floats(),
               {static_cast<float>(1 * c1 - 3 * s1), static_cast<float>(2 * c2 - 4 * s2),
                static_cast<float>(1 * s1 + 3 * c1), static_cast<float>(2 * s2 + 4 * c2)},
               tolerance_for(DType::kF32), "half");

  // Position 0 is the identity.
  Tensor x0 = Tensor::from_floats(x, {1, 1, 4});
  rope_apply(x0, Tensor::from_vector(std::vector<int32_t>{0}, {1}), inter);
  EXPECT_EQ(x0.to_floats(), x);
}

TEST(RopeTest, PlainTableMatchesFormula) {
  const RopeTable t = make_rope_table({.dim = 16, .base = 500.0f}, 1000);
  ASSERT_EQ(t.cos.shape(), Shape({1000, 8}));
  ASSERT_EQ(t.sin.shape(), Shape({1000, 8}));
  EXPECT_EQ(t.attention_scale, 1.0f);
  EXPECT_EQ(t.style, RopeStyle::kInterleaved);
  const float* c = t.cos.data<float>();
  const float* s = t.sin.data<float>();
  for (int64_t p : {0, 1, 17, 999}) {
    for (int64_t i : {0, 3, 7}) {
      const double angle = p * std::pow(500.0, -2.0 * i / 16);
      EXPECT_NEAR(c[p * 8 + i], std::cos(angle), 1e-7) << "p=" << p << " i=" << i;
      EXPECT_NEAR(s[p * 8 + i], std::sin(angle), 1e-7) << "p=" << p << " i=" << i;
    }
  }
}

// DeepSeek-V3's YaRN (dim 64, base 10000, factor 40, original 4096, beta_fast 32, beta_slow 1):
// correction dim of r rotations = 64 ln(4096 / (2 pi r)) / (2 ln 10000): 10.47 for r = 32
// (floor 10) and 22.52 for r = 1 (ceil 23). Pairs below 10 keep their frequency, pairs from 23
// on are divided by 40, pairs between are blended linearly.
TEST(RopeTest, YarnTableMatchesFormula) {
  const YarnConfig yarn;  // V3 defaults
  const RopeTable t = make_rope_table({.dim = 64, .base = 10000.0f, .yarn = yarn}, 20000);
  ASSERT_EQ(t.cos.shape(), Shape({20000, 32}));
  const double low = 10, high = 23;
  const float* c = t.cos.data<float>();
  const float* s = t.sin.data<float>();
  for (int64_t i : {0, 9, 10, 11, 16, 22, 23, 31}) {
    const double freq = std::pow(10000.0, -2.0 * i / 64);
    const double ramp = std::min(1.0, std::max(0.0, (i - low) / (high - low)));
    const double blended = freq / 40.0 * ramp + freq * (1.0 - ramp);
    if (i < 10) {
      EXPECT_EQ(blended, freq);
    }
    if (i >= 23) {
      EXPECT_EQ(blended, freq / 40.0);
    }
    for (int64_t p : {1, 100, 4095, 19999}) {
      EXPECT_NEAR(c[p * 32 + i], std::cos(p * blended), 2e-7) << "i=" << i << " p=" << p;
      EXPECT_NEAR(s[p * 32 + i], std::sin(p * blended), 2e-7) << "i=" << i << " p=" << p;
    }
  }
}

TEST(RopeTest, YarnAttentionScale) {
  const RopeTable v3 = make_rope_table({.dim = 64, .yarn = YarnConfig{}}, 4);
  const double m = 0.1 * std::log(40.0) + 1.0;
  EXPECT_NEAR(v3.attention_scale, m * m, 1e-6);
  EXPECT_NEAR(v3.attention_scale, 1.873854, 1e-6);  // (0.1 ln 40 + 1)^2 = 1.36888...^2
  const RopeTable scaled =
      make_rope_table({.dim = 64, .yarn = YarnConfig{.factor = 4.0f, .mscale = 0.707f}}, 4);
  const double m2 = 0.1 * 0.707 * std::log(4.0) + 1.0;
  EXPECT_NEAR(scaled.attention_scale, m2 * m2, 1e-6);
  EXPECT_EQ(make_rope_table({.dim = 64}, 4).attention_scale, 1.0f);
}

TEST(RopeTest, ApplyMatchesReferenceAndInverseRestores) {
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalf}) {
    for (int64_t dim : {2, 16, 64}) {
      for (int64_t tokens : {1, 5, 400}) {
        const int64_t heads = 3, head_dim = dim;
        const RopeTable table =
            make_rope_table({.dim = dim, .base = 10000.0f, .style = style}, 512);
        std::vector<int32_t> pos(tokens);
        for (int64_t t = 0; t < tokens; ++t) pos[t] = static_cast<int32_t>((t * 37 + 5) % 512);
        const Tensor positions = Tensor::from_vector(pos, {tokens});
        const Tensor x0 = random_tensor({tokens, heads, head_dim}, 7);
        Tensor x = x0.clone();
        rope_apply(x, positions, table);
        const std::string ctx = std::string(style_name(style)) + " dim=" + std::to_string(dim) +
                                " tokens=" + std::to_string(tokens);
        expect_close(x.to_floats(),
                     to_floats(ref_rope(to_doubles(x0), pos, heads, head_dim, dim, 10000.0, style)),
                     tolerance_for(DType::kF32), "rope_apply " + ctx);
        rope_apply(x, positions, table, /*inverse=*/true);
        expect_close(x.to_floats(), x0.to_floats(), tolerance_for(DType::kF32),
                     "inverse(apply(x)) " + ctx);
      }
    }
  }
}

// The backward of y = rope(x) is rope_apply(dy, inverse): compare with finite differences of
// L = sum(r * rope(x)) on the double reference.
TEST(RopeTest, InverseIsBackward) {
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalf}) {
    const int64_t tokens = 3, heads = 2, head_dim = 12, dim = 8;
    const std::vector<int32_t> pos = {0, 5, 63};
    const RopeTable table = make_rope_table({.dim = dim, .base = 100.0f, .style = style}, 64);
    const Tensor x = random_tensor({tokens, heads, head_dim}, 11);
    const Tensor r = random_tensor({tokens, heads, head_dim}, 12);
    std::vector<double> xd = to_doubles(x);
    const std::vector<double> rd = to_doubles(r);
    const std::vector<double> want = finite_difference(xd, [&] {
      const std::vector<double> y = ref_rope(xd, pos, heads, head_dim, dim, 100.0, style);
      double s = 0;
      for (size_t i = 0; i < y.size(); ++i) s += rd[i] * y[i];
      return s;
    });
    Tensor dx = r.clone();
    rope_apply(dx, Tensor::from_vector(pos, {tokens}), table, /*inverse=*/true);
    expect_close(dx.to_floats(), to_floats(want), {1e-5, 1e-4},
                 std::string("rope backward ") + style_name(style));
  }
}

// MLA: query heads of 192 = [128 nope | 64 rope]; only the last 64 dims turn.
TEST(RopeTest, MlaHeadsRotateOnlyLastDims) {
  const int64_t tokens = 4, heads = 3, head_dim = 192, dim = 64;
  const RopeTable table = make_rope_table({.dim = dim, .yarn = YarnConfig{}}, 128);
  const std::vector<int32_t> pos = {3, 0, 127, 64};
  const Tensor positions = Tensor::from_vector(pos, {tokens});
  const Tensor x0 = random_tensor({tokens, heads, head_dim}, 21);
  Tensor x = x0.clone();
  rope_apply(x, positions, table);

  // The rope part alone, as its own (T, H, 64) tensor.
  std::vector<float> tail(tokens * heads * dim);
  const std::vector<float> x0v = x0.to_floats();
  for (int64_t r = 0; r < tokens * heads; ++r) {
    for (int64_t j = 0; j < dim; ++j) tail[r * dim + j] = x0v[r * head_dim + head_dim - dim + j];
  }
  Tensor t = Tensor::from_floats(tail, {tokens, heads, dim});
  rope_apply(t, positions, table);
  const std::vector<float> xv = x.to_floats(), tv = t.to_floats();
  int nope_changed = 0, rope_mismatch = 0;
  for (int64_t r = 0; r < tokens * heads; ++r) {
    for (int64_t j = 0; j < head_dim - dim; ++j) {
      nope_changed += xv[r * head_dim + j] != x0v[r * head_dim + j];
    }
    for (int64_t j = 0; j < dim; ++j) {
      rope_mismatch += xv[r * head_dim + head_dim - dim + j] != tv[r * dim + j];
    }
  }
  EXPECT_EQ(nope_changed, 0) << "the first 128 dims of a head must not change";
  EXPECT_EQ(rope_mismatch, 0) << "the last 64 dims must turn as a 64-dim head does";
  // And the rope part really turned (position 3, 127, 64 rows).
  int turned = 0;
  for (int64_t j = 0; j < dim; ++j) turned += xv[head_dim - dim + j] != x0v[head_dim - dim + j];
  EXPECT_GT(turned, dim / 2);
}

TEST(RopeTest, Bf16MatchesF32) {
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalf}) {
    const int64_t tokens = 33, heads = 4, head_dim = 96, dim = 32;
    const RopeTable table = make_rope_table({.dim = dim, .style = style}, 1024);
    std::vector<int32_t> pos(tokens);
    for (int64_t t = 0; t < tokens; ++t) pos[t] = static_cast<int32_t>(t * 31);
    const Tensor positions = Tensor::from_vector(pos, {tokens});
    Tensor x16 = random_tensor({tokens, heads, head_dim}, 31, DType::kBF16);
    Tensor x32 = Tensor::empty({tokens, heads, head_dim}, DType::kF32);
    cast(x16, x32);
    rope_apply(x16, positions, table);
    rope_apply(x32, positions, table);
    expect_close(x16.to_floats(), x32.to_floats(), tolerance_for(DType::kBF16),
                 std::string("bf16 rope ") + style_name(style));
  }
}

TEST(RopeTest, ArgumentErrors) {
  const RopeTable table = make_rope_table({.dim = 8}, 16);
  Tensor x = Tensor::zeros({3, 2, 12}, DType::kF32);
  const Tensor bad_pos = Tensor::from_vector(std::vector<int32_t>{0, 1, 16}, {3});
  std::string e = error_of([&] { rope_apply(x, bad_pos, table); });
  EXPECT_THAT(e, HasSubstr("rope_apply: positions[2] = 16 out of range [0, 16)"));
  EXPECT_THAT(e, HasSubstr("f32[3, 2, 12]@cpu"));

  const Tensor neg_pos = Tensor::from_vector(std::vector<int32_t>{-1, 1, 2}, {3});
  e = error_of([&] { rope_apply(x, neg_pos, table); });
  EXPECT_THAT(e, HasSubstr("positions[0] = -1"));

  const Tensor pos = Tensor::from_vector(std::vector<int32_t>{0, 1, 2}, {3});
  Tensor narrow = Tensor::zeros({3, 2, 6}, DType::kF32);
  e = error_of([&] { rope_apply(narrow, pos, table); });
  EXPECT_THAT(e, HasSubstr("rope_apply"));
  EXPECT_THAT(e, HasSubstr("f32[3, 2, 6]@cpu"));

  Tensor flat = Tensor::zeros({3, 24}, DType::kF32);
  e = error_of([&] { rope_apply(flat, pos, table); });
  EXPECT_THAT(e, HasSubstr("rope_apply: x must be (T, H, Dh), got f32[3, 24]@cpu"));

  const Tensor short_pos = Tensor::from_vector(std::vector<int32_t>{0, 1}, {2});
  e = error_of([&] { rope_apply(x, short_pos, table); });
  EXPECT_THAT(e, HasSubstr("rope_apply: positions must have shape [3], got i32[2]@cpu"));

  const Tensor pos64 = Tensor::from_vector(std::vector<int64_t>{0, 1, 2}, {3});
  e = error_of([&] { rope_apply(x, pos64, table); });
  EXPECT_THAT(e, HasSubstr("rope_apply: positions must be i32, got i64[3]@cpu"));

  e = error_of([&] { rope_apply(x, pos, RopeTable{}); });
  EXPECT_THAT(e, HasSubstr("rope_apply: table.cos is undefined"));

  e = error_of([&] { make_rope_table({.dim = 7}, 16); });
  EXPECT_THAT(e, HasSubstr("make_rope_table: dim must be even"));
  e = error_of([&] { make_rope_table({.dim = 8}, 0); });
  EXPECT_THAT(e, HasSubstr("make_rope_table: max_position must be >= 1"));
}

}  // namespace
}  // namespace fathom
