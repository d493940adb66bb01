// Shared benchmark helpers: median-of-repeats timing and the run header (CONVENTIONS.md 11).
#pragma once

#include <cblas.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu_info.h"
#include "kernels/cuda/runtime.h"
#include "kernels/tensor.h"
#include "kernels/threads.h"

namespace fathom::bench {

// Median seconds per call of `fn` over `repeats` timed calls after `warmup` untimed ones.
// `sync` runs after each call inside the timed region (device synchronisation for GPU work).
inline double median_seconds(const std::function<void()>& fn, int warmup, int repeats,
                             const std::function<void()>& sync = nullptr) {
  for (int i = 0; i < warmup; ++i) fn();
  if (sync) sync();
  std::vector<double> t;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    if (sync) sync();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  return t[t.size() / 2];
}

// Repeats so that one shape takes about `budget_s` seconds in total (at least 3).
inline int repeats_for(double seconds_per_call, double budget_s = 1.0) {
  return std::clamp(static_cast<int>(budget_s / std::max(seconds_per_call, 1e-9)), 3, 200);
}

// Seconds of raw OpenBLAS sgemm, C(m, n) = A(m, k) B(n, k)^T row-major: the reference every
// GEMM path is compared with.
inline double raw_sgemm_seconds(int64_t m, int64_t n, int64_t k, double budget_s) {
  std::vector<float> a(m * k, 0.5f), b(n * k, 0.25f), c(m * n);
  auto run = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a.data(), k, b.data(), k,
                0.0f, c.data(), n);
  };
  const double once = median_seconds(run, 1, 1);
  return median_seconds(run, 1, repeats_for(once, budget_s));
}

// The machine's GEMM ceiling: sgemm at n = 2048, in GFLOP/s.
inline double sgemm_ceiling_gflops(double budget_s) {
  const int64_t n = 2048;
  return 2.0 * n * n * n / raw_sgemm_seconds(n, n, n, budget_s) / 1e9;
}

// Uniform values in [-1, 1) on the host, converted to dtype.
inline Tensor random_tensor(std::initializer_list<int64_t> shape, DType dtype, uint32_t seed) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> v(static_cast<size_t>(n));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (float& x : v) x = dist(rng);
  return Tensor::from_floats(v, absl::MakeConstSpan(shape.begin(), shape.size()), dtype);
}

struct BenchArgs {
  bool gpu = false;    // also run the GPU section
  bool quick = false;  // shorter timing budget per case
};

// Parses [--gpu] [--threads N] [--quick] (applying --threads); prints usage and exits 2 on
// anything else.
inline BenchArgs parse_bench_args(int argc, char** argv, const char* name) {
  BenchArgs args;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--gpu")) {
      args.gpu = true;
    } else if (!std::strcmp(argv[i], "--quick")) {
      args.quick = true;
    } else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc && std::atoi(argv[i + 1]) > 0) {
      set_cpu_threads(std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--gpu] [--threads N] [--quick]\n", name);
      std::exit(2);
    }
  }
  return args;
}

// Prints the machine and thread setup, and the OpenBLAS core warning if any.
inline void print_header(const char* name) {
  const CpuFeatures cpu = cpu_features();
  std::printf("# %s\n# cpu: %s, %d logical cores, %d threads used, OpenBLAS core %s "
              "(expected %s)\n",
              name, cpu.model_name.c_str(), cpu.logical_cores, cpu_threads(),
              blas_core_name().c_str(), expected_blas_core(cpu).c_str());
  if (const std::string w = blas_core_warning(); !w.empty()) std::printf("# WARNING: %s\n", w.c_str());
  const int gpus = cuda::device_count();
  std::printf("# gpu: %s\n", gpus > 0 ? cuda::device_name(0).c_str() : "none");
}

}  // namespace fathom::bench
