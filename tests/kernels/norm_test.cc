// RMSNorm (kernels/ops/norm.h): forward against a double reference over awkward row lengths,
// dx and dw against central finite differences of a double forward, dw accumulation and its
// independence from the thread count, bf16 against f32, argument errors.
#include "kernels/ops/norm.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/ops/elementwise.h"
#include "kernels/threads.h"
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
using testing::Tolerance;
using testing::tolerance_for;

constexpr Tolerance kGradTol{1e-5, 1e-4};

// Values in +-[0.2, 1.2): random signs, kept away from 0 so that short rows stay smooth.
Tensor signed_tensor(std::initializer_list<int64_t> shape, uint32_t seed,
                     DType dtype = DType::kF32) {
  const Tensor u = random_tensor(shape, seed);
  std::vector<float> v = u.to_floats();
  for (float& x : v) x = x < 0 ? x - 0.2f : x + 0.2f;
  return Tensor::from_floats(v, shape, dtype);
}

struct RefNorm {
  std::vector<double> y, rstd;
};

RefNorm ref_rmsnorm(const std::vector<double>& x, const std::vector<double>& w, double eps) {
  const size_t d = w.size();
  RefNorm out{std::vector<double>(x.size()), std::vector<double>(x.size() / d)};
  for (size_t r = 0; r < out.rstd.size(); ++r) {
    double ss = 0;
    for (size_t j = 0; j < d; ++j) ss += x[r * d + j] * x[r * d + j];
    const double s = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
    out.rstd[r] = s;
    for (size_t j = 0; j < d; ++j) out.y[r * d + j] = x[r * d + j] * s * w[j];
  }
  return out;
}

double project(const std::vector<double>& r, const std::vector<double>& y) {
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += r[i] * y[i];
  return s;
}

TEST(RmsNormTest, ForwardMatchesReference) {
  const float eps = 1e-6f;
  for (int64_t d : testing::awkward_sizes()) {
    for (int64_t rows : {int64_t{1}, int64_t{5}, int64_t{300}}) {
      const Tensor x = random_tensor({rows, d}, 1, DType::kF32, Device::cpu(), -3.0f, 3.0f);
      const Tensor w = random_tensor({d}, 2, DType::kF32, Device::cpu(), 0.5f, 1.5f);
      Tensor y = Tensor::empty({rows, d}, DType::kF32);
      Tensor rstd = Tensor::empty({rows}, DType::kF32);
      rmsnorm_forward(x, w, eps, y, rstd);
      const RefNorm ref = ref_rmsnorm(to_doubles(x), to_doubles(w), eps);
      const std::string ctx = "rows=" + std::to_string(rows) + " d=" + std::to_string(d);
      expect_close(y.to_floats(), to_floats(ref.y), tolerance_for(DType::kF32), "rmsnorm y " + ctx);
      expect_close(rstd.to_floats(), to_floats(ref.rstd), tolerance_for(DType::kF32),
                   "rmsnorm rstd " + ctx);
    }
  }
}

TEST(RmsNormTest, LeadingDimsAreRows) {
  const Tensor x = random_tensor({2, 3, 33}, 3);
  const Tensor w = random_tensor({33}, 4);
  Tensor y = Tensor::empty({2, 3, 33}, DType::kF32);
  Tensor rstd = Tensor::empty({6}, DType::kF32);
  rmsnorm_forward(x, w, 1e-5f, y, rstd);
  const RefNorm ref = ref_rmsnorm(to_doubles(x), to_doubles(w), 1e-5);
  expect_close(y.to_floats(), to_floats(ref.y), tolerance_for(DType::kF32), "rmsnorm 3-d y");
}

TEST(RmsNormTest, BackwardMatchesFiniteDifferences) {
  const double eps = 1e-5;
  for (int64_t d : {int64_t{1}, int64_t{31}, int64_t{33}}) {
    const int64_t rows = 3;
    const Tensor x = signed_tensor({rows, d}, 11);
    const Tensor w = random_tensor({d}, 12, DType::kF32, Device::cpu(), 0.5f, 1.5f);
    const Tensor r = random_tensor({rows, d}, 13);
    std::vector<double> xd = to_doubles(x), wd = to_doubles(w);
    const std::vector<double> rd = to_doubles(r);
    const auto loss = [&] { return project(rd, ref_rmsnorm(xd, wd, eps).y); };
    const std::vector<double> want_dx = finite_difference(xd, loss);
    const std::vector<double> want_dw = finite_difference(wd, loss);

    Tensor y = Tensor::empty({rows, d}, DType::kF32), rstd = Tensor::empty({rows}, DType::kF32);
    rmsnorm_forward(x, w, static_cast<float>(eps), y, rstd);
    // dw accumulates: start from a random value and compare the increment.
    const Tensor dw0 = random_tensor({d}, 14);
    Tensor dw = dw0.clone();
    Tensor dx = Tensor::empty({rows, d}, DType::kF32);
    rmsnorm_backward(r, x, w, rstd, dx, dw);
    const std::vector<float> dw0v = dw0.to_floats();
    std::vector<double> want_dw_total(want_dw.size());
    for (size_t j = 0; j < want_dw.size(); ++j) want_dw_total[j] = dw0v[j] + want_dw[j];
    const std::string ctx = " d=" + std::to_string(d);
    expect_close(dx.to_floats(), to_floats(want_dx), kGradTol, "rmsnorm dx" + ctx);
    expect_close(dw.to_floats(), to_floats(want_dw_total), kGradTol, "rmsnorm dw (+=)" + ctx);
  }
}

// Many rows: dw is reduced over row chunks; compare with the analytic double gradient, and
// check that 1 and 2 threads give bit-identical results.
TEST(RmsNormTest, BackwardManyRowsDeterministic) {
  const int64_t rows = 1000, d = 129;
  const double eps = 1e-6;
  const Tensor x = signed_tensor({rows, d}, 21);
  const Tensor w = random_tensor({d}, 22, DType::kF32, Device::cpu(), 0.5f, 1.5f);
  const Tensor dy = random_tensor({rows, d}, 23);
  Tensor y = Tensor::empty({rows, d}, DType::kF32), rstd = Tensor::empty({rows}, DType::kF32);
  rmsnorm_forward(x, w, static_cast<float>(eps), y, rstd);

  const std::vector<double> xd = to_doubles(x), wd = to_doubles(w), gd = to_doubles(dy);
  const RefNorm ref = ref_rmsnorm(xd, wd, eps);
  std::vector<double> want_dx(xd.size()), want_dw(d, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double dot = 0;
    for (int64_t j = 0; j < d; ++j) dot += gd[r * d + j] * wd[j] * xd[r * d + j];
    const double s = ref.rstd[r];
    for (int64_t j = 0; j < d; ++j) {
      want_dx[r * d + j] = s * wd[j] * gd[r * d + j] - xd[r * d + j] * s * s * s * dot / d;
      want_dw[j] += gd[r * d + j] * xd[r * d + j] * s;
    }
  }

  const int saved_threads = cpu_threads();
  std::vector<std::vector<float>> dws;
  for (int threads : {1, 2}) {
    set_cpu_threads(threads);
    Tensor dx = Tensor::empty({rows, d}, DType::kF32);
    Tensor dw = Tensor::zeros({d}, DType::kF32);
    rmsnorm_backward(dy, x, w, rstd, dx, dw);
    const std::string ctx = " threads=" + std::to_string(threads);
    expect_close(dx.to_floats(), to_floats(want_dx), {1e-5, 1e-4}, "rmsnorm dx" + ctx);
    expect_close(dw.to_floats(), to_floats(want_dw), {1e-4, 1e-4}, "rmsnorm dw" + ctx);
    dws.push_back(dw.to_floats());
  }
  set_cpu_threads(saved_threads);
  EXPECT_EQ(dws[0], dws[1]) << "dw differs between 1 and 2 threads";
}

TEST(RmsNormTest, Bf16MatchesF32) {
  for (int64_t d : testing::awkward_sizes()) {
    const int64_t rows = 7;
    const Tensor x16 = random_tensor({rows, d}, 31, DType::kBF16, Device::cpu(), -2.0f, 2.0f);
    const Tensor dy16 = random_tensor({rows, d}, 32, DType::kBF16);
    const Tensor w = random_tensor({d}, 33, DType::kF32, Device::cpu(), 0.5f, 1.5f);
    Tensor x32 = Tensor::empty({rows, d}, DType::kF32), dy32 = x32.clone();
    cast(x16, x32);
    cast(dy16, dy32);
    Tensor y16 = Tensor::empty({rows, d}, DType::kBF16), y32 = x32.clone();
    Tensor rstd16 = Tensor::empty({rows}, DType::kF32), rstd32 = rstd16.clone();
    rmsnorm_forward(x16, w, 1e-6f, y16, rstd16);
    rmsnorm_forward(x32, w, 1e-6f, y32, rstd32);
    const std::string ctx = " d=" + std::to_string(d);
    const Tolerance tol = tolerance_for(DType::kBF16);
    expect_close(y16.to_floats(), y32.to_floats(), tol, "bf16 rmsnorm y" + ctx);
    expect_close(rstd16.to_floats(), rstd32.to_floats(), tolerance_for(DType::kF32),
                 "bf16 rmsnorm rstd" + ctx);

    Tensor dx16 = Tensor::empty({rows, d}, DType::kBF16), dx32 = x32.clone();
    Tensor dw16 = Tensor::zeros({d}, DType::kF32), dw32 = dw16.clone();
    rmsnorm_backward(dy16, x16, w, rstd16, dx16, dw16);
    rmsnorm_backward(dy32, x32, w, rstd32, dx32, dw32);
    expect_close(dx16.to_floats(), dx32.to_floats(), tol, "bf16 rmsnorm dx" + ctx);
    expect_close(dw16.to_floats(), dw32.to_floats(), tolerance_for(DType::kF32),
                 "bf16 rmsnorm dw" + ctx);
  }
}

TEST(RmsNormTest, ArgumentErrors) {
  const Tensor x = Tensor::zeros({4, 64}, DType::kF32);
  const Tensor w_bad = Tensor::zeros({32}, DType::kF32);
  const Tensor w = Tensor::zeros({64}, DType::kF32);
  Tensor y = Tensor::zeros({4, 64}, DType::kF32);
  Tensor rstd = Tensor::zeros({4}, DType::kF32);

  std::string e = error_of([&] { rmsnorm_forward(x, w_bad, 1e-6f, y, rstd); });
  EXPECT_THAT(e, HasSubstr("rmsnorm_forward: w must have shape [64], got f32[32]@cpu"));

  e = error_of([&] { rmsnorm_forward(x, w, 0.0f, y, rstd); });
  EXPECT_THAT(e, HasSubstr("rmsnorm_forward"));
  EXPECT_THAT(e, HasSubstr("eps"));
  EXPECT_THAT(e, HasSubstr("f32[4, 64]@cpu"));

  Tensor rstd_bad = Tensor::zeros({5}, DType::kF32);
  e = error_of([&] { rmsnorm_forward(x, w, 1e-6f, y, rstd_bad); });
  EXPECT_THAT(e, HasSubstr("rmsnorm_forward: rstd must have shape [4], got f32[5]@cpu"));

  Tensor y16 = Tensor::zeros({4, 64}, DType::kBF16);
  e = error_of([&] { rmsnorm_forward(x, w, 1e-6f, y16, rstd); });
  EXPECT_THAT(e, HasSubstr("rmsnorm_forward"));
  EXPECT_THAT(e, HasSubstr("bf16[4, 64]@cpu"));
  EXPECT_THAT(e, HasSubstr("f32[4, 64]@cpu"));

  const Tensor w16 = Tensor::zeros({64}, DType::kBF16);
  e = error_of([&] { rmsnorm_forward(x, w16, 1e-6f, y, rstd); });
  EXPECT_THAT(e, HasSubstr("rmsnorm_forward: w must be f32, got bf16[64]@cpu"));

  Tensor dx = Tensor::zeros({4, 64}, DType::kF32);
  Tensor dw_bad = Tensor::zeros({63}, DType::kF32);
  e = error_of([&] { rmsnorm_backward(x, x, w, rstd, dx, dw_bad); });
  EXPECT_THAT(e, HasSubstr("rmsnorm_backward: dw must have shape [64], got f32[63]@cpu"));

  Tensor dw = Tensor::zeros({64}, DType::kF32);
  e = error_of([&] { rmsnorm_backward(Tensor(), x, w, rstd, dx, dw); });
  EXPECT_THAT(e, HasSubstr("rmsnorm_backward: dy is undefined"));

  const Tensor dy_bad = Tensor::zeros({4, 63}, DType::kF32);
  e = error_of([&] { rmsnorm_backward(dy_bad, x, w, rstd, dx, dw); });
  EXPECT_THAT(e, HasSubstr("rmsnorm_backward"));
  EXPECT_THAT(e, HasSubstr("f32[4, 63]@cpu"));
}

}  // namespace
}  // namespace fathom
