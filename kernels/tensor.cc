#include "kernels/tensor.h"

#include <algorithm>
#include <limits>
#include <sstream>

#include "kernels/allocator.h"
#include "kernels/cuda/runtime.h"

namespace fathom {

struct Tensor::Storage {
  void* ptr = nullptr;
  size_t bytes = 0;
  Device device;
  Allocator* allocator = nullptr;
  ~Storage() {
    if (ptr != nullptr) allocator->deallocate(ptr);
  }
};

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

std::string shape_str(absl::Span<const int64_t> shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

namespace {

// Element count of `shape`, checking sizes and that the byte count fits in int64.
int64_t checked_numel(absl::Span<const int64_t> shape, DType dtype) {
  FATHOM_CHECK(static_cast<int>(shape.size()) <= Tensor::kMaxDims)
      << "tensor shape " << shape_str(shape) << " has more than " << Tensor::kMaxDims << " dims";
  const int64_t limit = std::numeric_limits<int64_t>::max() / static_cast<int64_t>(dtype_size(dtype));
  int64_t n = 1;
  for (int64_t d : shape) {
    FATHOM_CHECK(d >= 0) << "tensor shape " << shape_str(shape) << " has a negative size";
    FATHOM_CHECK(d == 0 || n <= limit / d)
        << "tensor shape " << shape_str(shape) << " of " << dtype_name(dtype)
        << " overflows the addressable size";
    n *= d;
  }
  return n;
}

Allocator& allocator_for(Device device) {
  return device.is_cpu() ? cpu_allocator() : cuda_allocator(device.index);
}

void* stream_for(Device device) {
  return device.is_cuda() ? static_cast<void*>(cuda::current_stream(device.index)) : nullptr;
}

}  // namespace

Tensor Tensor::empty(absl::Span<const int64_t> shape, DType dtype, Device device) {
  Tensor t;
  t.numel_ = checked_numel(shape, dtype);
  t.shape_.assign(shape.begin(), shape.end());
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = std::make_shared<Storage>();
  t.storage_->device = device;
  t.storage_->bytes = t.nbytes();
  t.storage_->allocator = &allocator_for(device);
  if (t.storage_->bytes > 0) {
    t.storage_->ptr = t.storage_->allocator->allocate(t.storage_->bytes, stream_for(device));
  }
  return t;
}

Tensor Tensor::zeros(absl::Span<const int64_t> shape, DType dtype, Device device) {
  Tensor host = empty(shape, dtype);
  std::fill_n(static_cast<char*>(host.raw_data()), host.nbytes(), 0);
  return device.is_cpu() ? host : host.to(device);
}

Tensor Tensor::from_floats(absl::Span<const float> values, absl::Span<const int64_t> shape,
                           DType dtype, Device device) {
  Tensor host = empty(shape, dtype);
  FATHOM_CHECK(static_cast<int64_t>(values.size()) == host.numel())
      << "from_floats: " << values.size() << " values for shape " << shape_str(shape);
  const int64_t n = host.numel();
  switch (dtype) {
    case DType::kF32: std::copy(values.begin(), values.end(), host.data<float>()); break;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) host.data<bf16>()[i] = float_to_bf16(values[i]);
      break;
    case DType::kF8E4M3:
      for (int64_t i = 0; i < n; ++i) host.data<fp8e4m3>()[i] = float_to_fp8e4m3(values[i]);
      break;
    case DType::kF8E5M2:
      for (int64_t i = 0; i < n; ++i) host.data<fp8e5m2>()[i] = float_to_fp8e5m2(values[i]);
      break;
    case DType::kI32:
      for (int64_t i = 0; i < n; ++i) host.data<int32_t>()[i] = static_cast<int32_t>(values[i]);
      break;
    case DType::kI64:
      for (int64_t i = 0; i < n; ++i) host.data<int64_t>()[i] = static_cast<int64_t>(values[i]);
      break;
    case DType::kU8:
      for (int64_t i = 0; i < n; ++i) host.data<uint8_t>()[i] = static_cast<uint8_t>(values[i]);
      break;
  }
  return device.is_cpu() ? host : host.to(device);
}

int64_t Tensor::dim(int i) const {
  const int n = ndim();
  FATHOM_CHECK(i >= -n && i < n) << "dim " << i << " out of range for " << str();
  return shape_[i < 0 ? i + n : i];
}

std::string Tensor::str() const {
  if (!defined()) return "undefined";
  return std::string(dtype_name(dtype_)) + shape_str(shape_) + "@" + device_.str();
}

void* Tensor::raw_data() {
  FATHOM_CHECK(defined()) << "access to an undefined tensor";
  return static_cast<char*>(storage_->ptr) + offset_;
}

const void* Tensor::raw_data() const {
  FATHOM_CHECK(defined()) << "access to an undefined tensor";
  return static_cast<const char*>(storage_->ptr) + offset_;
}

void Tensor::check_dtype(DType expected) const {
  FATHOM_CHECK(dtype_ == expected) << "tensor " << str() << " accessed as " << dtype_name(expected);
}

Tensor Tensor::narrow(int64_t start, int64_t length) const {
  FATHOM_CHECK(ndim() >= 1) << "narrow of a 0-d tensor " << str();
  FATHOM_CHECK(start >= 0 && length >= 0 && start <= shape_[0] - length)
      << "narrow(" << start << ", " << length << ") out of range for " << str();
  Tensor t = *this;
  t.shape_[0] = length;
  const int64_t row = shape_[0] == 0 ? 0 : numel_ / shape_[0];
  t.numel_ = row * length;
  t.offset_ = offset_ + static_cast<size_t>(start * row) * dtype_size(dtype_);
  return t;
}

Tensor Tensor::view(absl::Span<const int64_t> shape) const {
  const int64_t n = checked_numel(shape, dtype_);
  FATHOM_CHECK(n == numel_) << "view " << shape_str(shape) << " of " << str()
                            << " changes the element count";
  Tensor t = *this;
  t.shape_.assign(shape.begin(), shape.end());
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  FATHOM_CHECK(src.dtype_ == dtype_ && src.shape_ == shape_)
      << "copy_from: " << src.str() << " into " << str();
  if (nbytes() == 0) return;
  if (device_.is_cpu() && src.device_.is_cpu()) {
    std::copy_n(static_cast<const char*>(src.raw_data()), nbytes(), static_cast<char*>(raw_data()));
  } else {
    cuda::copy_bytes(raw_data(), device_, src.raw_data(), src.device_, nbytes());
  }
}

Tensor Tensor::to(Device device) const {
  FATHOM_CHECK(defined()) << "to(" << device.str() << ") of an undefined tensor";
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

std::vector<float> Tensor::to_floats() const {
  Tensor host = device_.is_cpu() ? *this : to(Device::cpu());
  std::vector<float> out(static_cast<size_t>(numel_));
  for (int64_t i = 0; i < numel_; ++i) {
    switch (dtype_) {
      case DType::kF32: out[i] = host.data<float>()[i]; break;
      case DType::kBF16: out[i] = bf16_to_float(host.data<bf16>()[i]); break;
      case DType::kF8E4M3: out[i] = fp8e4m3_to_float(host.data<fp8e4m3>()[i]); break;
      case DType::kF8E5M2: out[i] = fp8e5m2_to_float(host.data<fp8e5m2>()[i]); break;
      case DType::kI32: out[i] = static_cast<float>(host.data<int32_t>()[i]); break;
      case DType::kI64: out[i] = static_cast<float>(host.data<int64_t>()[i]); break;
      case DType::kU8: out[i] = static_cast<float>(host.data<uint8_t>()[i]); break;
    }
  }
  return out;
}

// ---- Argument checks shared by ops ----

void check_defined(const char* op, const char* name, const Tensor& t) {
  FATHOM_CHECK(t.defined()) << op << ": " << name << " is undefined";
}

void check_shape(const char* op, const char* name, const Tensor& t,
                 absl::Span<const int64_t> shape) {
  check_defined(op, name, t);
  FATHOM_CHECK(absl::MakeConstSpan(t.shape()) == shape)
      << op << ": " << name << " must have shape " << shape_str(shape) << ", got " << t.str();
}

void check_dtype(const char* op, const char* name, const Tensor& t, DType dtype) {
  check_defined(op, name, t);
  FATHOM_CHECK(t.dtype() == dtype)
      << op << ": " << name << " must be " << dtype_name(dtype) << ", got " << t.str();
}

void check_float_dtype(const char* op, const char* name, const Tensor& t) {
  check_defined(op, name, t);
  FATHOM_CHECK(t.dtype() == DType::kF32 || t.dtype() == DType::kBF16)
      << op << ": " << name << " must be f32 or bf16, got " << t.str();
}

void check_same_device(const char* op, std::initializer_list<const Tensor*> tensors) {
  const Tensor* first = nullptr;
  for (const Tensor* t : tensors) {
    if (t == nullptr || !t->defined()) continue;
    if (first == nullptr) {
      first = t;
      continue;
    }
    FATHOM_CHECK(t->device() == first->device())
        << op << ": tensors on different devices: " << first->str() << " and " << t->str();
  }
}

}  // namespace fathom
