// Indexing ops (kernels/ops/index.h): embedding lookup and its backward (finite differences,
// repeated ids, determinism), top-k (ties, k == E, k out of range), gather / scatter-add with
// repeated indices and as each other's adjoint, gathered_row_dot as the scale gradient of
// gather_rows, out-of-range indices and argument errors.
#include "kernels/ops/index.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

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

// n indices in [0, bound), with repeats, deterministic for a seed.
std::vector<int32_t> random_indices(int64_t n, int64_t bound, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(bound - 1));
  std::vector<int32_t> v(n);
  for (int32_t& i : v) i = dist(rng);
  return v;
}

// out[i] = scale[i] * x[index[i]] in double (scale empty: 1).
std::vector<double> ref_gather(const std::vector<double>& x, const std::vector<int32_t>& index,
                               const std::vector<double>& scale, int64_t d) {
  std::vector<double> out(index.size() * d);
  for (size_t i = 0; i < index.size(); ++i) {
    const double s = scale.empty() ? 1.0 : scale[i];
    for (int64_t j = 0; j < d; ++j) out[i * d + j] = s * x[index[i] * d + j];
  }
  return out;
}

// out[index[i]] += scale[i] * x[i] in double.
std::vector<double> ref_scatter(const std::vector<double>& x, const std::vector<int32_t>& index,
                                const std::vector<double>& scale, std::vector<double> out,
                                int64_t d) {
  for (size_t i = 0; i < index.size(); ++i) {
    const double s = scale.empty() ? 1.0 : scale[i];
    for (int64_t j = 0; j < d; ++j) out[index[i] * d + j] += s * x[i * d + j];
  }
  return out;
}

double project(const std::vector<double>& r, const std::vector<double>& y) {
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += r[i] * y[i];
  return s;
}

TEST(EmbeddingTest, ForwardCopiesRows) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t d : testing::awkward_sizes()) {
      const int64_t v = 50, t = 70;
      const Tensor table = random_tensor({v, d}, 1, dtype);
      const std::vector<int32_t> ids = random_indices(t, v, 2);
      Tensor out = Tensor::empty({t, d}, dtype);
      embedding_forward(Tensor::from_vector(ids, {t}), table, out);
      expect_close(out.to_floats(), to_floats(ref_gather(to_doubles(table), ids, {}, d)), {0, 0},
                   std::string("embedding_forward ") + std::string(dtype_name(dtype)) +
                       " d=" + std::to_string(d));
    }
  }
}

// dL/dtable of L = sum(r * table[ids]) by finite differences; dtable accumulates (+=).
TEST(EmbeddingTest, BackwardMatchesFiniteDifferences) {
  for (int64_t d : {int64_t{1}, int64_t{31}, int64_t{33}}) {
    const int64_t v = 6, t = 9;
    const std::vector<int32_t> ids = {0, 3, 3, 5, 0, 3, 1, 5, 3};  // repeats; 2 and 4 unused
    const Tensor table = random_tensor({v, d}, 11);
    const Tensor r = random_tensor({t, d}, 12);
    std::vector<double> td = to_doubles(table);
    const std::vector<double> rd = to_doubles(r);
    const std::vector<double> grad =
        finite_difference(td, [&] { return project(rd, ref_gather(td, ids, {}, d)); });
    const Tensor dtable0 = random_tensor({v, d}, 13);
    Tensor dtable = dtable0.clone();
    embedding_backward(Tensor::from_vector(ids, {t}), r, dtable);
    const std::vector<float> d0 = dtable0.to_floats();
    std::vector<double> want(grad.size());
    for (size_t i = 0; i < want.size(); ++i) want[i] = d0[i] + grad[i];
    expect_close(dtable.to_floats(), to_floats(want), kGradTol,
                 "embedding_backward d=" + std::to_string(d));
  }
}

// Many tokens on few rows, 1 and 2 threads: the same bits, and contributions added in token
// order (the sequential f32 sum).
TEST(EmbeddingTest, BackwardDeterministic) {
  const int64_t v = 37, t = 5000, d = 33;
  const std::vector<int32_t> ids = random_indices(t, v, 21);
  const Tensor ids_t = Tensor::from_vector(ids, {t});
  const Tensor dout = random_tensor({t, d}, 22);
  const std::vector<float> g = dout.to_floats();
  std::vector<float> want(v * d, 0.0f);
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t j = 0; j < d; ++j) want[ids[i] * d + j] += g[i * d + j];
  }
  const int saved = cpu_threads();
  for (int threads : {1, 2}) {
    set_cpu_threads(threads);
    Tensor dtable = Tensor::zeros({v, d}, DType::kF32);
    embedding_backward(ids_t, dout, dtable);
    EXPECT_EQ(dtable.to_floats(), want) << "threads=" << threads;
  }
  set_cpu_threads(saved);

  // bf16 gradients into the f32 table.
  Tensor dout16 = random_tensor({t, d}, 23, DType::kBF16);
  Tensor dtable = Tensor::zeros({v, d}, DType::kF32);
  embedding_backward(ids_t, dout16, dtable);
  expect_close(dtable.to_floats(),
               to_floats(ref_scatter(to_doubles(dout16), ids, {}, std::vector<double>(v * d), d)),
               {1e-4, 1e-5}, "embedding_backward bf16 dout");
}

// Reference top-k: stable sort by descending value.
void ref_topk(const std::vector<float>& x, int64_t rows, int64_t e, int64_t k,
              std::vector<float>& values, std::vector<int32_t>& indices) {
  values.clear();
  indices.clear();
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<int32_t> idx(e);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(),
                     [&](int32_t a, int32_t b) { return x[r * e + a] > x[r * e + b]; });
    for (int64_t j = 0; j < k; ++j) {
      values.push_back(x[r * e + idx[j]]);
      indices.push_back(idx[j]);
    }
  }
}

TEST(TopkTest, MatchesReference) {
  for (int64_t e : {1, 8, 33, 256}) {
    for (int64_t k : {int64_t{1}, std::min<int64_t>(8, e), e}) {
      const int64_t rows = 200;
      // Values on a coarse grid, so that ties are common.
      std::vector<float> x = random_tensor({rows, e}, 31).to_floats();
      for (float& v : x) v = std::round(v * 8.0f) / 8.0f;
      Tensor values = Tensor::empty({rows, k}, DType::kF32);
      Tensor indices = Tensor::empty({rows, k}, DType::kI32);
      topk(Tensor::from_floats(x, {rows, e}), k, values, indices);
      std::vector<float> want_v;
      std::vector<int32_t> want_i;
      ref_topk(x, rows, e, k, want_v, want_i);
      EXPECT_EQ(values.to_floats(), want_v) << "e=" << e << " k=" << k;
      EXPECT_EQ(indices.to_vector<int32_t>(), want_i) << "e=" << e << " k=" << k;
    }
  }
}

TEST(TopkTest, TiesGoToLowerIndexAndKEqualsE) {
  const Tensor x = Tensor::from_floats({1, 3, 3, 2, 3, -1}, {1, 6});
  Tensor v2 = Tensor::empty({1, 2}, DType::kF32);
  Tensor i2 = Tensor::empty({1, 2}, DType::kI32);
  topk(x, 2, v2, i2);
  EXPECT_EQ(v2.to_floats(), std::vector<float>({3, 3}));
  EXPECT_EQ(i2.to_vector<int32_t>(), std::vector<int32_t>({1, 2}));

  Tensor v6 = Tensor::empty({1, 6}, DType::kF32);
  Tensor i6 = Tensor::empty({1, 6}, DType::kI32);
  topk(x, 6, v6, i6);
  EXPECT_EQ(v6.to_floats(), std::vector<float>({3, 3, 3, 2, 1, -1}));
  EXPECT_EQ(i6.to_vector<int32_t>(), std::vector<int32_t>({1, 2, 4, 3, 0, 5}));
}

TEST(TopkTest, KOutOfRange) {
  const Tensor x = Tensor::zeros({2, 4}, DType::kF32);
  for (int64_t k : {int64_t{0}, int64_t{5}, int64_t{-1}}) {
    Tensor v = Tensor::empty({2, std::max<int64_t>(k, 1)}, DType::kF32);
    Tensor i = Tensor::empty({2, std::max<int64_t>(k, 1)}, DType::kI32);
    const std::string e = error_of([&] { topk(x, k, v, i); });
    EXPECT_THAT(e, HasSubstr("topk: k = " + std::to_string(k) + " must be in [1, 4]")) << e;
    EXPECT_THAT(e, HasSubstr("f32[2, 4]@cpu"));
  }
  Tensor v = Tensor::empty({2, 3}, DType::kF32);
  Tensor i = Tensor::empty({2, 2}, DType::kI32);
  EXPECT_THAT(error_of([&] { topk(x, 2, v, i); }),
              HasSubstr("topk: values must have shape [2, 2], got f32[2, 3]@cpu"));
}

TEST(GatherScatterTest, GatherMatchesReference) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t d : testing::awkward_sizes()) {
      for (bool scaled : {false, true}) {
        const int64_t rows = 40, n = 300;
        const Tensor x = random_tensor({rows, d}, 41, dtype);
        const std::vector<int32_t> index = random_indices(n, rows, 42);
        const Tensor scale = scaled ? random_tensor({n}, 43) : Tensor();
        Tensor out = Tensor::empty({n, d}, dtype);
        gather_rows(x, Tensor::from_vector(index, {n}), scale, out);
        const std::vector<double> s = scaled ? to_doubles(scale) : std::vector<double>();
        expect_close(out.to_floats(), to_floats(ref_gather(to_doubles(x), index, s, d)),
                     tolerance_for(dtype),
                     std::string("gather_rows ") + std::string(dtype_name(dtype)) +
                         " d=" + std::to_string(d) + " scaled=" + std::to_string(scaled));
      }
    }
  }
}

TEST(GatherScatterTest, ScatterAddRepeatedIndices) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t d : testing::awkward_sizes()) {
      for (bool scaled : {false, true}) {
        const int64_t rows = 25, n = 400;  // every row receives many contributions
        const Tensor x = random_tensor({n, d}, 51, dtype);
        const std::vector<int32_t> index = random_indices(n, rows, 52);
        const Tensor scale = scaled ? random_tensor({n}, 53) : Tensor();
        const Tensor out0 = random_tensor({rows, d}, 54, dtype);
        Tensor out = out0.clone();
        scatter_add_rows(x, Tensor::from_vector(index, {n}), scale, out);
        const std::vector<double> s = scaled ? to_doubles(scale) : std::vector<double>();
        const std::vector<double> want = ref_scatter(to_doubles(x), index, s, to_doubles(out0), d);
        // Sums of ~16 terms of size 1: f32 rounding stays below 1e-5 absolute.
        const Tolerance tol = dtype == DType::kF32 ? Tolerance{1e-5, 1e-5} : tolerance_for(dtype);
        expect_close(out.to_floats(), to_floats(want), tol,
                     std::string("scatter_add_rows ") + std::string(dtype_name(dtype)) +
                         " d=" + std::to_string(d) + " scaled=" + std::to_string(scaled));
      }
    }
  }
}

// gather_rows and scatter_add_rows are each other's adjoint: the gradient of
// L = sum(r * gather(x)) with respect to x is scatter_add(r), and that of L = sum(r * scatter(x))
// is gather(r); both checked by finite differences of the double references.
TEST(GatherScatterTest, AdjointsByFiniteDifferences) {
  const int64_t rows = 5, n = 8, d = 3;
  const std::vector<int32_t> index = {4, 0, 4, 2, 4, 0, 1, 2};  // row 3 unused
  const Tensor index_t = Tensor::from_vector(index, {n});
  const Tensor scale = random_tensor({n}, 61, DType::kF32, Device::cpu(), 0.5f, 2.0f);
  const std::vector<double> s = to_doubles(scale);

  {  // gather: x (rows, d) -> (n, d)
    const Tensor x = random_tensor({rows, d}, 62);
    const Tensor r = random_tensor({n, d}, 63);
    std::vector<double> xd = to_doubles(x);
    const std::vector<double> rd = to_doubles(r);
    const std::vector<double> want =
        finite_difference(xd, [&] { return project(rd, ref_gather(xd, index, s, d)); });
    Tensor dx = Tensor::zeros({rows, d}, DType::kF32);
    scatter_add_rows(r, index_t, scale, dx);
    expect_close(dx.to_floats(), to_floats(want), kGradTol, "gradient of gather_rows");
  }
  {  // scatter: x (n, d) -> (rows, d)
    const Tensor x = random_tensor({n, d}, 64);
    const Tensor r = random_tensor({rows, d}, 65);
    std::vector<double> xd = to_doubles(x);
    const std::vector<double> rd = to_doubles(r);
    const std::vector<double> zero(rows * d, 0.0);
    const std::vector<double> want =
        finite_difference(xd, [&] { return project(rd, ref_scatter(xd, index, s, zero, d)); });
    Tensor dx = Tensor::empty({n, d}, DType::kF32);
    gather_rows(r, index_t, scale, dx);
    expect_close(dx.to_floats(), to_floats(want), kGradTol, "gradient of scatter_add_rows");
  }
}

// gathered_row_dot(x, index, dy) is dL/dscale for out = gather_rows(x, index, scale).
TEST(GatherScatterTest, GatheredRowDotIsScaleGradient) {
  for (int64_t d : {int64_t{1}, int64_t{33}, int64_t{129}}) {
    const int64_t rows = 6, n = 10;
    const std::vector<int32_t> index = random_indices(n, rows, 71);
    const Tensor x = random_tensor({rows, d}, 72);
    const Tensor r = random_tensor({n, d}, 73);
    const Tensor scale = random_tensor({n}, 74);
    const std::vector<double> xd = to_doubles(x), rd = to_doubles(r);
    std::vector<double> sd = to_doubles(scale);
    const std::vector<double> want =
        finite_difference(sd, [&] { return project(rd, ref_gather(xd, index, sd, d)); });
    Tensor out = Tensor::empty({n}, DType::kF32);
    gathered_row_dot(x, Tensor::from_vector(index, {n}), r, out);
    expect_close(out.to_floats(), to_floats(want), kGradTol,
                 "gathered_row_dot d=" + std::to_string(d));
  }
  // bf16 operands against f32 on the same values, and a parallel-sized case.
  const int64_t rows = 64, n = 600, d = 128;
  const std::vector<int32_t> index = random_indices(n, rows, 75);
  const Tensor a16 = random_tensor({rows, d}, 76, DType::kBF16);
  const Tensor b16 = random_tensor({n, d}, 77, DType::kBF16);
  std::vector<double> want(n, 0.0);
  const std::vector<double> ad = to_doubles(a16), bd = to_doubles(b16);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < d; ++j) want[i] += ad[index[i] * d + j] * bd[i * d + j];
  }
  Tensor out = Tensor::empty({n}, DType::kF32);
  gathered_row_dot(a16, Tensor::from_vector(index, {n}), b16, out);
  expect_close(out.to_floats(), to_floats(want), {1e-5, 1e-5}, "gathered_row_dot bf16");
}

TEST(IndexErrorsTest, OutOfRangeIndicesNameTheIndex) {
  const Tensor x = Tensor::zeros({5, 4}, DType::kF32);
  const Tensor index = Tensor::from_vector(std::vector<int32_t>{0, 4, 7, 1}, {4});
  Tensor out = Tensor::zeros({4, 4}, DType::kF32);
  std::string e = error_of([&] { gather_rows(x, index, Tensor(), out); });
  EXPECT_THAT(e, HasSubstr("gather_rows: index[2] = 7 out of range [0, 5)"));
  EXPECT_THAT(e, HasSubstr("f32[5, 4]@cpu"));

  const Tensor neg = Tensor::from_vector(std::vector<int32_t>{0, -3, 1, 1}, {4});
  e = error_of([&] { gather_rows(x, neg, Tensor(), out); });
  EXPECT_THAT(e, HasSubstr("gather_rows: index[1] = -3 out of range [0, 5)"));

  Tensor dst = Tensor::zeros({5, 4}, DType::kF32);
  const Tensor src = Tensor::zeros({4, 4}, DType::kF32);
  e = error_of([&] { scatter_add_rows(src, index, Tensor(), dst); });
  EXPECT_THAT(e, HasSubstr("scatter_add_rows: index[2] = 7 out of range [0, 5)"));

  Tensor dots = Tensor::zeros({4}, DType::kF32);
  e = error_of([&] { gathered_row_dot(x, index, src, dots); });
  EXPECT_THAT(e, HasSubstr("gathered_row_dot: index[2] = 7 out of range [0, 5)"));

  const Tensor ids = Tensor::from_vector(std::vector<int32_t>{1, 5}, {2});
  Tensor emb = Tensor::zeros({2, 4}, DType::kF32);
  e = error_of([&] { embedding_forward(ids, x, emb); });
  EXPECT_THAT(
      e, HasSubstr("embedding_forward: ids[1] = 5 out of range [0, 5) for table f32[5, 4]@cpu"));
  Tensor dtable = Tensor::zeros({5, 4}, DType::kF32);
  e = error_of([&] { embedding_backward(ids, emb, dtable); });
  EXPECT_THAT(e, HasSubstr("embedding_backward: ids[1] = 5 out of range [0, 5)"));
}

TEST(IndexErrorsTest, ShapesAndDtypes) {
  const Tensor x = Tensor::zeros({5, 4}, DType::kF32);
  const Tensor index = Tensor::from_vector(std::vector<int32_t>{0, 1, 2}, {3});
  Tensor out_bad = Tensor::zeros({3, 5}, DType::kF32);
  std::string e = error_of([&] { gather_rows(x, index, Tensor(), out_bad); });
  EXPECT_THAT(e, HasSubstr("gather_rows: out must have shape [3, 4], got f32[3, 5]@cpu"));

  Tensor out = Tensor::zeros({3, 4}, DType::kF32);
  const Tensor scale_bad = Tensor::zeros({4}, DType::kF32);
  e = error_of([&] { gather_rows(x, index, scale_bad, out); });
  EXPECT_THAT(e, HasSubstr("gather_rows: scale must have shape [3], got f32[4]@cpu"));

  Tensor out16 = Tensor::zeros({3, 4}, DType::kBF16);
  e = error_of([&] { gather_rows(x, index, Tensor(), out16); });
  EXPECT_THAT(e, HasSubstr("gather_rows: out must be f32, got bf16[3, 4]@cpu"));

  const Tensor index64 = Tensor::from_vector(std::vector<int64_t>{0, 1, 2}, {3});
  e = error_of([&] { gather_rows(x, index64, Tensor(), out); });
  EXPECT_THAT(e, HasSubstr("gather_rows: index must be i32, got i64[3]@cpu"));

  Tensor dst = Tensor::zeros({5, 4}, DType::kF32);
  e = error_of([&] { scatter_add_rows(x, index, Tensor(), dst); });
  EXPECT_THAT(e, HasSubstr("scatter_add_rows"));
  EXPECT_THAT(e, HasSubstr("i32[3]@cpu"));
  EXPECT_THAT(e, HasSubstr("f32[5, 4]@cpu"));

  Tensor dtable16 = Tensor::zeros({5, 4}, DType::kBF16);
  e = error_of([&] { embedding_backward(index, out, dtable16); });
  EXPECT_THAT(e, HasSubstr("embedding_backward: dtable must be f32, got bf16[5, 4]@cpu"));

  e = error_of([&] { embedding_forward(index, Tensor(), out); });
  EXPECT_THAT(e, HasSubstr("embedding_forward: table is undefined"));

  Tensor dots = Tensor::zeros({3}, DType::kF32);
  const Tensor b_bad = Tensor::zeros({3, 5}, DType::kF32);
  e = error_of([&] { gathered_row_dot(x, index, b_bad, dots); });
  EXPECT_THAT(e, HasSubstr("gathered_row_dot: b must have shape [3, 4], got f32[3, 5]@cpu"));
}

TEST(TransposeTest, SwapsLastTwoDimsForEveryElementSize) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF8E4M3}) {
    for (int64_t m : {1, 31, 33, 129}) {
      for (int64_t n : {1, 32, 65}) {
        const Tensor x = random_tensor({2, m, n}, 11, dtype);
        Tensor y = Tensor::empty({2, n, m}, dtype);
        transpose(x, y);
        const std::vector<float> xs = x.to_floats();
        const std::vector<float> ys = y.to_floats();
        for (int64_t b = 0; b < 2; ++b) {
          for (int64_t r = 0; r < m; ++r) {
            for (int64_t c = 0; c < n; ++c) {
              ASSERT_EQ(ys[(b * n + c) * m + r], xs[(b * m + r) * n + c])
                  << dtype_name(dtype) << " m=" << m << " n=" << n << " at " << b << "," << r
                  << "," << c;
            }
          }
        }
      }
    }
  }
}

TEST(TransposeTest, RejectsWrongOutputShape) {
  const Tensor x = Tensor::zeros({3, 5}, DType::kF32);
  Tensor y = Tensor::empty({3, 5}, DType::kF32);
  EXPECT_THAT(error_of([&] { transpose(x, y); }), HasSubstr("transpose: y must have shape [5, 3], got f32[3, 5]@cpu"));
}

TEST(CopyColumnsTest, CopiesBlockAndLeavesTheRest) {
  const Tensor src = random_tensor({5, 7}, 3);
  Tensor dst = Tensor::zeros({5, 4}, DType::kF32);
  copy_columns(src, 2, dst, 1, 3);
  const std::vector<float> s = src.to_floats();
  const std::vector<float> d = dst.to_floats();
  for (int64_t r = 0; r < 5; ++r) {
    EXPECT_EQ(d[r * 4], 0.0f) << "row " << r;
    for (int64_t j = 0; j < 3; ++j) EXPECT_EQ(d[r * 4 + 1 + j], s[r * 7 + 2 + j]) << r << "," << j;
  }
  EXPECT_THAT(error_of([&] { copy_columns(src, 5, dst, 0, 3); }),
              HasSubstr("columns [5, 8) of f32[5, 7]@cpu to [0, 3) of f32[5, 4]@cpu out of range"));
}

}  // namespace
}  // namespace fathom
