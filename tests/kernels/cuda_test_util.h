// Helpers for the CUDA-vs-CPU tests (tests/kernels/cuda_*_test.cc): every op runs once on host
// tensors (the reference) and once on copies on the GPU, and the results are compared. Each test
// starts with FATHOM_REQUIRE_GPU(), so without a usable device it reports SKIPPED.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iomanip>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/tensor.h"
#include "tests/kernels/test_util.h"

namespace fathom::testing {

inline Device gpu() { return Device::cuda(0); }

inline Tensor on_gpu(const Tensor& t) { return t.to(gpu()); }

// The dtypes every activation op is checked in.
inline const std::vector<DType>& float_dtypes() {
  static const std::vector<DType> kDtypes = {DType::kF32, DType::kBF16};
  return kDtypes;
}

inline std::string name(DType dtype) { return std::string(dtype_name(dtype)); }

// tolerance_for(dtype) with atol relative to the reference's largest magnitude (at least 1): the
// rounding error of a long sum follows the size of its terms, not of each (possibly cancelled)
// result, so this is the bound for GEMM- and attention-like results.
inline Tolerance scaled_tolerance(DType dtype, const Tensor& want) {
  double peak = 1.0;
  for (float v : want.to_floats()) peak = std::max(peak, static_cast<double>(std::fabs(v)));
  const Tolerance t = tolerance_for(dtype);
  return {t.atol * peak, t.rtol};
}

// The GPU result (copied back) against the CPU reference.
inline void expect_gpu_close(const Tensor& gpu_result, const Tensor& cpu_result, Tolerance tol,
                             const std::string& context) {
  ASSERT_TRUE(gpu_result.is_cuda()) << context;
  ASSERT_EQ(gpu_result.dtype(), cpu_result.dtype()) << context;
  ASSERT_EQ(gpu_result.shape(), cpu_result.shape()) << context;
  expect_close(gpu_result.to(Device::cpu()), cpu_result, tol, context);
}

// Bit-identical storage; on failure prints the first differing elements as bytes.
inline void expect_same_bytes(const Tensor& gpu_result, const Tensor& cpu_result,
                              const std::string& context) {
  ASSERT_EQ(gpu_result.dtype(), cpu_result.dtype()) << context;
  ASSERT_EQ(gpu_result.shape(), cpu_result.shape()) << context;
  const Tensor got = gpu_result.to(Device::cpu());
  const size_t elem = dtype_size(got.dtype());
  const auto* g = static_cast<const uint8_t*>(got.raw_data());
  const auto* w = static_cast<const uint8_t*>(cpu_result.raw_data());
  int64_t bad = 0;
  std::ostringstream first;
  for (int64_t i = 0; i < got.numel(); ++i) {
    if (std::memcmp(g + i * elem, w + i * elem, elem) == 0) continue;
    if (bad < 5) {
      first << "  [" << i << "] got 0x" << std::hex << std::setfill('0');
      for (size_t b = elem; b-- > 0;) first << std::setw(2) << static_cast<int>(g[i * elem + b]);
      first << " want 0x";
      for (size_t b = elem; b-- > 0;) first << std::setw(2) << static_cast<int>(w[i * elem + b]);
      first << std::dec << std::setfill(' ') << "\n";
    }
    ++bad;
  }
  EXPECT_EQ(bad, 0) << context << " (" << got.str() << "): " << bad << " of " << got.numel()
                    << " elements differ\n"
                    << first.str();
}

// n indices in [0, bound) with repeats, deterministic for a seed.
inline std::vector<int32_t> random_ids(int64_t n, int64_t bound, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(bound - 1));
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int32_t& i : v) i = dist(rng);
  return v;
}

}  // namespace fathom::testing
