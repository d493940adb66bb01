#include "kernels/device.h"

#include "kernels/cuda/runtime.h"

namespace fathom {

bool cuda_built() {
#if FATHOM_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() { return cuda::device_count(); }

}  // namespace fathom
