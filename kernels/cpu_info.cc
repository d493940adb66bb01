#include "kernels/cpu_info.h"

#include <cblas.h>
#include <cpuid.h>

#include <cstdlib>
#include <fstream>
#include <thread>

extern "C" char* openblas_get_corename();

namespace fathom {
namespace {

// Higher is faster; unknown cores rank 0 so they never trigger a warning on their own.
int core_rank(const std::string& core) {
  if (core == "Haswell" || core == "Zen") return 1;
  if (core == "SkylakeX") return 2;
  if (core == "Cooperlake") return 3;
  if (core == "SapphireRapids") return 4;
  return 0;
}

}  // namespace

CpuFeatures cpu_features() {
  CpuFeatures f;
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx)) f.fma = (ecx >> 12) & 1;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) {
    f.avx2 = (ebx >> 5) & 1;
    f.avx512f = (ebx >> 16) & 1;
    f.avx512bw = (ebx >> 30) & 1;
    f.avx512vl = (ebx >> 31) & 1;
    f.amx_tile = (edx >> 24) & 1;
  }
  if (__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) f.avx512_bf16 = (eax >> 5) & 1;
  f.logical_cores = static_cast<int>(std::thread::hardware_concurrency());
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) f.model_name = line.substr(colon + 2);
      break;
    }
  }
  return f;
}

std::string blas_core_name() { return openblas_get_corename(); }

std::string expected_blas_core(const CpuFeatures& cpu) {
  const bool avx512 = cpu.avx512f && cpu.avx512bw && cpu.avx512vl;
  if (avx512 && cpu.amx_tile && cpu.avx512_bf16) return "SapphireRapids";
  if (avx512 && cpu.avx512_bf16) return "Cooperlake";
  if (avx512) return "SkylakeX";
  return "Haswell";
}

std::string blas_core_warning() {
  const std::string in_use = blas_core_name();
  const std::string expected = expected_blas_core(cpu_features());
  if (core_rank(in_use) == 0 || core_rank(in_use) >= core_rank(expected)) return "";
  std::string msg = "OpenBLAS runs " + in_use + " kernels but this CPU supports " + expected;
  const char* preset = std::getenv("OPENBLAS_CORETYPE");
  if (preset != nullptr) {
    msg += std::string(" because OPENBLAS_CORETYPE=") + preset +
           " is set; unset it (env -u OPENBLAS_CORETYPE ...) for full GEMM speed";
  }
  return msg;
}

}  // namespace fathom
