// f32 staging for the CPU backend: BLAS and the fused kernels compute in f32, so bf16 operands are
// converted into f32 scratch tensors first and bf16 results are converted back at the end.
// Scratch is a Tensor, so it is counted by cpu_allocator() stats like any other allocation.
// The conversions are OpenMP-parallel for large tensors (inside another parallel region they run
// on the calling thread, since nested parallelism is off).
// Not for use outside kernels/cpu/.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"
#include "kernels/tensor.h"

namespace fathom::cpu {

// n values of src converted to f32 at dst.
inline void convert_to_f32(const bf16* src, float* dst, int64_t n) {
#pragma omp parallel for schedule(static) if (n > (1 << 15))
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(src[i]);
}

inline void convert_from_f32(const float* src, bf16* dst, int64_t n) {
#pragma omp parallel for schedule(static) if (n > (1 << 15))
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bf16(src[i]);
}

// t itself when it is f32, else an f32 copy (f32 or bf16 input).
inline Tensor as_f32(const Tensor& t) {
  if (t.dtype() == DType::kF32) return t;
  Tensor out = Tensor::empty(t.shape(), DType::kF32);
  convert_to_f32(t.data<bf16>(), out.data<float>(), t.numel());
  return out;
}

// An f32 tensor to compute t's result into: t itself when it is f32, else new scratch holding a
// copy of t's values when `load` is set (for accumulation) and uninitialised otherwise.
inline Tensor f32_output(Tensor& t, bool load) {
  if (t.dtype() == DType::kF32) return t;
  if (load) return as_f32(t);
  return Tensor::empty(t.shape(), DType::kF32);
}

// Writes an f32 result computed by f32_output back into t (a no-op when t is f32).
inline void store_f32_output(const Tensor& result, Tensor& t) {
  if (t.dtype() == DType::kF32) return;
  convert_from_f32(result.data<float>(), t.data<bf16>(), t.numel());
}

}  // namespace fathom::cpu
