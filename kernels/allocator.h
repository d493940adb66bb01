// Memory allocators for tensor storage.
//
// - cpu_allocator(): 64-byte aligned host memory (one AVX-512 line), so vector loads never split.
// - cuda_allocator(device): a stream-ordered caching allocator. A freed block goes back to the
//   pool of the stream it was allocated on and is reused by later allocations on that stream
//   without synchronisation: stream order guarantees earlier kernels finished with it.
//
// CachingAllocator holds the caching policy and is independent of CUDA, so the policy is tested
// on the host with a counting backend.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "kernels/device.h"

namespace fathom {

struct AllocatorStats {
  size_t current_bytes = 0;   // bytes handed out and not yet freed
  size_t peak_bytes = 0;      // max of current_bytes since the last reset_peak()
  size_t reserved_bytes = 0;  // bytes held from the backend (handed out + cached)
  int64_t backend_allocs = 0; // calls that went to the backend (cache misses)
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  // Returns memory for `bytes` (> 0) usable on `stream` (ignored on the host). Throws
  // fathom::Error when out of memory, naming the size.
  virtual void* allocate(size_t bytes, void* stream) = 0;
  // `ptr` must come from allocate() of this allocator.
  virtual void deallocate(void* ptr) = 0;
  virtual AllocatorStats stats() const = 0;
  virtual void reset_peak() = 0;
};

// The raw memory source under a CachingAllocator (cudaMalloc/cudaFree, or a test double).
class RawMemory {
 public:
  virtual ~RawMemory() = default;
  virtual void* raw_allocate(size_t bytes) = 0;  // nullptr when out of memory
  virtual void raw_free(void* ptr) = 0;
};

class CachingAllocator final : public Allocator {
 public:
  // Requests are rounded up to kRounding bytes; blocks are reused per stream, best fit, and only
  // when the block wastes at most a quarter of its size.
  static constexpr size_t kRounding = 512;

  explicit CachingAllocator(std::unique_ptr<RawMemory> raw);
  ~CachingAllocator() override;

  void* allocate(size_t bytes, void* stream) override;
  void deallocate(void* ptr) override;
  AllocatorStats stats() const override;
  void reset_peak() override;
  // Returns every cached (free) block to the backend.
  void release_cached();

 private:
  struct Block {
    size_t size;
    void* stream;
  };
  std::unique_ptr<RawMemory> raw_;
  mutable std::mutex mutex_;
  std::unordered_map<void*, Block> in_use_;
  // Free blocks per stream, ordered by size for best fit.
  std::unordered_map<void*, std::multimap<size_t, void*>> free_;
  AllocatorStats stats_;
};

Allocator& cpu_allocator();
// Throws fathom::Error when the build has no CUDA backend or the device does not exist.
Allocator& cuda_allocator(int device);

}  // namespace fathom
