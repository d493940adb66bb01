#include "kernels/allocator.h"

#include <cstdlib>

#include "kernels/check.h"
#include "kernels/cuda/runtime.h"

namespace fathom {
namespace {

constexpr size_t kCpuAlignment = 64;

class CpuAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes, void* /*stream*/) override {
    const size_t rounded = (bytes + kCpuAlignment - 1) / kCpuAlignment * kCpuAlignment;
    void* p = std::aligned_alloc(kCpuAlignment, rounded);
    FATHOM_CHECK(p != nullptr) << "host out of memory allocating " << bytes << " bytes";
    std::lock_guard<std::mutex> lock(mutex_);
    sizes_[p] = bytes;
    stats_.current_bytes += bytes;
    stats_.reserved_bytes += bytes;
    stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.current_bytes);
    ++stats_.backend_allocs;
    return p;
  }
  void deallocate(void* ptr) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = sizes_.find(ptr);
      FATHOM_CHECK(it != sizes_.end()) << "free of a pointer the CPU allocator did not allocate";
      stats_.current_bytes -= it->second;
      stats_.reserved_bytes -= it->second;
      sizes_.erase(it);
    }
    std::free(ptr);
  }
  AllocatorStats stats() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }
  void reset_peak() override {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.peak_bytes = stats_.current_bytes;
  }

 private:
  mutable std::mutex mutex_;
  std::unordered_map<void*, size_t> sizes_;
  AllocatorStats stats_;
};

}  // namespace

CachingAllocator::CachingAllocator(std::unique_ptr<RawMemory> raw) : raw_(std::move(raw)) {}

CachingAllocator::~CachingAllocator() {
  release_cached();
  // Blocks still in use belong to tensors that outlive the allocator (static destruction
  // order); they are reclaimed with the process.
}

void* CachingAllocator::allocate(size_t bytes, void* stream) {
  FATHOM_CHECK(bytes > 0) << "zero-byte device allocation";
  const size_t size = (bytes + kRounding - 1) / kRounding * kRounding;
  std::lock_guard<std::mutex> lock(mutex_);
  void* ptr = nullptr;
  size_t block_size = size;
  auto& pool = free_[stream];
  auto it = pool.lower_bound(size);
  if (it != pool.end() && it->first - size <= it->first / 4) {
    block_size = it->first;
    ptr = it->second;
    pool.erase(it);
  } else {
    ptr = raw_->raw_allocate(size);
    if (ptr == nullptr) {
      // Out of memory: return every cached block of every stream, then try once more.
      for (auto& [s, blocks] : free_) {
        for (auto& [sz, p] : blocks) {
          raw_->raw_free(p);
          stats_.reserved_bytes -= sz;
        }
        blocks.clear();
      }
      ptr = raw_->raw_allocate(size);
    }
    FATHOM_CHECK(ptr != nullptr) << "device out of memory allocating " << bytes << " bytes ("
                                 << stats_.current_bytes << " bytes in use)";
    stats_.reserved_bytes += size;
    ++stats_.backend_allocs;
  }
  in_use_[ptr] = Block{block_size, stream};
  stats_.current_bytes += block_size;
  stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.current_bytes);
  return ptr;
}

void CachingAllocator::deallocate(void* ptr) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = in_use_.find(ptr);
  FATHOM_CHECK(it != in_use_.end()) << "free of a pointer the caching allocator did not allocate";
  stats_.current_bytes -= it->second.size;
  free_[it->second.stream].emplace(it->second.size, ptr);
  in_use_.erase(it);
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_bytes = stats_.current_bytes;
}

void CachingAllocator::release_cached() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& [stream, blocks] : free_) {
    for (auto& [size, ptr] : blocks) {
      raw_->raw_free(ptr);
      stats_.reserved_bytes -= size;
    }
  }
  free_.clear();
}

Allocator& cpu_allocator() {
  static CpuAllocator* allocator = new CpuAllocator();  // never destroyed: outlives all tensors
  return *allocator;
}

Allocator& cuda_allocator(int device) {
  constexpr int kMaxDevices = 64;
  static std::mutex mutex;
  static CachingAllocator* allocators[kMaxDevices] = {};
  const int count = cuda::device_count();
  FATHOM_CHECK(device >= 0 && device < count)
      << "CUDA device " << device << " requested but " << count << " are usable"
      << (cuda_built() ? "" : " (built without CUDA)");
  std::lock_guard<std::mutex> lock(mutex);
  if (allocators[device] == nullptr) {
    allocators[device] = new CachingAllocator(cuda::make_raw_memory(device));
  }
  return *allocators[device];
}

}  // namespace fathom
