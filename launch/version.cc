#include "launch/version.h"

#include <cblas.h>
#include <hdf5.h>
#include <mpi.h>

#include "kernels/cpu_info.h"
#include "kernels/cuda/runtime.h"
#include "kernels/device.h"
#if FATHOM_HAVE_NCCL
#include <nccl.h>
#endif

namespace fathom::launch {
namespace {

std::string mpi_version() {
  char library[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  MPI_Get_library_version(library, &length);  // callable before MPI_Init
  std::string s(library, length);
  const size_t comma = s.find(',');
  if (comma != std::string::npos) s.resize(comma);
  int major = 0, minor = 0;
  MPI_Get_version(&major, &minor);
  return s + " (MPI " + std::to_string(major) + "." + std::to_string(minor) + ")";
}

std::string hdf5_version() {
  unsigned major = 0, minor = 0, release = 0;
  H5get_libversion(&major, &minor, &release);
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(release);
}

std::string nccl_version() {
#if FATHOM_HAVE_NCCL
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "error";
  return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." +
         std::to_string(v % 100);
#else
  return "not built";
#endif
}

std::string or_not_built(const std::string& v) { return v == "none" ? "not built" : v; }

}  // namespace

std::vector<std::pair<std::string, std::string>> version_report() {
  std::vector<std::pair<std::string, std::string>> r;
  r.emplace_back("fathom", FATHOM_VERSION);
  r.emplace_back("CUDA runtime", or_not_built(cuda::runtime_version()));
  r.emplace_back("CUDA driver", cuda_built() ? cuda::driver_version() : "not built");
  r.emplace_back("cuBLASLt", or_not_built(cuda::cublaslt_version()));
  r.emplace_back("NCCL", nccl_version());
  r.emplace_back("cuDNN", or_not_built(cuda::cudnn_version()));
  r.emplace_back("MPI", mpi_version());
  r.emplace_back("HDF5", hdf5_version());
  r.emplace_back("OpenBLAS", openblas_get_config());
  const CpuFeatures cpu = cpu_features();
  r.emplace_back("CPU", cpu.model_name + ", " + std::to_string(cpu.logical_cores) +
                            " threads, BLAS core " + blas_core_name() + " (expected " +
                            expected_blas_core(cpu) + ")");
  if (const std::string warning = blas_core_warning(); !warning.empty()) {
    r.emplace_back("WARNING", warning);
  }
  const int gpus = cuda_device_count();
  std::string gpu = gpus == 0 ? "none visible" : std::to_string(gpus) + " visible";
  if (gpus > 0) gpu += " (" + cuda::device_name(0) + ")";
  r.emplace_back("GPU", gpu);
  return r;
}

}  // namespace fathom::launch
