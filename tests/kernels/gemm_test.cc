// GEMM ops (kernels/ops/gemm.h) against naive double-precision references: dense GEMM over every
// transpose combination, batching, accumulation and bf16; FP8 GEMM; grouped GEMM and its weight
// gradient in the contiguous expert layout; argument errors; the CPU thread setting.
#include "kernels/ops/gemm.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/threads.h"
#include "tests/kernels/test_util.h"

namespace fathom {
namespace {

using testing::error_of;

using ::testing::HasSubstr;
using testing::random_tensor;

// Reference result and, per element, sum_p |a_ip b_pj|, which bounds the f32 rounding error.
struct Ref {
  std::vector<double> value;
  std::vector<double> abs_sum;
};

// C[i][j] = alpha * sum_p op(A)[i][p] op(B)[p][j] (+ c0) in double, for one (m, n, k) product.
// a is stored (m, k) or (k, m) when ta; b is (k, n) or (n, k) when tb.
void naive_gemm(const float* a, const float* b, int64_t m, int64_t n, int64_t k, bool ta, bool tb,
                double alpha, const float* c0, double* out, double* abs_sum) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0, abs_acc = 0;
      for (int64_t p = 0; p < k; ++p) {
        const double x = ta ? a[p * m + i] : a[i * k + p];
        const double y = tb ? b[j * k + p] : b[p * n + j];
        acc += x * y;
        abs_acc += std::fabs(x * y);
      }
      out[i * n + j] = alpha * acc + (c0 ? c0[i * n + j] : 0.0);
      abs_sum[i * n + j] = std::fabs(alpha) * abs_acc + (c0 ? std::fabs(c0[i * n + j]) : 0.0);
    }
  }
}

// |got - want| <= rel * abs_sum + atol for every element (abs_sum from Ref): a k-term f32 dot
// product errs by at most about k * 2^-24 * sum |a b|; rel is set from the k at hand.
void expect_within(const std::vector<float>& got, const Ref& ref, double rel, double atol,
                   const std::string& context) {
  ASSERT_EQ(got.size(), ref.value.size()) << context;
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(got[i] - ref.value[i]);
    const double bound = rel * ref.abs_sum[i] + atol;
    if (!(err <= bound) && bad++ < 5) {
      ADD_FAILURE() << context << ": element " << i << " got " << got[i] << " want " << ref.value[i]
                    << " error " << err << " > bound " << bound;
    }
  }
  EXPECT_EQ(bad, 0) << context << ": " << bad << " of " << got.size() << " elements out of bound";
}

double f32_rel(int64_t k) { return (k + 2) * std::ldexp(1.0, -23); }

struct GemmCase {
  int64_t batch;  // 0: 2-D
  int64_t m, n, k;
  bool ta, tb;
  bool shared_b;
  bool accumulate;
  float alpha;
  DType in, out;
  std::string str() const {
    std::ostringstream os;
    os << "batch " << batch << " m " << m << " n " << n << " k " << k << " trans_a " << ta
       << " trans_b " << tb << " shared_b " << shared_b << " accumulate " << accumulate << " alpha "
       << alpha << " in " << dtype_name(in) << " out " << dtype_name(out);
    return os.str();
  }
};

// Runs gemm for `c` and checks it against the double reference on the values actually stored.
void check_gemm(const GemmCase& c, uint32_t seed) {
  const int64_t nb = c.batch == 0 ? 1 : c.batch;
  auto with_batch = [&](int64_t r, int64_t col, bool batched) {
    return batched ? Shape{c.batch, r, col} : Shape{r, col};
  };
  const bool batched = c.batch > 0;
  const bool b_batched = batched && !c.shared_b;
  const Tensor a =
      random_tensor(with_batch(c.ta ? c.k : c.m, c.ta ? c.m : c.k, batched), seed, c.in);
  const Tensor b =
      random_tensor(with_batch(c.tb ? c.n : c.k, c.tb ? c.k : c.n, b_batched), seed + 1, c.in);
  Tensor out = random_tensor(with_batch(c.m, c.n, batched), seed + 2, c.out);
  const std::vector<float> c0 = out.to_floats();
  GemmOptions options;
  options.trans_a = c.ta;
  options.trans_b = c.tb;
  options.accumulate = c.accumulate;
  options.alpha = c.alpha;
  gemm(a, b, out, options);

  const std::vector<float> av = a.to_floats(), bv = b.to_floats();
  Ref ref{std::vector<double>(nb * c.m * c.n), std::vector<double>(nb * c.m * c.n)};
  for (int64_t i = 0; i < nb; ++i) {
    naive_gemm(av.data() + i * c.m * c.k, bv.data() + (b_batched ? i * c.k * c.n : 0), c.m, c.n,
               c.k, c.ta, c.tb, c.alpha, c.accumulate ? c0.data() + i * c.m * c.n : nullptr,
               ref.value.data() + i * c.m * c.n, ref.abs_sum.data() + i * c.m * c.n);
  }
  // A bf16 result is also rounded once to 8 significant bits: half an ulp is 2^-9 relative.
  const double rel = f32_rel(c.k) + (c.out == DType::kBF16 ? std::ldexp(1.0, -8) : 0.0);
  expect_within(out.to_floats(), ref, rel, 1e-30, c.str());
}

TEST(Gemm, AllTransposesAwkwardSizes) {
  uint32_t seed = 1;
  for (int64_t s : testing::awkward_sizes()) {
    for (const auto& [m, n, k] :
         {std::tuple{s, int64_t{33}, int64_t{31}}, std::tuple{int64_t{31}, s, int64_t{129}},
          std::tuple{int64_t{127}, int64_t{32}, s}}) {
      for (bool ta : {false, true}) {
        for (bool tb : {false, true}) {
          check_gemm({0, m, n, k, ta, tb, false, false, 1.0f, DType::kF32, DType::kF32}, seed++);
        }
      }
    }
  }
}

TEST(Gemm, BatchedSharedBAccumulateAlpha) {
  uint32_t seed = 100;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      for (bool shared : {false, true}) {
        for (bool acc : {false, true}) {
          check_gemm({3, 33, 17, 129, ta, tb, shared, acc, -0.5f, DType::kF32, DType::kF32},
                     seed++);
        }
      }
    }
  }
  check_gemm({1, 5, 7, 9, false, false, true, true, 2.0f, DType::kF32, DType::kF32}, seed++);
}

TEST(Gemm, Bf16InputsAndOutput) {
  uint32_t seed = 200;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      for (DType out : {DType::kF32, DType::kBF16}) {
        for (bool acc : {false, true}) {
          check_gemm({0, 31, 129, 33, ta, tb, false, acc, 1.0f, DType::kBF16, out}, seed++);
          check_gemm({2, 17, 31, 64, ta, tb, !ta, acc, 0.25f, DType::kBF16, out}, seed++);
        }
      }
    }
  }
  // f32 inputs into a bf16 result.
  check_gemm({0, 33, 31, 127, false, true, false, true, 1.0f, DType::kF32, DType::kBF16}, seed++);
}

TEST(Gemm, EmptyInnerDimWritesZerosOrKeepsC) {
  const Tensor a = Tensor::empty({4, 0}, DType::kF32);
  const Tensor b = Tensor::empty({0, 3}, DType::kF32);
  Tensor c = Tensor::from_floats(std::vector<float>(12, 5.0f), {4, 3});
  GemmOptions options;
  options.accumulate = true;
  gemm(a, b, c, options);
  EXPECT_EQ(c.to_floats(), std::vector<float>(12, 5.0f));
  gemm(a, b, c);
  EXPECT_EQ(c.to_floats(), std::vector<float>(12, 0.0f));
  Tensor empty_rows = Tensor::empty({0, 3}, DType::kF32);
  gemm(Tensor::empty({0, 5}, DType::kF32), Tensor::zeros({5, 3}, DType::kF32), empty_rows);
}

TEST(Gemm, BadArgumentsNameOpAndShapes) {
  const Tensor a = Tensor::zeros({3, 4}, DType::kF32);
  const Tensor b = Tensor::zeros({5, 6}, DType::kF32);
  Tensor c = Tensor::zeros({3, 6}, DType::kF32);
  EXPECT_THAT(error_of([&] { gemm(a, b, c); }),
              HasSubstr("gemm: inner dims differ: op(a) is 3x4, op(b) is 5x6 (a f32[3, 4]@cpu, "
                        "b f32[5, 6]@cpu"));
  const Tensor b_ok = Tensor::zeros({4, 6}, DType::kBF16);
  EXPECT_THAT(error_of([&] { gemm(a, b_ok, c); }),
              HasSubstr("gemm: a and b must have one dtype, got f32[3, 4]@cpu and bf16[4, 6]@cpu"));
  Tensor c_bad = Tensor::zeros({3, 7}, DType::kF32);
  EXPECT_THAT(error_of([&] {
                gemm(a, Tensor::zeros({4, 6}, DType::kF32), c_bad);
              }),
              HasSubstr("gemm: c must have shape [3, 6] for a f32[3, 4]@cpu, b f32[4, 6]@cpu, "
                        "got f32[3, 7]@cpu"));
  EXPECT_THAT(error_of([&] {
                gemm(a, Tensor::zeros({2, 4, 6}, DType::kF32), c);
              }),
              HasSubstr("gemm: b must be 2-D, or 3-D with a's batch dim"));
  Tensor ci = Tensor::zeros({3, 6}, DType::kI32);
  EXPECT_THAT(error_of([&] {
                gemm(a, Tensor::zeros({4, 6}, DType::kF32), ci);
              }),
              HasSubstr("gemm: c must be f32 or bf16, got i32[3, 6]@cpu"));
}

// ---- FP8 ----

std::vector<float> dequantized(const Fp8Tensor& q) {
  Tensor out = Tensor::empty(q.shape(), DType::kF32);
  dequantize_fp8(q, out);
  return out.to_floats();
}

// gemm_fp8 equals dequant(A) @ dequant(B)^T up to f32 accumulation.
TEST(GemmFp8, MatchesProductOfDequantizedOperands) {
  uint32_t seed = 300;
  for (int64_t m : {1, 33, 129}) {
    for (int64_t n : {31, 130}) {
      for (int64_t k : {127, 300}) {
        for (ScaleBlock b_block : {ScaleBlock::k128x128, ScaleBlock::k1x128}) {
          for (DType out_dtype : {DType::kF32, DType::kBF16}) {
            for (bool acc : {false, true}) {
              std::ostringstream ctx;
              ctx << "m " << m << " n " << n << " k " << k << " b "
                  << (b_block == ScaleBlock::k1x128 ? "1x128" : "128x128") << " out "
                  << dtype_name(out_dtype) << " accumulate " << acc;
              const Fp8Tensor a =
                  quantize_fp8(random_tensor({m, k}, seed++, DType::kF32, Device::cpu(), -3, 3),
                               ScaleBlock::k1x128);
              const Fp8Tensor b = quantize_fp8(random_tensor({n, k}, seed++), b_block);
              Tensor c = random_tensor({m, n}, seed++, out_dtype);
              const std::vector<float> c0 = c.to_floats();
              gemm_fp8(a, b, c, acc);
              const std::vector<float> av = dequantized(a), bv = dequantized(b);
              Ref ref{std::vector<double>(m * n), std::vector<double>(m * n)};
              naive_gemm(av.data(), bv.data(), m, n, k, false, true, 1.0, acc ? c0.data() : nullptr,
                         ref.value.data(), ref.abs_sum.data());
              const double rel =
                  f32_rel(k) + (out_dtype == DType::kBF16 ? std::ldexp(1.0, -8) : 0.0);
              expect_within(c.to_floats(), ref, rel, 1e-30, ctx.str());
            }
          }
        }
      }
    }
  }
}

// End to end, FP8 against the exact product of the unquantized f32 operands. Per element,
// |dq(a) - a| <= 2^-4 |a| + 2^-10 s_a (fp8_test), so |dq(a) dq(b) - a b| <= sum over p of
// (|a| + ea)(|b| + eb) - |a||b|: this bound must hold for every element. On uniform random data
// the typical error is far smaller: with 3 mantissa bits the rounding error is uniform within half
// an ulp, an RMS of 2^-3 / sqrt(12) = 3.6% of the leading power of two, or about 2.6% of the value
// for mantissas spread over [1, 2); two independent operands give about 3.7% relative Frobenius
// error for the product (measured: 3.6%). We require < 5%.
TEST(GemmFp8, EndToEndErrorAgainstF32) {
  const int64_t m = 64, n = 96, k = 384;
  const Tensor a = random_tensor({m, k}, 401);
  const Tensor b = random_tensor({n, k}, 402);
  const Fp8Tensor qa = quantize_fp8(a, ScaleBlock::k1x128);
  const Fp8Tensor qb = quantize_fp8(b, ScaleBlock::k128x128);
  Tensor c = Tensor::empty({m, n}, DType::kF32);
  gemm_fp8(qa, qb, c);
  const std::vector<float> av = a.to_floats(), bv = b.to_floats(), got = c.to_floats();
  const std::vector<float> sa = qa.scales.to_floats(), sb = qb.scales.to_floats();
  double err2 = 0, ref2 = 0;
  int bad = 0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double exact = 0, bound = 0;
      for (int64_t p = 0; p < k; ++p) {
        const double x = av[i * k + p], y = bv[j * k + p];
        const double ex = std::ldexp(std::fabs(x), -4) + std::ldexp(sa[i * 3 + p / 128], -10);
        const double ey =
            std::ldexp(std::fabs(y), -4) + std::ldexp(sb[(j / 128) * 3 + p / 128], -10);
        exact += x * y;
        bound += (std::fabs(x) + ex) * (std::fabs(y) + ey) - std::fabs(x * y) +
                 f32_rel(k) * std::fabs(x * y) * 2;
      }
      const double err = std::fabs(got[i * n + j] - exact);
      if (err > bound && bad++ < 5) {
        ADD_FAILURE() << "element (" << i << ", " << j << "): fp8 " << got[i * n + j] << " exact "
                      << exact << " error " << err << " > bound " << bound;
      }
      err2 += (got[i * n + j] - exact) * (got[i * n + j] - exact);
      ref2 += exact * exact;
    }
  }
  EXPECT_EQ(bad, 0);
  const double rel_frobenius = std::sqrt(err2 / ref2);
  EXPECT_LT(rel_frobenius, 0.05) << "relative Frobenius error of the FP8 GEMM";
  EXPECT_GT(rel_frobenius, 0.0) << "FP8 cannot be exact on random data";
}

TEST(GemmFp8, BadArgumentsNameOpAndShapes) {
  const Fp8Tensor a = quantize_fp8(Tensor::zeros({4, 130}, DType::kF32), ScaleBlock::k1x128);
  const Fp8Tensor b = quantize_fp8(Tensor::zeros({5, 129}, DType::kF32), ScaleBlock::k128x128);
  Tensor c = Tensor::zeros({4, 5}, DType::kF32);
  EXPECT_THAT(error_of([&] { gemm_fp8(a, b, c); }),
              HasSubstr("gemm_fp8: a (M, K) and b (N, K) must share K, got a f8e4m3[4, 130]@cpu, "
                        "b f8e4m3[5, 129]@cpu"));
  const Fp8Tensor a_w = quantize_fp8(Tensor::zeros({4, 129}, DType::kF32), ScaleBlock::k128x128);
  EXPECT_THAT(error_of([&] { gemm_fp8(a_w, b, c); }),
              HasSubstr("gemm_fp8: a must be quantized with 1x128 blocks, got 128x128 for "
                        "f8e4m3[4, 129]@cpu"));
  Fp8Tensor a_bad = quantize_fp8(Tensor::zeros({4, 129}, DType::kF32), ScaleBlock::k1x128);
  a_bad.scales = Tensor::zeros({4, 1}, DType::kF32);
  EXPECT_THAT(error_of([&] { gemm_fp8(a_bad, b, c); }),
              HasSubstr("gemm_fp8: a scales must have shape [4, 2] for f8e4m3[4, 129]@cpu (1x128), "
                        "got f32[4, 1]@cpu"));
}

// ---- Grouped GEMM ----

// y[rows of g] = x[rows of g] @ op(w[g]) in double.
Ref naive_grouped(const std::vector<float>& x, const std::vector<float>& w,
                  const std::vector<int64_t>& counts, int64_t n, int64_t k, bool trans_w,
                  const float* y0) {
  int64_t t = 0;
  for (int64_t c : counts) t += c;
  Ref ref{std::vector<double>(t * n), std::vector<double>(t * n)};
  int64_t row = 0;
  for (size_t g = 0; g < counts.size(); ++g) {
    naive_gemm(x.data() + row * k, w.data() + g * n * k, counts[g], n, k, false, trans_w, 1.0,
               y0 ? y0 + row * n : nullptr, ref.value.data() + row * n,
               ref.abs_sum.data() + row * n);
    row += counts[g];
  }
  return ref;
}

TEST(GroupedGemm, EmptyGroupsAndUnevenCounts) {
  const std::vector<std::vector<int64_t>> count_sets = {
      {0, 3, 0, 7, 1, 0}, {11}, {0, 0, 0}, {5, 0, 33, 1, 2}};
  uint32_t seed = 500;
  for (const auto& counts : count_sets) {
    int64_t t = 0;
    for (int64_t c : counts) t += c;
    const int64_t g = static_cast<int64_t>(counts.size()), n = 17, k = 33;
    for (bool trans_w : {true, false}) {
      for (bool acc : {false, true}) {
        for (DType dtype : {DType::kF32, DType::kBF16}) {
          std::ostringstream ctx;
          ctx << "counts " << shape_str(counts) << " trans_w " << trans_w << " accumulate " << acc
              << " dtype " << dtype_name(dtype);
          const Tensor x = random_tensor({t, k}, seed++, dtype);
          const Tensor w = random_tensor(trans_w ? Shape{g, n, k} : Shape{g, k, n}, seed++, dtype);
          Tensor y = random_tensor({t, n}, seed++);
          const std::vector<float> y0 = y.to_floats();
          GroupedGemmOptions options;
          options.trans_w = trans_w;
          options.accumulate = acc;
          grouped_gemm(x, w, counts, y, options);
          const Ref ref = naive_grouped(x.to_floats(), w.to_floats(), counts, n, k, trans_w,
                                        acc ? y0.data() : nullptr);
          expect_within(y.to_floats(), ref, f32_rel(k), 1e-30, ctx.str());
        }
      }
    }
  }
}

TEST(GroupedGemm, WeightGradient) {
  const std::vector<int64_t> counts = {4, 0, 9, 1, 0};
  const int64_t t = 14, g = 5, n = 19, k = 130;
  uint32_t seed = 600;
  for (bool acc : {false, true}) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      std::ostringstream ctx;
      ctx << "accumulate " << acc << " dtype " << dtype_name(dtype);
      const Tensor dy = random_tensor({t, n}, seed++, dtype);
      const Tensor x = random_tensor({t, k}, seed++, dtype);
      Tensor dw = random_tensor({g, n, k}, seed++);  // nonzero: empty groups must be overwritten
      const std::vector<float> dw0 = dw.to_floats();
      grouped_gemm_weight_grad(dy, x, counts, dw, acc);
      const std::vector<float> dyv = dy.to_floats(), xv = x.to_floats();
      Ref ref{std::vector<double>(g * n * k), std::vector<double>(g * n * k)};
      int64_t row = 0;
      for (int64_t e = 0; e < g; ++e) {
        naive_gemm(dyv.data() + row * n, xv.data() + row * k, n, k, counts[e], true, false, 1.0,
                   acc ? dw0.data() + e * n * k : nullptr, ref.value.data() + e * n * k,
                   ref.abs_sum.data() + e * n * k);
        row += counts[e];
      }
      expect_within(dw.to_floats(), ref, f32_rel(t), 1e-30, ctx.str());
    }
  }
}

TEST(GroupedGemm, Fp8MatchesDequantizedReference) {
  const std::vector<int64_t> counts = {0, 40, 0, 130, 3};
  const int64_t t = 173, g = 5, n = 130, k = 200;
  const Fp8Tensor x = quantize_fp8(random_tensor({t, k}, 700), ScaleBlock::k1x128);
  const Fp8Tensor w = quantize_fp8(random_tensor({g, n, k}, 701), ScaleBlock::k128x128);
  for (DType out : {DType::kF32, DType::kBF16}) {
    Tensor y = Tensor::empty({t, n}, out);
    grouped_gemm_fp8(x, w, counts, y);
    const Ref ref = naive_grouped(dequantized(x), dequantized(w), counts, n, k, true, nullptr);
    const double rel = f32_rel(k) + (out == DType::kBF16 ? std::ldexp(1.0, -8) : 0.0);
    expect_within(y.to_floats(), ref, rel, 1e-30,
                  std::string("out ") + std::string(dtype_name(out)));
  }
}

TEST(GroupedGemm, BadCountsNameOpAndCounts) {
  const Tensor x = Tensor::zeros({6, 4}, DType::kF32);
  const Tensor w = Tensor::zeros({3, 5, 4}, DType::kF32);
  Tensor y = Tensor::zeros({6, 5}, DType::kF32);
  const std::vector<int64_t> too_few = {6, 0};
  EXPECT_THAT(error_of([&] { grouped_gemm(x, w, too_few, y); }),
              HasSubstr("grouped_gemm: 2 counts for 3 groups"));
  const std::vector<int64_t> negative = {7, -1, 0};
  EXPECT_THAT(error_of([&] { grouped_gemm(x, w, negative, y); }),
              HasSubstr("grouped_gemm: count -1 of group 1 is negative; counts [7, -1, 0]"));
  const std::vector<int64_t> wrong_sum = {2, 2, 1};
  EXPECT_THAT(error_of([&] { grouped_gemm(x, w, wrong_sum, y); }),
              HasSubstr("grouped_gemm: counts [2, 2, 1] sum to 5, but there are 6 rows"));
  const std::vector<int64_t> ok = {2, 2, 2};
  EXPECT_THAT(error_of([&] {
                grouped_gemm(x, Tensor::zeros({3, 5, 3}, DType::kF32), ok, y);
              }),
              HasSubstr("grouped_gemm: x f32[6, 4]@cpu and w f32[3, 5, 3]@cpu disagree on K"));
  Tensor dw = Tensor::zeros({3, 5, 4}, DType::kBF16);
  EXPECT_THAT(error_of([&] { grouped_gemm_weight_grad(y, x, ok, dw, false); }),
              HasSubstr("grouped_gemm_weight_grad: dw must be f32, got bf16[3, 5, 4]@cpu"));
  Tensor dw_ok = Tensor::zeros({3, 5, 4}, DType::kF32);
  EXPECT_THAT(error_of([&] { grouped_gemm_weight_grad(y, x, wrong_sum, dw_ok, false); }),
              HasSubstr("grouped_gemm_weight_grad: counts [2, 2, 1] sum to 5"));
  const Fp8Tensor qx = quantize_fp8(x, ScaleBlock::k1x128);
  const Fp8Tensor qw = quantize_fp8(w, ScaleBlock::k1x128);
  EXPECT_THAT(error_of([&] { grouped_gemm_fp8(qx, qw, ok, y); }),
              HasSubstr("grouped_gemm_fp8: w must be quantized with 128x128 blocks"));
}

// The thread setting reaches OpenMP, and a single-threaded GEMM gives the same result.
TEST(CpuThreads, SetAndRestore) {
  const int before = cpu_threads();
  ASSERT_GE(before, 1);
  EXPECT_THAT(error_of([] { set_cpu_threads(0); }),
              HasSubstr("set_cpu_threads: thread count must be >= 1, got 0"));
  set_cpu_threads(1);
  EXPECT_EQ(cpu_threads(), 1);
  check_gemm({0, 65, 70, 129, false, true, false, false, 1.0f, DType::kF32, DType::kF32}, 900);
  set_cpu_threads(before);
  EXPECT_EQ(cpu_threads(), before);
}

}  // namespace
}  // namespace fathom
