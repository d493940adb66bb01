// Tensor: a contiguous, row-major n-d array on one device, sharing reference-counted storage.
//
// Copies of a Tensor share storage (like a shared_ptr); clone() copies the data. Views
// (narrow along dim 0, view with a new shape) share storage too, so writing through a view writes
// the original. All tensors are contiguous: this is what every op and kernel assumes.
//
// Shape errors (negative sizes, overflow of the byte count, more than kMaxDims dims), dtype
// mismatches in data<T>() and out-of-range narrowing throw fathom::Error naming the shapes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/types/span.h"
#include "kernels/check.h"
#include "kernels/device.h"
#include "kernels/dtype.h"

namespace fathom {

class Allocator;

using Shape = absl::InlinedVector<int64_t, 4>;
std::string shape_str(absl::Span<const int64_t> shape);  // "[2, 3]"

class Tensor {
 public:
  static constexpr int kMaxDims = 8;

  Tensor() = default;  // undefined: defined() is false

  // Uninitialised storage. Throws on a bad shape or when allocation fails.
  static Tensor empty(absl::Span<const int64_t> shape, DType dtype, Device device = Device::cpu());
  static Tensor empty(std::initializer_list<int64_t> shape, DType dtype,
                      Device device = Device::cpu()) {
    return empty(absl::MakeConstSpan(shape.begin(), shape.size()), dtype, device);
  }
  static Tensor zeros(absl::Span<const int64_t> shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(std::initializer_list<int64_t> shape, DType dtype,
                      Device device = Device::cpu()) {
    return zeros(absl::MakeConstSpan(shape.begin(), shape.size()), dtype, device);
  }
  // Host values converted to `dtype` (floats round to nearest even; ints truncate), then placed
  // on `device`. values.size() must equal the shape's element count.
  static Tensor from_floats(absl::Span<const float> values, absl::Span<const int64_t> shape,
                            DType dtype = DType::kF32, Device device = Device::cpu());
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, absl::Span<const int64_t> shape,
                            Device device = Device::cpu());

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  // Size of dimension i; negative i counts from the end.
  int64_t dim(int i) const;
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool is_cuda() const { return device_.is_cuda(); }
  // "f32[2, 3]@cpu": used in every op error message.
  std::string str() const;

  void* raw_data();
  const void* raw_data() const;
  // Typed pointer; throws when T does not match dtype().
  template <typename T>
  T* data() {
    check_dtype(dtype_of<T>());
    return static_cast<T*>(raw_data());
  }
  template <typename T>
  const T* data() const {
    check_dtype(dtype_of<T>());
    return static_cast<const T*>(raw_data());
  }

  // Rows [start, start + length) of dim 0, sharing storage.
  Tensor narrow(int64_t start, int64_t length) const;
  // Same storage with another shape of the same element count.
  Tensor view(absl::Span<const int64_t> shape) const;
  Tensor view(std::initializer_list<int64_t> shape) const {
    return view(absl::MakeConstSpan(shape.begin(), shape.size()));
  }

  // Copy of the data on `device` (a copy even when the device is the same).
  Tensor to(Device device) const;
  Tensor clone() const { return to(device_); }
  // Copies src into this tensor: same shape and dtype, any devices.
  void copy_from(const Tensor& src);
  // Host copy of the values as float (float dtypes) or converted integers (int dtypes).
  std::vector<float> to_floats() const;
  template <typename T>
  std::vector<T> to_vector() const;

 private:
  struct Storage;
  void check_dtype(DType expected) const;

  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes from the start of storage_
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::kF32;
  Device device_;
};

// Throws fathom::Error "<op>: expected ..., got <tensor>" when a check fails. Shared by ops.
void check_shape(const char* op, const char* name, const Tensor& t, absl::Span<const int64_t> shape);
void check_dtype(const char* op, const char* name, const Tensor& t, DType dtype);
void check_float_dtype(const char* op, const char* name, const Tensor& t);  // f32 or bf16
void check_same_device(const char* op, std::initializer_list<const Tensor*> tensors);
void check_defined(const char* op, const char* name, const Tensor& t);

template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, absl::Span<const int64_t> shape,
                           Device device) {
  Tensor host = empty(shape, dtype_of<T>());
  FATHOM_CHECK(static_cast<int64_t>(values.size()) == host.numel())
      << "from_vector: " << values.size() << " values for shape " << shape_str(shape);
  std::copy(values.begin(), values.end(), host.data<T>());
  return device.is_cpu() ? host : host.to(device);
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  Tensor host = device_.is_cpu() ? *this : to(Device::cpu());
  const T* p = host.data<T>();
  return std::vector<T>(p, p + numel_);
}

}  // namespace fathom
