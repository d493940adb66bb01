#include "kernels/fp8.h"

#include <string>

#include "kernels/check.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"

namespace fathom {
namespace {

const char* block_name(ScaleBlock block) {
  return block == ScaleBlock::k1x128 ? "1x128" : "128x128";
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Checks q.data / q.scales against each other (dtype, scale shape, device).
void check_fp8_tensor(const char* op, const std::string& name, const Fp8Tensor& q) {
  const std::string data_name = name + ".data";
  const std::string scales_name = name + ".scales";
  check_dtype(op, data_name.c_str(), q.data, DType::kF8E4M3);
  check_dtype(op, scales_name.c_str(), q.scales, DType::kF32);
  const int min_dims = q.block == ScaleBlock::k1x128 ? 1 : 2;
  FATHOM_CHECK(q.data.ndim() >= min_dims)
      << op << ": " << block_name(q.block) << " blocks need " << data_name
      << " with >= " << min_dims << " dims, got " << q.data.str();
  const Shape want = fp8_scale_shape(q.data.shape(), q.block);
  FATHOM_CHECK(q.scales.shape() == want)
      << op << ": " << scales_name << " for " << q.data.str() << " with " << block_name(q.block)
      << " blocks must have shape " << shape_str(want) << ", got " << q.scales.str();
  check_same_device(op, {&q.data, &q.scales});
}

}  // namespace

Shape fp8_scale_shape(absl::Span<const int64_t> shape, ScaleBlock block) {
  if (block == ScaleBlock::k1x128) {
    FATHOM_CHECK(!shape.empty()) << "fp8_scale_shape: 1x128 blocks need >= 1 dim, got "
                                 << shape_str(shape);
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
    return Shape{rows, ceil_div(shape.back(), kFp8BlockSize)};
  }
  FATHOM_CHECK(shape.size() >= 2) << "fp8_scale_shape: 128x128 blocks need >= 2 dims, got "
                                  << shape_str(shape);
  Shape out(shape.begin(), shape.end() - 2);
  out.push_back(ceil_div(shape[shape.size() - 2], kFp8BlockSize));
  out.push_back(ceil_div(shape.back(), kFp8BlockSize));
  return out;
}

Fp8Tensor quantize_fp8(const Tensor& x, ScaleBlock block, Fp8Options options) {
  check_float_dtype("quantize_fp8", "x", x);
  FATHOM_CHECK(x.ndim() >= (block == ScaleBlock::k1x128 ? 1 : 2))
      << "quantize_fp8: " << block_name(block)
      << " blocks need x with >= " << (block == ScaleBlock::k1x128 ? 1 : 2) << " dims, got "
      << x.str();
  Fp8Tensor out;
  out.block = block;
  out.data = Tensor::empty(x.shape(), DType::kF8E4M3, x.device());
  out.scales = Tensor::empty(fp8_scale_shape(x.shape(), block), DType::kF32, x.device());
  quantize_fp8_into(x, out, options);
  return out;
}

void quantize_fp8_into(const Tensor& x, Fp8Tensor& out, Fp8Options options) {
  constexpr const char* kOp = "quantize_fp8_into";
  check_float_dtype(kOp, "x", x);
  FATHOM_CHECK(x.ndim() >= (out.block == ScaleBlock::k1x128 ? 1 : 2))
      << kOp << ": " << block_name(out.block)
      << " blocks need x with >= " << (out.block == ScaleBlock::k1x128 ? 1 : 2) << " dims, got "
      << x.str();
  check_shape(kOp, "out.data", out.data, x.shape());
  check_fp8_tensor(kOp, "out", out);
  check_same_device(kOp, {&x, &out.data, &out.scales});
  if (x.is_cuda()) {
    cuda::quantize_fp8_into(x, out, options);
  } else {
    cpu::quantize_fp8_into(x, out, options);
  }
}

void dequantize_fp8(const Fp8Tensor& q, Tensor& out) {
  constexpr const char* kOp = "dequantize_fp8";
  check_fp8_tensor(kOp, "q", q);
  check_float_dtype(kOp, "out", out);
  check_shape(kOp, "out", out, q.data.shape());
  check_same_device(kOp, {&q.data, &q.scales, &out});
  if (out.is_cuda()) {
    cuda::dequantize_fp8(q, out);
  } else {
    cpu::dequantize_fp8(q, out);
  }
}

}  // namespace fathom
