// CUDA runtime wrappers (compiled only when the CUDA backend is built).
#include "kernels/cuda/runtime.h"

#include <mutex>
#include <string>
#include <unordered_map>

#include "kernels/allocator.h"
#include "kernels/cuda/cuda_check.h"
#if FATHOM_HAVE_CUDNN
#include <cudnn.h>
#endif

namespace fathom::cuda {
namespace {

std::string version_string(int v) {  // CUDA encodes 13000 as 13.0
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

class CudaRawMemory final : public RawMemory {
 public:
  explicit CudaRawMemory(int device) : device_(device) {}
  void* raw_allocate(size_t bytes) override {
    set_device(device_);
    void* p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      (void)cudaGetLastError();  // clear the sticky-free OOM error
      return nullptr;
    }
    return p;
  }
  void raw_free(void* ptr) override {
    set_device(device_);
    FATHOM_CUDA_CHECK(cudaFree(ptr));
  }

 private:
  int device_;
};

thread_local std::unordered_map<int, Stream> current_streams;

}  // namespace

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // e.g. cudaErrorInsufficientDriver on machines without a GPU
    return 0;
  }
  return count;
}

std::string runtime_version() {
  int v = 0;
  FATHOM_CUDA_CHECK(cudaRuntimeGetVersion(&v));
  return version_string(v);
}

std::string driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess || v == 0) return "none";
  return version_string(v);
}

std::string cublaslt_version() {
  const size_t v = cublasLtGetVersion();  // e.g. 130100
  return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." +
         std::to_string(v % 100);
}

std::string cudnn_version() {
#if FATHOM_HAVE_CUDNN
  const size_t v = cudnnGetVersion();  // e.g. 91900
  return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." +
         std::to_string(v % 100);
#else
  return "none";
#endif
}

std::string device_name(int device) {
  cudaDeviceProp prop{};
  FATHOM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

void set_device(int device) { FATHOM_CUDA_CHECK(cudaSetDevice(device)); }

Stream current_stream(int device) {
  auto it = current_streams.find(device);
  return it == current_streams.end() ? nullptr : it->second;
}

void set_current_stream(int device, Stream stream) { current_streams[device] = stream; }

void synchronize(int device) {
  set_device(device);
  FATHOM_CUDA_CHECK(cudaDeviceSynchronize());
}

Stream create_stream(int device) {
  set_device(device);
  cudaStream_t stream = nullptr;
  FATHOM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return stream;
}

void destroy_stream(Stream stream) { FATHOM_CUDA_CHECK(cudaStreamDestroy(stream)); }

void synchronize_stream(Stream stream) { FATHOM_CUDA_CHECK(cudaStreamSynchronize(stream)); }

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  const Device device = dst_device.is_cuda() ? dst_device : src_device;
  set_device(device.index);
  Stream stream = current_stream(device.index);
  FATHOM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream));
  FATHOM_CUDA_CHECK(cudaStreamSynchronize(stream));
}

std::unique_ptr<RawMemory> make_raw_memory(int device) {
  return std::make_unique<CudaRawMemory>(device);
}

}  // namespace fathom::cuda
