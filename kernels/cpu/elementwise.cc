// CPU elementwise and row-wise ops (kernels/ops/elementwise.h). Storage types are template
// parameters; arithmetic is in f32. Loops with exp use the AVX2 helpers of vec_io.h with a
// scalar tail on the same polynomial; the others are plain loops GCC vectorises.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/check.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_io.h"
#include "kernels/cpu/vec_math.h"

namespace fathom::cpu {
namespace {

// Below this many elements a loop runs on the calling thread: waking the OpenMP team costs
// more than the work.
constexpr int64_t kParallelMin = 1 << 15;
// Flat loops are split into blocks of this many elements (a multiple of 8).
constexpr int64_t kBlock = 1 << 14;

// Calls body(begin, end) over [0, n) in blocks, in parallel when n is large.
template <typename Body>
void parallel_blocks(int64_t n, Body body) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t b = 0; b < blocks; ++b) body(b * kBlock, std::min(n, (b + 1) * kBlock));
}

// Rows of a (rows, cols) view, in parallel when the whole tensor is large.
template <typename Body>
void parallel_rows(int64_t rows, int64_t cols, Body body) {
#pragma omp parallel for schedule(static) if (rows > 1 && rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) body(r);
}

int64_t last_dim(const Tensor& t) { return t.ndim() == 0 ? 1 : t.dim(-1); }

// Calls f(T{}) with T the storage type of a float dtype (f32 or bf16).
template <typename F>
void dispatch_float(DType dtype, F f) {
  if (dtype == DType::kBF16) {
    f(bf16{});
  } else {
    f(float{});
  }
}

// ---- cast ----

template <typename S, typename D>
void cast_float(const S* src, D* dst, int64_t n) {
  parallel_blocks(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) dst[i] = from_float<D>(to_float(src[i]));
  });
}

template <typename S>
void cast_from(const S* src, Tensor& dst, int64_t n) {
  switch (dst.dtype()) {
    case DType::kF32: cast_float(src, dst.data<float>(), n); break;
    case DType::kBF16: cast_float(src, dst.data<bf16>(), n); break;
    case DType::kF8E4M3: cast_float(src, dst.data<fp8e4m3>(), n); break;
    case DType::kF8E5M2: cast_float(src, dst.data<fp8e5m2>(), n); break;
    default: FATHOM_CHECK(false) << "cast: unsupported destination " << dst.str();
  }
}

template <typename S, typename D>
void cast_int(const S* src, D* dst, int64_t n) {
  parallel_blocks(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) dst[i] = static_cast<D>(src[i]);
  });
}

// ---- fill ----

template <typename T>
void fill_typed(T* p, int64_t n, T value) {
  parallel_blocks(n, [&](int64_t b, int64_t e) { std::fill(p + b, p + e, value); });
}

// ---- swiglu ----

template <typename T>
void swiglu_forward_typed(const T* gate, const T* up, T* y, int64_t n) {
  parallel_blocks(n, [&](int64_t b, int64_t e) {
    int64_t i = b;
#if FATHOM_CPU_AVX2
    for (; i + 8 <= e; i += 8) {
      const __m256 g = load8(gate + i);
      const __m256 silu = _mm256_mul_ps(g, sigmoid256(g));
      store8(y + i, _mm256_mul_ps(silu, load8(up + i)));
    }
#endif
    for (; i < e; ++i) {
      const float g = to_float(gate[i]);
      y[i] = from_float<T>(g * sigmoid_approx(g) * to_float(up[i]));
    }
  });
}

// silu'(g) = s + g s (1 - s) with s = sigmoid(g).
template <typename T>
void swiglu_backward_typed(const T* dy, const T* gate, const T* up, T* dgate, T* dup, int64_t n) {
  parallel_blocks(n, [&](int64_t b, int64_t e) {
    int64_t i = b;
#if FATHOM_CPU_AVX2
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= e; i += 8) {
      const __m256 g = load8(gate + i);
      const __m256 d = load8(dy + i);
      const __m256 s = sigmoid256(g);
      const __m256 silu = _mm256_mul_ps(g, s);
      const __m256 dsilu = _mm256_fmadd_ps(silu, _mm256_sub_ps(one, s), s);
      store8(dgate + i, _mm256_mul_ps(_mm256_mul_ps(d, load8(up + i)), dsilu));
      store8(dup + i, _mm256_mul_ps(d, silu));
    }
#endif
    for (; i < e; ++i) {
      const float g = to_float(gate[i]);
      const float d = to_float(dy[i]);
      const float s = sigmoid_approx(g);
      const float silu = g * s;
      dgate[i] = from_float<T>(d * to_float(up[i]) * (silu * (1.0f - s) + s));
      dup[i] = from_float<T>(d * silu);
    }
  });
}

// ---- sigmoid ----

template <typename T>
void sigmoid_forward_typed(const T* x, T* y, int64_t n) {
  parallel_blocks(n, [&](int64_t b, int64_t e) {
    int64_t i = b;
#if FATHOM_CPU_AVX2
    for (; i + 8 <= e; i += 8) store8(y + i, sigmoid256(load8(x + i)));
#endif
    for (; i < e; ++i) y[i] = from_float<T>(sigmoid_approx(to_float(x[i])));
  });
}

template <typename T>
void sigmoid_backward_typed(const T* dy, const T* y, T* dx, int64_t n) {
  parallel_blocks(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float s = to_float(y[i]);
      dx[i] = from_float<T>(to_float(dy[i]) * s * (1.0f - s));
    }
  });
}

// ---- softmax ----

template <typename T>
void softmax_forward_typed(const T* x, T* y, int64_t rows, int64_t cols) {
#pragma omp parallel if (rows > 1 && rows * cols >= kParallelMin)
  {
    std::vector<float> buf(static_cast<size_t>(cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * cols;
      T* yr = y + r * cols;
      for (int64_t j = 0; j < cols; ++j) buf[j] = to_float(xr[j]);
      const float m = row_max(buf.data(), cols);
      const float inv = 1.0f / exp_inplace(buf.data(), cols, m, 1.0f);
      for (int64_t j = 0; j < cols; ++j) yr[j] = from_float<T>(buf[j] * inv);
    }
  }
}

template <typename T>
void softmax_backward_typed(const T* dy, const T* y, T* dx, int64_t rows, int64_t cols) {
  parallel_rows(rows, cols, [&](int64_t r) {
    const T* dyr = dy + r * cols;
    const T* yr = y + r * cols;
    T* dxr = dx + r * cols;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < cols; ++j) dot += to_float(dyr[j]) * to_float(yr[j]);
    for (int64_t j = 0; j < cols; ++j) {
      dxr[j] = from_float<T>(to_float(yr[j]) * (to_float(dyr[j]) - dot));
    }
  });
}

}  // namespace

void cast(const Tensor& src, Tensor& dst) {
  const int64_t n = src.numel();
  if (src.dtype() == dst.dtype()) {
    if (n > 0) std::memcpy(dst.raw_data(), src.raw_data(), src.nbytes());
    return;
  }
  switch (src.dtype()) {
    case DType::kF32: cast_from(src.data<float>(), dst, n); return;
    case DType::kBF16: cast_from(src.data<bf16>(), dst, n); return;
    case DType::kF8E4M3: cast_from(src.data<fp8e4m3>(), dst, n); return;
    case DType::kF8E5M2: cast_from(src.data<fp8e5m2>(), dst, n); return;
    case DType::kI32: cast_int(src.data<int32_t>(), dst.data<int64_t>(), n); return;
    case DType::kI64: cast_int(src.data<int64_t>(), dst.data<int32_t>(), n); return;
    default: FATHOM_CHECK(false) << "cast: unsupported " << src.str() << " -> " << dst.str();
  }
}

void fill(Tensor& t, float value) {
  const int64_t n = t.numel();
  switch (t.dtype()) {
    case DType::kF32: fill_typed(t.data<float>(), n, value); break;
    case DType::kBF16: fill_typed(t.data<bf16>(), n, from_float<bf16>(value)); break;
    case DType::kF8E4M3: fill_typed(t.data<fp8e4m3>(), n, from_float<fp8e4m3>(value)); break;
    case DType::kF8E5M2: fill_typed(t.data<fp8e5m2>(), n, from_float<fp8e5m2>(value)); break;
    case DType::kI32: fill_typed(t.data<int32_t>(), n, static_cast<int32_t>(value)); break;
    case DType::kI64: fill_typed(t.data<int64_t>(), n, static_cast<int64_t>(value)); break;
    case DType::kU8: fill_typed(t.data<uint8_t>(), n, static_cast<uint8_t>(value)); break;
  }
}

void axpy(float alpha, const Tensor& x, Tensor& y) {
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    parallel_blocks(x.numel(), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        yp[i] = from_float<T>(to_float(yp[i]) + alpha * to_float(xp[i]));
      }
    });
  });
}

void scale(Tensor& t, float alpha) {
  dispatch_float(t.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* p = t.data<T>();
    parallel_blocks(t.numel(), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) p[i] = from_float<T>(alpha * to_float(p[i]));
    });
  });
}

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& y) {
  dispatch_float(gate.dtype(), [&](auto tag) {
    using T = decltype(tag);
    swiglu_forward_typed(gate.data<T>(), up.data<T>(), y.data<T>(), gate.numel());
  });
}

void swiglu_backward(const Tensor& dy, const Tensor& gate, const Tensor& up, Tensor& dgate,
                     Tensor& dup) {
  dispatch_float(gate.dtype(), [&](auto tag) {
    using T = decltype(tag);
    swiglu_backward_typed(dy.data<T>(), gate.data<T>(), up.data<T>(), dgate.data<T>(),
                          dup.data<T>(), gate.numel());
  });
}

void sigmoid_forward(const Tensor& x, Tensor& y) {
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    sigmoid_forward_typed(x.data<T>(), y.data<T>(), x.numel());
  });
}

void sigmoid_backward(const Tensor& dy, const Tensor& y, Tensor& dx) {
  dispatch_float(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    sigmoid_backward_typed(dy.data<T>(), y.data<T>(), dx.data<T>(), y.numel());
  });
}

void softmax_forward(const Tensor& x, Tensor& y) {
  const int64_t cols = last_dim(x);
  if (x.numel() == 0 || cols == 0) return;
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    softmax_forward_typed(x.data<T>(), y.data<T>(), x.numel() / cols, cols);
  });
}

void softmax_backward(const Tensor& dy, const Tensor& y, Tensor& dx) {
  const int64_t cols = last_dim(y);
  if (y.numel() == 0 || cols == 0) return;
  dispatch_float(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    softmax_backward_typed(dy.data<T>(), y.data<T>(), dx.data<T>(), y.numel() / cols, cols);
  });
}

}  // namespace fathom::cpu
