// What the host CPU can do, and whether OpenBLAS uses it.
//
// A DYNAMIC_ARCH OpenBLAS picks its kernels from the CPU at load time, but an OPENBLAS_CORETYPE
// preset in the environment overrides that choice. A preset older than the CPU (Haswell on an
// AVX-512 machine) silently halves GEMM speed (MACHINE.md), so the CLI and the benchmarks report it.
#pragma once

#include <string>

namespace fathom {

struct CpuFeatures {
  std::string model_name;  // from /proc/cpuinfo; empty if unknown
  int logical_cores = 0;
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512_bf16 = false;
  bool amx_tile = false;
};

CpuFeatures cpu_features();

// The OpenBLAS core in use (openblas_get_corename()), e.g. "Cooperlake".
std::string blas_core_name();
// The core OpenBLAS 0.3.x picks for these features without a preset: SapphireRapids,
// Cooperlake, SkylakeX or Haswell.
std::string expected_blas_core(const CpuFeatures& cpu);
// Empty when the core in use is as good as expected; otherwise one line saying what is wrong and
// how to fix it (naming OPENBLAS_CORETYPE when it is set).
std::string blas_core_warning();

}  // namespace fathom
