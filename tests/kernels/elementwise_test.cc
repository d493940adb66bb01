// Elementwise and row-wise ops (kernels/ops/elementwise.h): casts and fills against the scalar
// conversions of dtype.h, axpy / scale / SwiGLU / sigmoid / softmax forwards against naive
// double references over awkward sizes, every backward against central finite differences of a
// double forward, bf16 against f32, and argument errors.
#include "kernels/ops/elementwise.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

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

// Gradients: the op's f32 backward against a double finite difference.
constexpr Tolerance kGradTol{1e-5, 1e-4};

double dsigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// sum_i r_i y_i: the random projection whose gradient the backward ops compute.
double project(const std::vector<double>& r, const std::vector<double>& y) {
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += r[i] * y[i];
  return s;
}

std::vector<double> ref_swiglu(const std::vector<double>& g, const std::vector<double>& u) {
  std::vector<double> y(g.size());
  for (size_t i = 0; i < g.size(); ++i) y[i] = g[i] * dsigmoid(g[i]) * u[i];
  return y;
}

std::vector<double> ref_softmax(const std::vector<double>& x, int64_t cols) {
  std::vector<double> y(x.size());
  for (size_t r = 0; r * cols < x.size(); ++r) {
    double m = -INFINITY;
    for (int64_t j = 0; j < cols; ++j) m = std::max(m, x[r * cols + j]);
    double s = 0;
    for (int64_t j = 0; j < cols; ++j) s += std::exp(x[r * cols + j] - m);
    for (int64_t j = 0; j < cols; ++j) y[r * cols + j] = std::exp(x[r * cols + j] - m) / s;
  }
  return y;
}

TEST(CastTest, FloatDtypesMatchScalarConversions) {
  const std::vector<float> v = {0.0f,  1.0f,  -1.5f,  3.14159f, 1000.0f,
                                -1e6f, 1e-3f, 448.0f, 65504.0f};
  const Tensor src = Tensor::from_floats(v, {static_cast<int64_t>(v.size())});
  Tensor b = Tensor::empty(src.shape(), DType::kBF16);
  Tensor e4 = Tensor::empty(src.shape(), DType::kF8E4M3);
  Tensor e5 = Tensor::empty(src.shape(), DType::kF8E5M2);
  cast(src, b);
  cast(src, e4);
  cast(src, e5);
  for (size_t i = 0; i < v.size(); ++i) {
    EXPECT_EQ(b.data<bf16>()[i].bits, float_to_bf16(v[i]).bits) << "bf16 of " << v[i];
    EXPECT_EQ(e4.data<fp8e4m3>()[i].bits, float_to_fp8e4m3(v[i]).bits) << "e4m3 of " << v[i];
    EXPECT_EQ(e5.data<fp8e5m2>()[i].bits, float_to_fp8e5m2(v[i]).bits) << "e5m2 of " << v[i];
  }
  // Saturation: 1000 and -1e6 clamp to the e4m3 finite max.
  EXPECT_EQ(fp8e4m3_to_float(e4.data<fp8e4m3>()[4]), 448.0f);
  EXPECT_EQ(fp8e4m3_to_float(e4.data<fp8e4m3>()[5]), -448.0f);
  // Back to f32 from bf16 and from e4m3 is exact.
  Tensor back = Tensor::empty(src.shape(), DType::kF32);
  cast(b, back);
  for (size_t i = 0; i < v.size(); ++i) {
    EXPECT_EQ(back.data<float>()[i], bf16_to_float(float_to_bf16(v[i])));
  }
  cast(e4, back);
  for (size_t i = 0; i < v.size(); ++i) {
    EXPECT_EQ(back.data<float>()[i], fp8e4m3_to_float(float_to_fp8e4m3(v[i])));
  }
  // bf16 -> e4m3 goes through the bf16 value.
  cast(b, e4);
  for (size_t i = 0; i < v.size(); ++i) {
    EXPECT_EQ(e4.data<fp8e4m3>()[i].bits,
              float_to_fp8e4m3(bf16_to_float(float_to_bf16(v[i]))).bits);
  }
}

TEST(CastTest, LargeTensorAndIntegers) {
  const int64_t n = 70001;  // several parallel blocks and a ragged end
  const Tensor src = random_tensor({n}, 7, DType::kF32, Device::cpu(), -100.0f, 100.0f);
  Tensor b = Tensor::empty({n}, DType::kBF16);
  cast(src, b);
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    bad += b.data<bf16>()[i].bits != float_to_bf16(src.data<float>()[i]).bits;
  }
  EXPECT_EQ(bad, 0) << "n=" << n;

  const std::vector<int32_t> ints = {0, -5, 7, 2147483647, -2147483647 - 1};
  const Tensor i32 = Tensor::from_vector(ints, {5});
  Tensor i64 = Tensor::empty({5}, DType::kI64);
  cast(i32, i64);
  EXPECT_EQ(i64.to_vector<int64_t>(), std::vector<int64_t>(ints.begin(), ints.end()));
  Tensor i32b = Tensor::zeros({5}, DType::kI32);
  cast(i64, i32b);
  EXPECT_EQ(i32b.to_vector<int32_t>(), ints);
  Tensor copy = Tensor::zeros({n}, DType::kF32);
  cast(src, copy);
  EXPECT_EQ(copy.to_floats(), src.to_floats());
}

TEST(FillTest, EveryDtype) {
  for (DType d : {DType::kF32, DType::kBF16, DType::kF8E4M3, DType::kI32, DType::kI64}) {
    for (int64_t n : {int64_t{1}, int64_t{33}, int64_t{40000}}) {
      Tensor t = Tensor::zeros({n}, d);
      fill(t, 3.0f);
      const std::vector<float> got = t.to_floats();
      EXPECT_EQ(got, std::vector<float>(n, 3.0f)) << dtype_name(d) << " n=" << n;
    }
  }
  Tensor b = Tensor::empty({5}, DType::kBF16);
  fill(b, 0.1f);
  EXPECT_EQ(b.data<bf16>()[4].bits, float_to_bf16(0.1f).bits);
}

TEST(AxpyScaleTest, MatchReference) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t n : testing::awkward_sizes()) {
      for (int64_t rows : {int64_t{3}, int64_t{400}}) {
        const Tensor x = random_tensor({rows, n}, 1, dtype);
        Tensor y = random_tensor({rows, n}, 2, dtype);
        const std::vector<double> xd = to_doubles(x), yd = to_doubles(y);
        axpy(-0.75f, x, y);
        std::vector<double> want(xd.size());
        for (size_t i = 0; i < want.size(); ++i) want[i] = yd[i] - 0.75 * xd[i];
        const std::string ctx = std::string(dtype_name(dtype)) + " rows=" + std::to_string(rows) +
                                " n=" + std::to_string(n);
        expect_close(y.to_floats(), to_floats(want), tolerance_for(dtype), "axpy " + ctx);

        Tensor z = x.clone();
        scale(z, 2.5f);
        for (size_t i = 0; i < want.size(); ++i) want[i] = 2.5 * xd[i];
        expect_close(z.to_floats(), to_floats(want), tolerance_for(dtype), "scale " + ctx);
      }
    }
  }
}

TEST(SwigluTest, ForwardMatchesReference) {
  for (int64_t n : testing::awkward_sizes()) {
    for (int64_t rows : {int64_t{2}, int64_t{300}}) {
      const Tensor g = random_tensor({rows, n}, 11, DType::kF32, Device::cpu(), -6.0f, 6.0f);
      const Tensor u = random_tensor({rows, n}, 12, DType::kF32, Device::cpu(), -2.0f, 2.0f);
      Tensor y = Tensor::empty({rows, n}, DType::kF32);
      swiglu_forward(g, u, y);
      expect_close(y.to_floats(), to_floats(ref_swiglu(to_doubles(g), to_doubles(u))),
                   tolerance_for(DType::kF32),
                   "swiglu_forward rows=" + std::to_string(rows) + " n=" + std::to_string(n));
    }
  }
}

TEST(SwigluTest, ExtremeGates) {
  const std::vector<float> gv = {-200.0f, -90.0f, -30.0f, 0.0f, 30.0f, 90.0f, 200.0f, -1e-3f, 5.0f};
  const int64_t n = static_cast<int64_t>(gv.size());
  const Tensor g = Tensor::from_floats(gv, {n});
  const Tensor u = Tensor::from_floats(std::vector<float>(n, 1.0f), {n});
  Tensor y = Tensor::empty({n}, DType::kF32);
  swiglu_forward(g, u, y);
  std::vector<double> gd(gv.begin(), gv.end());
  expect_close(y.to_floats(), to_floats(ref_swiglu(gd, std::vector<double>(n, 1.0))), {1e-30, 1e-5},
               "swiglu_forward extreme gates");
}

// For gates >= 88 sigmoid is exactly 1 in f32, so a bf16 swiglu stores gate * up, an exact f32
// product with up to 16 significant bits: every rounding case (below, above and exactly at the
// half-way point with even and odd last bits, NaN) of the bf16 store, vector body and scalar tail.
TEST(SwigluTest, Bf16StoreRoundsToNearestEven) {
  std::vector<float> gv, uv;
  for (int m = 0; m < 128; ++m) {  // every bf16 value in [128, 256)
    for (float u : {1.5f, 1.25f, 1.75f, 1.0078125f, 1.9921875f, -1.375f}) {
      gv.push_back(128.0f + m);
      uv.push_back(u);
    }
  }
  gv.push_back(NAN);
  uv.push_back(1.0f);
  const int64_t n = static_cast<int64_t>(gv.size());
  const Tensor g = Tensor::from_floats(gv, {n}, DType::kBF16);
  const Tensor u = Tensor::from_floats(uv, {n}, DType::kBF16);
  Tensor y = Tensor::empty({n}, DType::kBF16);
  swiglu_forward(g, u, y);
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t want = float_to_bf16(gv[i] * uv[i]).bits;
    const uint16_t got = y.data<bf16>()[i].bits;
    if (got != want && bad++ < 5) {
      ADD_FAILURE() << "gate " << gv[i] << " up " << uv[i] << ": got 0x" << std::hex << got
                    << " want 0x" << want << std::dec;
    }
  }
  EXPECT_EQ(bad, 0) << "of " << n;
}

TEST(SwigluTest, BackwardMatchesFiniteDifferences) {
  for (int64_t n : {int64_t{1}, int64_t{31}, int64_t{33}}) {
    const int64_t rows = 2;
    const Tensor g = random_tensor({rows, n}, 21, DType::kF32, Device::cpu(), -4.0f, 4.0f);
    const Tensor u = random_tensor({rows, n}, 22, DType::kF32, Device::cpu(), -2.0f, 2.0f);
    const Tensor r = random_tensor({rows, n}, 23);
    std::vector<double> gd = to_doubles(g), ud = to_doubles(u);
    const std::vector<double> rd = to_doubles(r);
    const auto loss = [&] { return project(rd, ref_swiglu(gd, ud)); };
    const std::vector<double> want_dg = finite_difference(gd, loss);
    const std::vector<double> want_du = finite_difference(ud, loss);

    Tensor dg = Tensor::empty({rows, n}, DType::kF32), du = Tensor::empty({rows, n}, DType::kF32);
    swiglu_backward(r, g, u, dg, du);
    expect_close(dg.to_floats(), to_floats(want_dg), kGradTol,
                 "swiglu dgate n=" + std::to_string(n));
    expect_close(du.to_floats(), to_floats(want_du), kGradTol, "swiglu dup n=" + std::to_string(n));
  }
}

TEST(SigmoidTest, ForwardAndBackward) {
  for (int64_t n : testing::awkward_sizes()) {
    const Tensor x = random_tensor({3, n}, 31, DType::kF32, Device::cpu(), -8.0f, 8.0f);
    Tensor y = Tensor::empty({3, n}, DType::kF32);
    sigmoid_forward(x, y);
    std::vector<double> xd = to_doubles(x);
    std::vector<double> want(xd.size());
    for (size_t i = 0; i < xd.size(); ++i) want[i] = dsigmoid(xd[i]);
    expect_close(y.to_floats(), to_floats(want), tolerance_for(DType::kF32),
                 "sigmoid_forward n=" + std::to_string(n));
    if (n > 33) continue;  // finite differences on the small sizes only

    const Tensor r = random_tensor({3, n}, 32);
    const std::vector<double> rd = to_doubles(r);
    const std::vector<double> want_dx = finite_difference(xd, [&] {
      double s = 0;
      for (size_t i = 0; i < xd.size(); ++i) s += rd[i] * dsigmoid(xd[i]);
      return s;
    });
    Tensor dx = Tensor::empty({3, n}, DType::kF32);
    sigmoid_backward(r, y, dx);
    expect_close(dx.to_floats(), to_floats(want_dx), kGradTol,
                 "sigmoid_backward n=" + std::to_string(n));
  }
}

TEST(SoftmaxTest, ForwardMatchesReference) {
  for (int64_t cols : testing::awkward_sizes()) {
    for (int64_t rows : {int64_t{3}, int64_t{300}}) {
      // A wide range, so that the max shift matters (exp(80) alone is near f32 overflow).
      const Tensor x = random_tensor({rows, cols}, 41, DType::kF32, Device::cpu(), -80.0f, 80.0f);
      Tensor y = Tensor::empty({rows, cols}, DType::kF32);
      softmax_forward(x, y);
      expect_close(
          y.to_floats(), to_floats(ref_softmax(to_doubles(x), cols)), {1e-6, 1e-5},
          "softmax_forward rows=" + std::to_string(rows) + " cols=" + std::to_string(cols));
    }
  }
  // Leading dims are flattened into rows.
  const Tensor x3 = random_tensor({2, 3, 5}, 42, DType::kF32, Device::cpu(), -3.0f, 3.0f);
  Tensor y3 = Tensor::empty({2, 3, 5}, DType::kF32);
  softmax_forward(x3, y3);
  expect_close(y3.to_floats(), to_floats(ref_softmax(to_doubles(x3), 5)), {1e-6, 1e-5},
               "softmax_forward 3-d");
}

TEST(SoftmaxTest, BackwardMatchesFiniteDifferences) {
  for (int64_t cols : {int64_t{1}, int64_t{7}, int64_t{32}, int64_t{33}}) {
    const int64_t rows = 3;
    const Tensor x = random_tensor({rows, cols}, 51, DType::kF32, Device::cpu(), -3.0f, 3.0f);
    const Tensor r = random_tensor({rows, cols}, 52);
    std::vector<double> xd = to_doubles(x);
    const std::vector<double> rd = to_doubles(r);
    const std::vector<double> want =
        finite_difference(xd, [&] { return project(rd, ref_softmax(xd, cols)); });

    Tensor y = Tensor::empty({rows, cols}, DType::kF32),
           dx = Tensor::empty({rows, cols}, DType::kF32);
    softmax_forward(x, y);
    softmax_backward(r, y, dx);
    expect_close(dx.to_floats(), to_floats(want), kGradTol,
                 "softmax_backward cols=" + std::to_string(cols));
  }
}

// The bf16 ops on bf16 inputs against the f32 ops on the same (rounded) values.
TEST(ElementwiseBf16Test, MatchesF32) {
  const Tolerance tol = tolerance_for(DType::kBF16);
  for (int64_t n : testing::awkward_sizes()) {
    const int64_t rows = 4;
    const std::string ctx = " n=" + std::to_string(n);
    const Tensor a16 = random_tensor({rows, n}, 61, DType::kBF16, Device::cpu(), -4.0f, 4.0f);
    const Tensor b16 = random_tensor({rows, n}, 62, DType::kBF16, Device::cpu(), -2.0f, 2.0f);
    const Tensor r16 = random_tensor({rows, n}, 63, DType::kBF16);
    Tensor a32 = Tensor::empty({rows, n}, DType::kF32), b32 = a32.clone(), r32 = a32.clone();
    cast(a16, a32);
    cast(b16, b32);
    cast(r16, r32);
    const auto f32 = [&] { return Tensor::empty({rows, n}, DType::kF32); };
    const auto b16t = [&] { return Tensor::empty({rows, n}, DType::kBF16); };

    Tensor y32 = f32(), y16 = b16t();
    swiglu_forward(a32, b32, y32);
    swiglu_forward(a16, b16, y16);
    expect_close(y16.to_floats(), y32.to_floats(), tol, "bf16 swiglu_forward" + ctx);
    Tensor dg32 = f32(), du32 = f32(), dg16 = b16t(), du16 = b16t();
    swiglu_backward(r32, a32, b32, dg32, du32);
    swiglu_backward(r16, a16, b16, dg16, du16);
    expect_close(dg16.to_floats(), dg32.to_floats(), tol, "bf16 swiglu dgate" + ctx);
    expect_close(du16.to_floats(), du32.to_floats(), tol, "bf16 swiglu dup" + ctx);

    sigmoid_forward(a32, y32);
    sigmoid_forward(a16, y16);
    expect_close(y16.to_floats(), y32.to_floats(), tol, "bf16 sigmoid_forward" + ctx);
    Tensor ys = f32();
    cast(y16, ys);  // backward from the same stored y
    Tensor dx32 = f32(), dx16 = b16t();
    sigmoid_backward(r32, ys, dx32);
    sigmoid_backward(r16, y16, dx16);
    expect_close(dx16.to_floats(), dx32.to_floats(), tol, "bf16 sigmoid_backward" + ctx);

    softmax_forward(a32, y32);
    softmax_forward(a16, y16);
    expect_close(y16.to_floats(), y32.to_floats(), tol, "bf16 softmax_forward" + ctx);
    cast(y16, ys);
    softmax_backward(r32, ys, dx32);
    softmax_backward(r16, y16, dx16);
    expect_close(dx16.to_floats(), dx32.to_floats(), tol, "bf16 softmax_backward" + ctx);
  }
}

TEST(ElementwiseErrorsTest, NameOpAndShapes) {
  const Tensor a = Tensor::zeros({4, 8}, DType::kF32);
  const Tensor wide = Tensor::zeros({4, 9}, DType::kF32);
  const Tensor a16 = Tensor::zeros({4, 8}, DType::kBF16);
  Tensor y = Tensor::zeros({4, 8}, DType::kF32);
  Tensor wide_out = Tensor::zeros({4, 9}, DType::kF32);

  std::string e = error_of([&] { swiglu_forward(a, wide, y); });
  EXPECT_THAT(e, HasSubstr("swiglu_forward"));
  EXPECT_THAT(e, HasSubstr("f32[4, 9]@cpu"));
  EXPECT_THAT(e, HasSubstr("f32[4, 8]@cpu"));

  e = error_of([&] { swiglu_forward(a, a16, y); });
  EXPECT_THAT(e, HasSubstr("swiglu_forward"));
  EXPECT_THAT(e, HasSubstr("bf16[4, 8]@cpu"));

  e = error_of([&] { softmax_forward(a, wide_out); });
  EXPECT_THAT(e, HasSubstr("softmax_forward"));
  EXPECT_THAT(e, HasSubstr("f32[4, 9]@cpu"));

  Tensor dx = Tensor::zeros({4, 8}, DType::kF32);
  e = error_of([&] { softmax_backward(wide, a, dx); });
  EXPECT_THAT(e, HasSubstr("softmax_backward"));
  EXPECT_THAT(e, HasSubstr("dy"));
  EXPECT_THAT(e, HasSubstr("f32[4, 9]@cpu"));

  e = error_of([&] { sigmoid_backward(a, a16, dx); });
  EXPECT_THAT(e, HasSubstr("sigmoid_backward"));
  EXPECT_THAT(e, HasSubstr("bf16[4, 8]@cpu"));

  Tensor dgate = Tensor::zeros({4, 8}, DType::kF32);
  Tensor dup = Tensor::zeros({4, 9}, DType::kF32);
  e = error_of([&] { swiglu_backward(a, a, a, dgate, dup); });
  EXPECT_THAT(e, HasSubstr("swiglu_backward"));
  EXPECT_THAT(e, HasSubstr("dup"));
  EXPECT_THAT(e, HasSubstr("f32[4, 9]@cpu"));

  e = error_of([&] { axpy(1.0f, Tensor(), y); });
  EXPECT_THAT(e, HasSubstr("axpy"));
  EXPECT_THAT(e, HasSubstr("undefined"));

  e = error_of([&] { axpy(1.0f, a, wide_out); });
  EXPECT_THAT(e, HasSubstr("axpy"));
  EXPECT_THAT(e, HasSubstr("f32[4, 9]@cpu"));

  Tensor ints = Tensor::zeros({4, 8}, DType::kI32);
  e = error_of([&] { scale(ints, 2.0f); });
  EXPECT_THAT(e, HasSubstr("scale"));
  EXPECT_THAT(e, HasSubstr("i32[4, 8]@cpu"));

  e = error_of([&] { cast(a, ints); });
  EXPECT_THAT(e, HasSubstr("cast"));
  EXPECT_THAT(e, HasSubstr("f32[4, 8]@cpu -> i32[4, 8]@cpu"));

  e = error_of([&] { cast(a, wide_out); });
  EXPECT_THAT(e, HasSubstr("cast"));
  EXPECT_THAT(e, HasSubstr("f32[4, 9]@cpu"));

  Tensor undefined;
  e = error_of([&] { fill(undefined, 1.0f); });
  EXPECT_THAT(e, HasSubstr("fill"));
  EXPECT_THAT(e, HasSubstr("undefined"));
}

}  // namespace
}  // namespace fathom
