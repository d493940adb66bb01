#include "kernels/tensor.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <limits>

#include "kernels/allocator.h"
#include "tests/kernels/test_util.h"

namespace fathom {
namespace {

using testing::error_of;

using ::testing::HasSubstr;

TEST(Tensor, EmptyHasShapeDtypeDevice) {
  Tensor t = Tensor::empty({2, 3, 4}, DType::kBF16);
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.ndim(), 3);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.nbytes(), 48u);
  EXPECT_EQ(t.dim(-1), 4);
  EXPECT_EQ(t.dtype(), DType::kBF16);
  EXPECT_TRUE(t.device().is_cpu());
  EXPECT_EQ(t.str(), "bf16[2, 3, 4]@cpu");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % 64, 0u);  // aligned for AVX-512
}

TEST(Tensor, ZeroSizedTensorsAreValid) {
  Tensor t = Tensor::zeros({0, 5}, DType::kF32);
  EXPECT_EQ(t.numel(), 0);
  Tensor u = Tensor::zeros({0, 5}, DType::kF32);
  u.copy_from(t);
  EXPECT_TRUE(t.to_floats().empty());
}

TEST(Tensor, BadShapesAreErrors) {
  EXPECT_THAT(error_of([] { Tensor::empty({2, -1}, DType::kF32); }),
              HasSubstr("[2, -1] has a negative size"));
  const int64_t big = std::numeric_limits<int64_t>::max() / 2;
  EXPECT_THAT(error_of([&] { Tensor::empty({big, 4}, DType::kF32); }), HasSubstr("overflows"));
  EXPECT_THAT(error_of([] { Tensor::empty({1, 1, 1, 1, 1, 1, 1, 1, 1}, DType::kF32); }),
              HasSubstr("more than 8 dims"));
}

TEST(Tensor, TypedAccessChecksDtype) {
  Tensor t = Tensor::zeros({4}, DType::kI32);
  EXPECT_NO_THROW(t.data<int32_t>());
  EXPECT_THAT(error_of([&] { t.data<float>(); }), HasSubstr("i32[4]@cpu accessed as f32"));
}

TEST(Tensor, FromFloatsConvertsPerDtype) {
  const std::vector<float> v = {1.0f, 1.00390625f, 500.0f, -2.5f};
  EXPECT_EQ(Tensor::from_floats(v, {4}, DType::kF32).to_floats(), v);
  const auto b = Tensor::from_floats(v, {4}, DType::kBF16).to_floats();
  EXPECT_EQ(b[1], 1.0f);  // tie rounds to even
  const auto e = Tensor::from_floats(v, {4}, DType::kF8E4M3).to_floats();
  EXPECT_EQ(e[2], 448.0f);  // saturates
  EXPECT_EQ(Tensor::from_floats(v, {4}, DType::kI32).to_vector<int32_t>()[3], -2);
  EXPECT_THAT(error_of([&] { Tensor::from_floats(v, {5}, DType::kF32); }),
              HasSubstr("4 values for shape [5]"));
}

TEST(Tensor, CopiesShareStorageCloneDoesNot) {
  Tensor a = Tensor::from_floats({1, 2, 3, 4}, {2, 2});
  Tensor alias = a;
  Tensor copy = a.clone();
  a.data<float>()[0] = 9;
  EXPECT_EQ(alias.to_floats()[0], 9);
  EXPECT_EQ(copy.to_floats()[0], 1);
}

TEST(Tensor, NarrowSharesStorageAlongFirstDim) {
  Tensor a = Tensor::from_floats({0, 1, 2, 3, 4, 5, 6, 7, 8}, {3, 3});
  Tensor rows = a.narrow(1, 2);
  EXPECT_EQ(rows.shape(), Shape({2, 3}));
  EXPECT_EQ(rows.to_floats(), std::vector<float>({3, 4, 5, 6, 7, 8}));
  rows.data<float>()[0] = -1;
  EXPECT_EQ(a.to_floats()[3], -1);
  Tensor nested = rows.narrow(1, 1);
  EXPECT_EQ(nested.to_floats(), std::vector<float>({6, 7, 8}));
  EXPECT_THAT(error_of([&] { a.narrow(2, 2); }), HasSubstr("narrow(2, 2) out of range for f32[3, 3]"));
  EXPECT_THAT(error_of([&] { a.narrow(-1, 1); }), HasSubstr("out of range"));
  EXPECT_EQ(a.narrow(3, 0).numel(), 0);
}

TEST(Tensor, ViewKeepsElementCount) {
  Tensor a = Tensor::from_floats({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor v = a.view({3, 2});
  EXPECT_EQ(v.dim(0), 3);
  EXPECT_EQ(v.to_floats(), a.to_floats());
  EXPECT_THAT(error_of([&] { a.view({4, 2}); }), HasSubstr("changes the element count"));
}

TEST(Tensor, CopyFromChecksShapeAndDtype) {
  Tensor a = Tensor::zeros({2, 3}, DType::kF32);
  Tensor b = Tensor::zeros({3, 2}, DType::kF32);
  Tensor c = Tensor::zeros({2, 3}, DType::kBF16);
  EXPECT_THAT(error_of([&] { a.copy_from(b); }), HasSubstr("f32[3, 2]@cpu into f32[2, 3]@cpu"));
  EXPECT_THAT(error_of([&] { a.copy_from(c); }), HasSubstr("bf16[2, 3]@cpu"));
}

TEST(Tensor, UndefinedTensorAccessIsAnError) {
  Tensor t;
  EXPECT_FALSE(t.defined());
  EXPECT_EQ(t.str(), "undefined");
  EXPECT_THAT(error_of([&] { t.raw_data(); }), HasSubstr("undefined"));
}

TEST(Tensor, CudaTensorWithoutGpuIsAClearError) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present";
  EXPECT_THAT(error_of([] { Tensor::empty({2}, DType::kF32, Device::cuda(0)); }),
              HasSubstr("CUDA device 0 requested but 0 are usable"));
}

TEST(Tensor, HostDeviceRoundTrip) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no usable CUDA device";
  Tensor a = Tensor::from_floats({1, 2, 3, 4, 5, 6}, {3, 2}, DType::kBF16);
  Tensor d = a.to(Device::cuda(0));
  EXPECT_TRUE(d.is_cuda());
  Tensor rows = d.narrow(1, 2);
  EXPECT_EQ(rows.to_floats(), std::vector<float>({3, 4, 5, 6}));
  Tensor d2 = Tensor::zeros({3, 2}, DType::kBF16, Device::cuda(0));
  d2.copy_from(d);  // device to device
  EXPECT_EQ(d2.to_floats(), a.to_floats());
}

TEST(CpuAllocator, TracksCurrentAndPeakBytes) {
  Allocator& alloc = cpu_allocator();
  const AllocatorStats before = alloc.stats();
  alloc.reset_peak();
  {
    Tensor t = Tensor::empty({1000}, DType::kF32);
    EXPECT_EQ(alloc.stats().current_bytes, before.current_bytes + 4000);
  }
  EXPECT_EQ(alloc.stats().current_bytes, before.current_bytes);
  EXPECT_GE(alloc.stats().peak_bytes, before.current_bytes + 4000);
}

}  // namespace
}  // namespace fathom
