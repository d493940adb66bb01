// The caching policy of the CUDA allocator, exercised on the host through a counting backend.
#include <gtest/gtest.h>

#include <cstdlib>
#include <set>

#include "kernels/allocator.h"
#include "kernels/check.h"

namespace fathom {
namespace {

class CountingMemory final : public RawMemory {
 public:
  explicit CountingMemory(size_t capacity, int* allocs, int* frees, size_t* held)
      : capacity_(capacity), allocs_(allocs), frees_(frees), held_(held) {}
  void* raw_allocate(size_t bytes) override {
    if (*held_ + bytes > capacity_) return nullptr;
    ++*allocs_;
    *held_ += bytes;
    void* p = std::malloc(bytes);
    sizes_[p] = bytes;
    return p;
  }
  void raw_free(void* ptr) override {
    ++*frees_;
    *held_ -= sizes_.at(ptr);
    sizes_.erase(ptr);
    std::free(ptr);
  }

 private:
  size_t capacity_;
  int* allocs_;
  int* frees_;
  size_t* held_;
  std::unordered_map<void*, size_t> sizes_;
};

struct Fixture {
  int allocs = 0, frees = 0;
  size_t held = 0;
  CachingAllocator alloc;
  explicit Fixture(size_t capacity = size_t{1} << 30)
      : alloc(std::make_unique<CountingMemory>(capacity, &allocs, &frees, &held)) {}
};

void* const kStreamA = reinterpret_cast<void*>(0x1);
void* const kStreamB = reinterpret_cast<void*>(0x2);

TEST(CachingAllocator, ReusesFreedBlockOnSameStream) {
  Fixture f;
  void* p = f.alloc.allocate(1000, kStreamA);
  f.alloc.deallocate(p);
  void* q = f.alloc.allocate(900, kStreamA);  // rounds to the same 1024-byte block
  EXPECT_EQ(p, q);
  EXPECT_EQ(f.allocs, 1);
  EXPECT_EQ(f.alloc.stats().backend_allocs, 1);
}

TEST(CachingAllocator, DoesNotShareBlocksAcrossStreams) {
  Fixture f;
  void* p = f.alloc.allocate(1024, kStreamA);
  f.alloc.deallocate(p);
  void* q = f.alloc.allocate(1024, kStreamB);
  EXPECT_NE(p, q);
  EXPECT_EQ(f.allocs, 2);
}

TEST(CachingAllocator, DoesNotHandOutMuchLargerBlocks) {
  Fixture f;
  void* big = f.alloc.allocate(1 << 20, kStreamA);
  f.alloc.deallocate(big);
  void* small = f.alloc.allocate(1024, kStreamA);  // would waste > 25% of the cached block
  EXPECT_NE(big, small);
  void* close = f.alloc.allocate((1 << 20) - 4096, kStreamA);  // wastes < 25%: reused
  EXPECT_EQ(big, close);
}

TEST(CachingAllocator, ReportsCurrentPeakAndReserved) {
  Fixture f;
  void* a = f.alloc.allocate(512, kStreamA);
  void* b = f.alloc.allocate(1536, kStreamA);
  EXPECT_EQ(f.alloc.stats().current_bytes, 2048u);
  f.alloc.deallocate(b);
  EXPECT_EQ(f.alloc.stats().current_bytes, 512u);
  EXPECT_EQ(f.alloc.stats().peak_bytes, 2048u);
  EXPECT_EQ(f.alloc.stats().reserved_bytes, 2048u);  // the freed block stays cached
  f.alloc.reset_peak();
  EXPECT_EQ(f.alloc.stats().peak_bytes, 512u);
  f.alloc.release_cached();
  EXPECT_EQ(f.alloc.stats().reserved_bytes, 512u);
  EXPECT_EQ(f.frees, 1);
  f.alloc.deallocate(a);
}

TEST(CachingAllocator, FreesCacheAndRetriesWhenOutOfMemory) {
  Fixture f(/*capacity=*/4096);
  void* a = f.alloc.allocate(3072, kStreamB);
  f.alloc.deallocate(a);  // cached on stream B, holding 3 KiB of the 4 KiB
  void* b = f.alloc.allocate(2048, kStreamA);
  EXPECT_NE(b, nullptr);
  EXPECT_EQ(f.frees, 1);  // the cached block was returned to make room
  f.alloc.deallocate(b);
}

TEST(CachingAllocator, OutOfMemoryNamesTheSize) {
  Fixture f(/*capacity=*/4096);
  try {
    f.alloc.allocate(8192, kStreamA);
    FAIL() << "expected an out-of-memory error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("allocating 8192 bytes"), std::string::npos) << e.what();
  }
}

TEST(CachingAllocator, RejectsForeignPointers) {
  Fixture f;
  int x = 0;
  EXPECT_THROW(f.alloc.deallocate(&x), Error);
}

}  // namespace
}  // namespace fathom
