// The CUDA runtime of a build without the CUDA backend: no devices, and every operation that
// needs one says so.
#include "kernels/allocator.h"
#include "kernels/check.h"
#include "kernels/cuda/runtime.h"

namespace fathom::cuda {
namespace {
[[noreturn]] void no_cuda(const char* what) {
  FATHOM_CHECK(false) << what << ": fathom was built without CUDA (configure with -DFATHOM_CUDA=ON)";
}
}  // namespace

int device_count() { return 0; }
std::string runtime_version() { return "none"; }
std::string driver_version() { return "none"; }
std::string cublaslt_version() { return "none"; }
std::string cudnn_version() { return "none"; }
std::string device_name(int) { no_cuda("device_name"); }
void set_device(int) { no_cuda("set_device"); }
Stream current_stream(int) { return nullptr; }
void set_current_stream(int, Stream) { no_cuda("set_current_stream"); }
void synchronize(int) { no_cuda("synchronize"); }
Stream create_stream(int) { no_cuda("create_stream"); }
void destroy_stream(Stream) { no_cuda("destroy_stream"); }
void synchronize_stream(Stream) { no_cuda("synchronize_stream"); }
void copy_bytes(void*, Device, const void*, Device, size_t) { no_cuda("copy to or from a GPU"); }
std::unique_ptr<RawMemory> make_raw_memory(int) { no_cuda("device memory"); }

}  // namespace fathom::cuda
