// Elementwise and row-wise kernels: cast, fill, axpy, scale, SwiGLU, sigmoid, softmax.
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "kernels/cuda/common.cuh"

namespace fathom::cuda {
namespace {

__device__ __forceinline__ float load_any_float(const void* p, ElemType type, int64_t i) {
  switch (type) {
    case ElemType::kF32: return static_cast<const float*>(p)[i];
    case ElemType::kBF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case ElemType::kF8E4M3:
      return __half2float(
          __half(__nv_cvt_fp8_to_halfraw(static_cast<const uint8_t*>(p)[i], __NV_E4M3)));
    default:  // kF8E5M2
      return __half2float(
          __half(__nv_cvt_fp8_to_halfraw(static_cast<const uint8_t*>(p)[i], __NV_E5M2)));
  }
}

__device__ __forceinline__ void store_any_float(void* p, ElemType type, int64_t i, float v) {
  switch (type) {
    case ElemType::kF32: static_cast<float*>(p)[i] = v; break;
    case ElemType::kBF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    case ElemType::kF8E4M3:
      static_cast<uint8_t*>(p)[i] = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
      break;
    default:  // kF8E5M2
      static_cast<uint8_t*>(p)[i] = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E5M2);
      break;
  }
}

__global__ void cast_float_kernel(const void* src, ElemType src_type, void* dst, ElemType dst_type,
                                  int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    store_any_float(dst, dst_type, i, load_any_float(src, src_type, i));
  }
}

__global__ void cast_int_kernel(const void* src, bool src_i64, void* dst, bool dst_i64, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t v =
        src_i64 ? static_cast<const int64_t*>(src)[i] : static_cast<const int32_t*>(src)[i];
    if (dst_i64) {
      static_cast<int64_t*>(dst)[i] = v;
    } else {
      static_cast<int32_t*>(dst)[i] = static_cast<int32_t>(v);
    }
  }
}

template <typename T>
__global__ void fill_kernel(T* data, T value, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    data[i] = value;
  }
}

__global__ void axpy_kernel(float alpha, ConstFloatPtr x, FloatPtr y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    store(y, i, load(y, i) + alpha * load(x, i));
  }
}

__global__ void scale_kernel(FloatPtr t, float alpha, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    store(t, i, load(t, i) * alpha);
  }
}

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

__global__ void swiglu_forward_kernel(ConstFloatPtr gate, ConstFloatPtr up, FloatPtr y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = load(gate, i);
    store(y, i, g * sigmoid(g) * load(up, i));
  }
}

// silu'(g) = s + g s (1 - s) with s = sigmoid(g).
__global__ void swiglu_backward_kernel(ConstFloatPtr dy, ConstFloatPtr gate, ConstFloatPtr up,
                                       FloatPtr dgate, FloatPtr dup, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float d = load(dy, i);
    const float g = load(gate, i);
    const float u = load(up, i);
    const float s = sigmoid(g);
    store(dgate, i, d * u * (s + g * s * (1.0f - s)));
    store(dup, i, d * g * s);
  }
}

__global__ void sigmoid_forward_kernel(ConstFloatPtr x, FloatPtr y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    store(y, i, sigmoid(load(x, i)));
  }
}

__global__ void sigmoid_backward_kernel(ConstFloatPtr dy, ConstFloatPtr y, FloatPtr dx, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float s = load(y, i);
    store(dx, i, load(dy, i) * s * (1.0f - s));
  }
}

// One block per row (grid-stride over rows): max, sum of exp, then the normalised values.
__global__ void softmax_forward_kernel(ConstFloatPtr x, FloatPtr y, int64_t rows, int64_t cols) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t base = r * cols;
    float m = -INFINITY;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, load(x, base + c));
    m = block_reduce(m, MaxOp(), -INFINITY);
    float s = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += expf(load(x, base + c) - m);
    s = block_reduce(s, SumOp(), 0.0f);
    const float inv = 1.0f / s;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      store(y, base + c, expf(load(x, base + c) - m) * inv);
    }
  }
}

__global__ void softmax_backward_kernel(ConstFloatPtr dy, ConstFloatPtr y, FloatPtr dx,
                                        int64_t rows, int64_t cols) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t base = r * cols;
    float dot = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      dot += load(dy, base + c) * load(y, base + c);
    }
    dot = block_reduce(dot, SumOp(), 0.0f);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      store(dx, base + c, load(y, base + c) * (load(dy, base + c) - dot));
    }
  }
}

// Threads per block for row kernels: enough to cover short rows, at most kThreads.
int row_threads(int64_t cols) {
  return static_cast<int>(
      std::min<int64_t>(kThreads, std::max<int64_t>(32, ceil_div(cols, 32) * 32)));
}

bool is_int(ElemType t) { return t == ElemType::kI32 || t == ElemType::kI64; }

}  // namespace

void launch_cast(const void* src, ElemType src_type, void* dst, ElemType dst_type, int64_t n,
                 cudaStream_t stream) {
  if (n == 0) return;
  FATHOM_CHECK(is_int(src_type) == is_int(dst_type))
      << "launch_cast: cannot convert between integer and float element types";
  if (is_int(src_type)) {
    cast_int_kernel<<<grid_for(n), kThreads, 0, stream>>>(src, src_type == ElemType::kI64, dst,
                                                          dst_type == ElemType::kI64, n);
  } else {
    cast_float_kernel<<<grid_for(n), kThreads, 0, stream>>>(src, src_type, dst, dst_type, n);
  }
  FATHOM_CUDA_CHECK_LAUNCH();
}

void launch_fill(void* data, int elem_bytes, uint64_t pattern, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  switch (elem_bytes) {
    case 1:
      FATHOM_CUDA_CHECK(
          cudaMemsetAsync(data, static_cast<int>(pattern & 0xFFu), static_cast<size_t>(n), stream));
      return;
    case 2:
      fill_kernel<<<grid_for(n), kThreads, 0, stream>>>(static_cast<uint16_t*>(data),
                                                        static_cast<uint16_t>(pattern), n);
      break;
    case 4:
      fill_kernel<<<grid_for(n), kThreads, 0, stream>>>(static_cast<uint32_t*>(data),
                                                        static_cast<uint32_t>(pattern), n);
      break;
    case 8:
      fill_kernel<<<grid_for(n), kThreads, 0, stream>>>(static_cast<uint64_t*>(data), pattern, n);
      break;
    default: FATHOM_CHECK(false) << "launch_fill: unsupported element size " << elem_bytes;
  }
  FATHOM_CUDA_CHECK_LAUNCH();
}

void launch_axpy(float alpha, ConstFloatPtr x, FloatPtr y, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  axpy_kernel<<<grid_for(n), kThreads, 0, stream>>>(alpha, x, y, n);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void launch_scale(FloatPtr t, float alpha, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  scale_kernel<<<grid_for(n), kThreads, 0, stream>>>(t, alpha, n);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void launch_swiglu_forward(ConstFloatPtr gate, ConstFloatPtr up, FloatPtr y, int64_t n,
                           cudaStream_t stream) {
  if (n == 0) return;
  swiglu_forward_kernel<<<grid_for(n), kThreads, 0, stream>>>(gate, up, y, n);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void launch_swiglu_backward(ConstFloatPtr dy, ConstFloatPtr gate, ConstFloatPtr up, FloatPtr dgate,
                            FloatPtr dup, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  swiglu_backward_kernel<<<grid_for(n), kThreads, 0, stream>>>(dy, gate, up, dgate, dup, n);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void launch_sigmoid_forward(ConstFloatPtr x, FloatPtr y, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  sigmoid_forward_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, y, n);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void launch_sigmoid_backward(ConstFloatPtr dy, ConstFloatPtr y, FloatPtr dx, int64_t n,
                             cudaStream_t stream) {
  if (n == 0) return;
  sigmoid_backward_kernel<<<grid_for(n), kThreads, 0, stream>>>(dy, y, dx, n);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void launch_softmax_forward(ConstFloatPtr x, FloatPtr y, int64_t rows, int64_t cols,
                            cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  softmax_forward_kernel<<<grid_for(rows, 1), row_threads(cols), 0, stream>>>(x, y, rows, cols);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void launch_softmax_backward(ConstFloatPtr dy, ConstFloatPtr y, FloatPtr dx, int64_t rows,
                             int64_t cols, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  softmax_backward_kernel<<<grid_for(rows, 1), row_threads(cols), 0, stream>>>(dy, y, dx, rows,
                                                                               cols);
  FATHOM_CUDA_CHECK_LAUNCH();
}

}  // namespace fathom::cuda
