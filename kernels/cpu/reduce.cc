// CPU reductions (kernels/ops/reduce.h). Sums accumulate in double. reduce_all splits the
// tensor into fixed blocks and adds the block results in order, so the result does not depend
// on the thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/cpu/ops.h"

namespace fathom::cpu {
namespace {

constexpr int64_t kParallelMin = 1 << 15;
constexpr int64_t kBlock = 1 << 14;
// Independent partial sums: enough lanes to fill two AVX2 double vectors per FMA port.
constexpr int kLanes = 16;

// Sum of x (or of x^2) over [0, n), in double.
template <bool kSquares, typename T>
double sum_range(const T* x, int64_t n) {
  double lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const double v = to_float(x[i + l]);
      lanes[l] += kSquares ? v * v : v;
    }
  }
  for (; i < n; ++i) {
    const double v = to_float(x[i]);
    lanes[0] += kSquares ? v * v : v;
  }
  double s = 0.0;
  for (int l = 0; l < kLanes; ++l) s += lanes[l];
  return s;
}

// Max over [0, n); NaN if any element is NaN; -inf for n == 0.
template <typename T>
double max_range(const T* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    const float v = to_float(x[i]);
    nan |= v != v;
    m = v > m ? v : m;
  }
  return nan ? std::numeric_limits<double>::quiet_NaN() : m;
}

template <typename T>
double reduce_range(const T* x, int64_t n, Reduce op) {
  switch (op) {
    case Reduce::kSum:
    case Reduce::kMean: return sum_range<false>(x, n);
    case Reduce::kSumSquares: return sum_range<true>(x, n);
    case Reduce::kMax: return max_range(x, n);
  }
  return 0.0;
}

template <typename T>
void reduce_rows_typed(const T* x, Reduce op, float* out, int64_t rows, int64_t d) {
#pragma omp parallel for schedule(static) if (rows > 1 && rows * d >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    double v = reduce_range(x + r * d, d, op);
    if (op == Reduce::kMean) v = d == 0 ? 0.0 : v / static_cast<double>(d);
    out[r] = static_cast<float>(v);
  }
}

template <typename T>
double reduce_all_typed(const T* x, int64_t n, Reduce op) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<size_t>(blocks));
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * kBlock;
    partial[b] = reduce_range(x + begin, std::min(kBlock, n - begin), op);
  }
  if (op == Reduce::kMax) {
    double m = -std::numeric_limits<double>::infinity();
    for (double p : partial) m = (p > m || std::isnan(p)) && !std::isnan(m) ? p : m;
    return m;
  }
  double s = 0.0;
  for (double p : partial) s += p;
  if (op == Reduce::kMean) s = n == 0 ? 0.0 : s / static_cast<double>(n);
  return s;
}

}  // namespace

void reduce_rows(const Tensor& x, Reduce op, Tensor& out) {
  const int64_t rows = out.numel();
  if (rows == 0) return;
  const int64_t d = x.numel() / rows;
  if (x.dtype() == DType::kBF16) {
    reduce_rows_typed(x.data<bf16>(), op, out.data<float>(), rows, d);
  } else {
    reduce_rows_typed(x.data<float>(), op, out.data<float>(), rows, d);
  }
}

double reduce_all(const Tensor& x, Reduce op) {
  if (x.dtype() == DType::kBF16) return reduce_all_typed(x.data<bf16>(), x.numel(), op);
  return reduce_all_typed(x.data<float>(), x.numel(), op);
}

}  // namespace fathom::cpu
