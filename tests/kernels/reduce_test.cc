// Reductions (kernels/ops/reduce.h): reduce_rows and reduce_all for every Reduce against
// double references (awkward row lengths, bf16, empty tensors, thread-count independence),
// global_norm over several tensors, clip_grad_norm (scaling, no scaling below max_norm,
// non-finite norms), argument errors.
#include "kernels/ops/reduce.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "kernels/threads.h"
#include "tests/kernels/test_util.h"

namespace fathom {
namespace {

using testing::error_of;

using testing::expect_close;
using ::testing::HasSubstr;
using testing::random_tensor;

const char* reduce_name(Reduce op) {
  switch (op) {
    case Reduce::kSum: return "sum";
    case Reduce::kMean: return "mean";
    case Reduce::kMax: return "max";
    case Reduce::kSumSquares: return "sum_squares";
  }
  return "?";
}

constexpr Reduce kAllReduces[] = {Reduce::kSum, Reduce::kMean, Reduce::kMax, Reduce::kSumSquares};

// The reduction of v[begin, begin + n) in double (long double sums).
double ref_reduce(const std::vector<float>& v, size_t begin, size_t n, Reduce op) {
  if (op == Reduce::kMax) {
    double m = -std::numeric_limits<double>::infinity();
    for (size_t i = begin; i < begin + n; ++i) m = std::max<double>(m, v[i]);
    return m;
  }
  long double s = 0;
  for (size_t i = begin; i < begin + n; ++i) {
    const long double x = v[i];
    s += op == Reduce::kSumSquares ? x * x : x;
  }
  if (op == Reduce::kMean) s = n == 0 ? 0 : s / n;
  return static_cast<double>(s);
}

TEST(ReduceRowsTest, MatchesReference) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t d : testing::awkward_sizes()) {
      for (int64_t rows : {int64_t{3}, int64_t{500}}) {
        const Tensor x = random_tensor({rows, d}, 1, dtype, Device::cpu(), -2.0f, 3.0f);
        const std::vector<float> xv = x.to_floats();
        for (Reduce op : kAllReduces) {
          Tensor out = Tensor::empty({rows}, DType::kF32);
          reduce_rows(x, op, out);
          std::vector<float> want(rows);
          for (int64_t r = 0; r < rows; ++r) {
            want[r] = static_cast<float>(ref_reduce(xv, r * d, d, op));
          }
          expect_close(out.to_floats(), want, {1e-5, 1e-6},
                       std::string("reduce_rows ") + reduce_name(op) + " " +
                           std::string(dtype_name(dtype)) + " rows=" + std::to_string(rows) +
                           " d=" + std::to_string(d));
        }
      }
    }
  }
}

TEST(ReduceRowsTest, LeadingDimsAndEmptyRows) {
  const Tensor x = random_tensor({2, 3, 7}, 2);
  const std::vector<float> xv = x.to_floats();
  Tensor flat = Tensor::empty({6}, DType::kF32);
  Tensor shaped = Tensor::empty({2, 3}, DType::kF32);
  reduce_rows(x, Reduce::kSum, flat);
  reduce_rows(x, Reduce::kSum, shaped);
  std::vector<float> want(6);
  for (int r = 0; r < 6; ++r) want[r] = static_cast<float>(ref_reduce(xv, r * 7, 7, Reduce::kSum));
  expect_close(flat.to_floats(), want, {1e-6, 1e-6}, "reduce_rows into (T)");
  expect_close(shaped.to_floats(), want, {1e-6, 1e-6}, "reduce_rows into (B, S)");

  const Tensor empty_rows = Tensor::zeros({3, 0}, DType::kF32);
  Tensor out = Tensor::empty({3}, DType::kF32);
  reduce_rows(empty_rows, Reduce::kSum, out);
  EXPECT_EQ(out.to_floats(), std::vector<float>(3, 0.0f));
  reduce_rows(empty_rows, Reduce::kMax, out);
  EXPECT_EQ(out.to_floats(), std::vector<float>(3, -std::numeric_limits<float>::infinity()));
}

TEST(ReduceAllTest, MatchesReferenceAcrossThreads) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t n : {int64_t{1}, int64_t{129}, int64_t{100003}}) {
      const Tensor x = random_tensor({n}, 3, dtype, Device::cpu(), -1.0f, 2.0f);
      const std::vector<float> xv = x.to_floats();
      for (Reduce op : kAllReduces) {
        const double want = ref_reduce(xv, 0, n, op);
        const int saved = cpu_threads();
        std::vector<double> got;
        for (int threads : {1, 2}) {
          set_cpu_threads(threads);
          got.push_back(reduce_all(x, op));
        }
        set_cpu_threads(saved);
        const std::string ctx = std::string(reduce_name(op)) + " " +
                                std::string(dtype_name(dtype)) + " n=" + std::to_string(n);
        EXPECT_NEAR(got[0], want, 1e-12 * std::max(1.0, std::abs(want))) << ctx;
        EXPECT_EQ(got[0], got[1]) << "1 and 2 threads differ: " << ctx;
      }
    }
  }
}

TEST(ReduceAllTest, EmptyTensor) {
  const Tensor x = Tensor::zeros({0, 5}, DType::kF32);
  EXPECT_EQ(reduce_all(x, Reduce::kSum), 0.0);
  EXPECT_EQ(reduce_all(x, Reduce::kMean), 0.0);
  EXPECT_EQ(reduce_all(x, Reduce::kSumSquares), 0.0);
  EXPECT_EQ(reduce_all(x, Reduce::kMax), -std::numeric_limits<double>::infinity());
}

TEST(GlobalNormTest, OverSeveralTensors) {
  const Tensor a = random_tensor({33, 7}, 11);
  const Tensor b = random_tensor({129}, 12, DType::kBF16);
  const Tensor c = random_tensor({40000}, 13, DType::kF32, Device::cpu(), -0.1f, 0.1f);
  double ss = 0;
  for (const Tensor* t : {&a, &b, &c}) {
    for (float v : t->to_floats()) ss += static_cast<double>(v) * v;
  }
  const std::vector<const Tensor*> all = {&a, &b, &c};
  EXPECT_NEAR(global_norm(all), std::sqrt(ss), 1e-12 * std::sqrt(ss));
  EXPECT_EQ(global_norm({}), 0.0);
}

TEST(ClipGradNormTest, ScalesWhenAboveMaxNorm) {
  Tensor a = random_tensor({31, 33}, 21, DType::kF32, Device::cpu(), -3.0f, 3.0f);
  Tensor b = random_tensor({128}, 22, DType::kBF16, Device::cpu(), -3.0f, 3.0f);
  const std::vector<float> a0 = a.to_floats(), b0 = b.to_floats();
  double ss = 0;
  for (float v : a0) ss += static_cast<double>(v) * v;
  for (float v : b0) ss += static_cast<double>(v) * v;
  const double norm = std::sqrt(ss);
  ASSERT_GT(norm, 1.0);

  const std::vector<Tensor*> grads = {&a, &b};
  const double returned = clip_grad_norm(grads, 1.0);
  EXPECT_NEAR(returned, norm, 1e-12 * norm) << "the norm before clipping is returned";
  const double coef = 1.0 / (norm + 1e-6);
  std::vector<float> want_a(a0.size()), want_b(b0.size());
  for (size_t i = 0; i < a0.size(); ++i) want_a[i] = static_cast<float>(a0[i] * coef);
  for (size_t i = 0; i < b0.size(); ++i) want_b[i] = static_cast<float>(b0[i] * coef);
  expect_close(a.to_floats(), want_a, testing::tolerance_for(DType::kF32), "clipped f32 grad");
  expect_close(b.to_floats(), want_b, testing::tolerance_for(DType::kBF16), "clipped bf16 grad");
  const std::vector<const Tensor*> after = {&a, &b};
  EXPECT_NEAR(global_norm(after), 1.0, 1e-2);
}

TEST(ClipGradNormTest, NoScalingBelowMaxNorm) {
  // Far below, and just below max_norm (coefficient max_norm / (norm + 1e-6) about 1.001).
  for (double target : {0.05, 0.999}) {
    std::vector<float> v = random_tensor({5, 33}, 31).to_floats();
    double ss = 0;
    for (float x : v) ss += static_cast<double>(x) * x;
    for (float& x : v) x = static_cast<float>(x * target / std::sqrt(ss));
    Tensor a = Tensor::from_floats(v, {5, 33});
    const std::vector<Tensor*> grads = {&a};
    const double norm = clip_grad_norm(grads, 1.0);
    EXPECT_NEAR(norm, target, 1e-6) << "target " << target;
    EXPECT_EQ(a.to_floats(), v) << "gradients below max_norm must be untouched, norm " << norm;
  }
}

TEST(ClipGradNormTest, NonFiniteNormLeavesGradsUntouched) {
  for (float bad :
       {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    Tensor a = random_tensor({4, 31}, 41, DType::kF32, Device::cpu(), -5.0f, 5.0f);
    Tensor b = random_tensor({129}, 42, DType::kF32, Device::cpu(), -5.0f, 5.0f);
    b.data<float>()[17] = bad;
    const std::vector<float> a0 = a.to_floats(), b0 = b.to_floats();
    const std::vector<Tensor*> grads = {&a, &b};
    const double norm = clip_grad_norm(grads, 1.0);
    EXPECT_FALSE(std::isfinite(norm)) << "bad value " << bad;
    EXPECT_EQ(a.to_floats(), a0) << "bad value " << bad;
    const std::vector<float> b1 = b.to_floats();
    for (size_t i = 0; i < b0.size(); ++i) {
      if (i == 17) continue;
      EXPECT_EQ(b1[i], b0[i]) << "bad value " << bad << " element " << i;
    }
  }
}

TEST(ReduceErrorsTest, NameOpAndShapes) {
  const Tensor x = Tensor::zeros({4, 8}, DType::kF32);
  Tensor out = Tensor::zeros({5}, DType::kF32);
  std::string e = error_of([&] { reduce_rows(x, Reduce::kSum, out); });
  EXPECT_THAT(
      e, HasSubstr("reduce_rows: out must have shape [4] for x f32[4, 8]@cpu, got f32[5]@cpu"));

  Tensor out16 = Tensor::zeros({4}, DType::kBF16);
  e = error_of([&] { reduce_rows(x, Reduce::kSum, out16); });
  EXPECT_THAT(e, HasSubstr("reduce_rows: out must be f32, got bf16[4]@cpu"));

  const Tensor ints = Tensor::zeros({4, 8}, DType::kI32);
  e = error_of([&] { reduce_all(ints, Reduce::kSum); });
  EXPECT_THAT(e, HasSubstr("reduce_all: x must be f32 or bf16, got i32[4, 8]@cpu"));

  e = error_of([&] { reduce_all(Tensor(), Reduce::kSum); });
  EXPECT_THAT(e, HasSubstr("reduce_all: x is undefined"));

  Tensor g = Tensor::zeros({3}, DType::kF32);
  const std::vector<Tensor*> grads = {&g};
  e = error_of([&] { clip_grad_norm(grads, 0.0); });
  EXPECT_THAT(e, HasSubstr("clip_grad_norm: max_norm must be > 0"));

  Tensor undefined;
  const std::vector<const Tensor*> with_undefined = {&x, &undefined};
  e = error_of([&] { global_norm(with_undefined); });
  EXPECT_THAT(e, HasSubstr("global_norm: tensor 1 is undefined"));
  const std::vector<const Tensor*> with_ints = {&ints};
  e = error_of([&] { global_norm(with_ints); });
  EXPECT_THAT(e, HasSubstr("global_norm: tensor 0 must be f32 or bf16, got i32[4, 8]@cpu"));
}

}  // namespace
}  // namespace fathom
