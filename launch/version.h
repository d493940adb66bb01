// `fathom version`: the versions of the libraries this binary was built with or found at run time.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace fathom::launch {

// (component, version) pairs in display order: fathom, CUDA runtime and driver, cuBLASLt, NCCL,
// cuDNN, MPI, HDF5, OpenBLAS, and the visible GPUs. Components not built in read "not built".
std::vector<std::pair<std::string, std::string>> version_report();

}  // namespace fathom::launch
