// Shared test helpers for kernels/: random inputs, the per-dtype tolerance table, comparisons
// that print every parameter, double-precision finite differences, and the GPU skip.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/check.h"
#include "kernels/device.h"
#include "kernels/tensor.h"

namespace fathom::testing {

// |got - want| <= atol + rtol * |want|, one row per dtype (CONVENTIONS.md 5). fp8 comparisons
// are done on dequantized values against a bound derived from the block scale instead.
struct Tolerance {
  double atol;
  double rtol;
};
inline Tolerance tolerance_for(DType dtype) {
  switch (dtype) {
    case DType::kF32: return {1e-5, 1e-5};
    case DType::kBF16: return {2e-2, 2e-2};
    case DType::kF8E4M3: return {1.25e-1, 1.25e-1};
    case DType::kF8E5M2: return {2.5e-1, 2.5e-1};
    default: return {0, 0};
  }
}

// Values uniform in [lo, hi), deterministic for a seed.
inline std::vector<float> random_values(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

inline Tensor random_tensor(absl::Span<const int64_t> shape, uint32_t seed,
                            DType dtype = DType::kF32, Device device = Device::cpu(),
                            float lo = -1.0f, float hi = 1.0f) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return Tensor::from_floats(random_values(static_cast<size_t>(n), seed, lo, hi), shape, dtype,
                             device);
}

// Asserts element-wise closeness; on failure prints `context`, the first few bad indices and
// the worst error.
inline void expect_close(const std::vector<float>& got, const std::vector<float>& want,
                         Tolerance tol, const std::string& context) {
  ASSERT_EQ(got.size(), want.size()) << context;
  int bad = 0;
  double worst = 0;
  size_t worst_i = 0;
  std::ostringstream first;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(static_cast<double>(got[i]) - want[i]);
    const double bound = tol.atol + tol.rtol * std::abs(static_cast<double>(want[i]));
    const bool ok = err <= bound || (std::isnan(got[i]) && std::isnan(want[i]));
    if (!ok) {
      if (bad < 5) first << "  [" << i << "] got " << got[i] << " want " << want[i] << "\n";
      ++bad;
    }
    if (err > worst) {
      worst = err;
      worst_i = i;
    }
  }
  EXPECT_EQ(bad, 0) << context << ": " << bad << " of " << got.size()
                    << " elements out of tolerance (atol " << tol.atol << ", rtol " << tol.rtol
                    << "); worst error " << worst << " at " << worst_i << "\n"
                    << first.str();
}

inline void expect_close(const Tensor& got, const Tensor& want, Tolerance tol,
                         const std::string& context) {
  expect_close(got.to_floats(), want.to_floats(), tol, context + " (" + got.str() + ")");
}

// The message of the fathom::Error that f() throws, or "no error".
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

inline std::vector<double> to_doubles(const Tensor& t) {
  const std::vector<float> f = t.to_floats();
  return std::vector<double>(f.begin(), f.end());
}

inline std::vector<float> to_floats(const std::vector<double>& d) {
  return std::vector<float>(d.begin(), d.end());
}

// Central finite difference of a scalar function f over the elements of x (double precision):
// returns df/dx[i] = (f(x + h e_i) - f(x - h e_i)) / 2h for every i.
inline std::vector<double> finite_difference(std::vector<double>& x,
                                             const std::function<double()>& f, double h = 1e-6) {
  std::vector<double> grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double up = f();
    x[i] = saved - h;
    const double down = f();
    x[i] = saved;
    grad[i] = (up - down) / (2 * h);
  }
  return grad;
}

// The CUDA device for GPU tests; skips the test when none is usable.
#define FATHOM_REQUIRE_GPU()                                                   \
  do {                                                                         \
    if (::fathom::cuda_device_count() == 0) {                                  \
      GTEST_SKIP() << "no usable CUDA device"                                  \
                   << (::fathom::cuda_built() ? "" : " (built without CUDA)"); \
    }                                                                          \
  } while (0)

// Sizes that straddle the tile boundaries kernels care about.
inline const std::vector<int64_t>& awkward_sizes() {
  static const std::vector<int64_t> kSizes = {1, 31, 32, 33, 127, 128, 129};
  return kSizes;
}

}  // namespace fathom::testing
