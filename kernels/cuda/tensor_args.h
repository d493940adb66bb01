// Helpers for the Tensor-level CUDA ops (kernels/cuda/ops*.cc): the device guard, the stream of
// a tensor's device, and the raw views the launchers in launchers.h take.
// Not for use outside kernels/cuda/.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/check.h"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/runtime.h"
#include "kernels/tensor.h"

namespace fathom::cuda {

// Makes `device` current for the scope and restores the previous device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) {
      (void)cudaGetLastError();
      previous_ = -1;
    }
    if (previous_ != device) set_device(device);
  }
  ~DeviceGuard() {
    int now = -1;
    if (previous_ >= 0 && cudaGetDevice(&now) == cudaSuccess && now != previous_) {
      (void)cudaSetDevice(previous_);
    }
    (void)cudaGetLastError();
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

inline cudaStream_t stream_of(const Tensor& t) { return current_stream(t.device().index); }

// f32 / bf16 storage as the kernels see it.
inline FloatPtr out_ptr(Tensor& t) {
  FATHOM_CHECK(t.dtype() == DType::kF32 || t.dtype() == DType::kBF16)
      << "CUDA op: expected an f32 or bf16 tensor, got " << t.str();
  return FloatPtr{t.raw_data(), t.dtype() == DType::kBF16};
}
inline ConstFloatPtr in_ptr(const Tensor& t) {
  FATHOM_CHECK(t.dtype() == DType::kF32 || t.dtype() == DType::kBF16)
      << "CUDA op: expected an f32 or bf16 tensor, got " << t.str();
  return ConstFloatPtr{t.raw_data(), t.dtype() == DType::kBF16};
}

}  // namespace fathom::cuda
