// The CUDA runtime as the rest of kernels/ sees it: device queries, memory, streams, copies.
//
// No CUDA header is included here, so host code compiles without the toolkit. Builds without
// the CUDA backend link no_cuda_runtime.cc, whose functions report "built without CUDA".
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "kernels/device.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace fathom {
class RawMemory;
}

namespace fathom::cuda {

using Stream = CUstream_st*;

// Devices usable now; 0 without a driver or GPU (never throws).
int device_count();
// Versions found at run time, e.g. "13.0"; "none" when the backend is not built.
std::string runtime_version();
std::string driver_version();  // "none" without a driver
std::string cublaslt_version();
std::string cudnn_version();  // "none" when built without cuDNN
std::string device_name(int device);

void set_device(int device);
// The stream that ops on `device` use on the calling thread (default: the legacy stream).
Stream current_stream(int device);
void set_current_stream(int device, Stream stream);
void synchronize(int device);
// A stream on `device` that does not synchronise with the legacy default stream, so work on it
// runs beside work on others (e.g. the two halves of an overlapped forward+backward). The
// caller owns it: destroy_stream() when done.
Stream create_stream(int device);
void destroy_stream(Stream stream);
// Blocks until everything queued on `stream` has completed.
void synchronize_stream(Stream stream);

// Copies `bytes` between any two of host and device memory, ordered on the current stream of
// the device involved; returns after the copy completes.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);

// cudaMalloc / cudaFree on `device`, for the caching allocator.
std::unique_ptr<RawMemory> make_raw_memory(int device);

}  // namespace fathom::cuda
