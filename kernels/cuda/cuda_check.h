// Check macros for CUDA runtime and cuBLASLt calls: on failure they throw fathom::Error naming
// the call, its error string and file:line (and the rank, through fathom::error_context()).
// Host-side code only; include from .cu or CUDA-aware .cc files.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "kernels/check.h"

#define FATHOM_CUDA_CHECK(call)                                                       \
  do {                                                                                \
    cudaError_t fathom_cuda_err_ = (call);                                            \
    FATHOM_CHECK(fathom_cuda_err_ == cudaSuccess)                                     \
        << "CUDA error " << cudaGetErrorName(fathom_cuda_err_) << ": "                \
        << cudaGetErrorString(fathom_cuda_err_);                                      \
  } while (0)

#define FATHOM_CUBLAS_CHECK(call)                                                     \
  do {                                                                                \
    cublasStatus_t fathom_cublas_status_ = (call);                                    \
    FATHOM_CHECK(fathom_cublas_status_ == CUBLAS_STATUS_SUCCESS)                      \
        << "cuBLAS error " << cublasLtGetStatusName(fathom_cublas_status_) << ": "    \
        << cublasLtGetStatusString(fathom_cublas_status_);                            \
  } while (0)

// After a kernel launch: reports bad launch configurations at the launch site.
#define FATHOM_CUDA_CHECK_LAUNCH() FATHOM_CUDA_CHECK(cudaGetLastError())
