// CPU indexing ops (kernels/ops/index.h). The accumulating ops (embedding_backward,
// scatter_add_rows) group the source rows by destination with a counting sort, then run the
// destinations in parallel: each destination row is owned by one thread and receives its
// contributions in increasing source order, so results are deterministic and race-free.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "kernels/cpu/ops.h"

namespace fathom::cpu {
namespace {

constexpr int64_t kParallelMin = 1 << 15;

// Source rows grouped by destination: sources of group g are order[begin[g] .. begin[g + 1]),
// increasing, all with destination dest[g]. A counting sort over the `bound` destinations, which
// keeps sources in increasing order within a group.
struct Groups {
  std::vector<int32_t> order;
  std::vector<int32_t> dest;
  std::vector<int64_t> begin;
};

Groups group_by_destination(const int32_t* index, int64_t n, int64_t bound) {
  std::vector<int64_t> start(static_cast<size_t>(bound) + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++start[index[i] + 1];
  for (int64_t r = 0; r < bound; ++r) start[r + 1] += start[r];
  Groups g;
  g.order.resize(static_cast<size_t>(n));
  std::vector<int64_t> cursor(start.begin(), start.end() - 1);
  for (int64_t i = 0; i < n; ++i) g.order[cursor[index[i]]++] = static_cast<int32_t>(i);
  for (int64_t r = 0; r < bound; ++r) {
    if (start[r + 1] > start[r]) {
      g.dest.push_back(static_cast<int32_t>(r));
      g.begin.push_back(start[r]);
    }
  }
  g.begin.push_back(n);
  return g;
}

template <typename F>
void dispatch_float(DType dtype, F f) {
  if (dtype == DType::kBF16) {
    f(bf16{});
  } else {
    f(float{});
  }
}

// out[dest] (+=) sum over its sources i, in increasing i, of scale[i] * x[i]; the sum is formed
// in f32 and added to out once, so a bf16 out is rounded once per call.
template <typename X, typename O>
void scatter_add_typed(const X* x, const int32_t* index, const float* scale, O* out, int64_t n,
                       int64_t rows, int64_t d) {
  const Groups g = group_by_destination(index, n, rows);
  const int64_t groups = static_cast<int64_t>(g.dest.size());
#pragma omp parallel if (groups > 1 && n * d >= kParallelMin)
  {
    std::vector<float> acc(static_cast<size_t>(d));
#pragma omp for schedule(dynamic, 16)
    for (int64_t k = 0; k < groups; ++k) {
      O* o = out + static_cast<int64_t>(g.dest[k]) * d;
      for (int64_t j = 0; j < d; ++j) acc[j] = to_float(o[j]);
      for (int64_t p = g.begin[k]; p < g.begin[k + 1]; ++p) {
        const int64_t i = g.order[p];
        const X* xi = x + i * d;
        const float s = scale != nullptr ? scale[i] : 1.0f;
        for (int64_t j = 0; j < d; ++j) acc[j] += s * to_float(xi[j]);
      }
      for (int64_t j = 0; j < d; ++j) o[j] = from_float<O>(acc[j]);
    }
  }
}

template <typename T>
void gather_typed(const T* x, const int32_t* index, const float* scale, T* out, int64_t n,
                  int64_t d) {
#pragma omp parallel for schedule(static) if (n > 1 && n * d >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const T* src = x + static_cast<int64_t>(index[i]) * d;
    T* dst = out + i * d;
    if (scale == nullptr) {
      std::memcpy(dst, src, static_cast<size_t>(d) * sizeof(T));
    } else {
      const float s = scale[i];
      for (int64_t j = 0; j < d; ++j) dst[j] = from_float<T>(s * to_float(src[j]));
    }
  }
}

template <typename T>
void row_dot_typed(const T* a, const int32_t* index, const T* b, float* out, int64_t n, int64_t d) {
#pragma omp parallel for schedule(static) if (n > 1 && n * d >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const T* ar = a + static_cast<int64_t>(index[i]) * d;
    const T* br = b + i * d;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < d; ++j) dot += to_float(ar[j]) * to_float(br[j]);
    out[i] = dot;
  }
}

// x[a] ranks before x[b]: larger first, NaN above everything, ties to the lower index.
inline bool ranks_before(const float* x, int32_t a, int32_t b) {
  const float va = x[a];
  const float vb = x[b];
  const bool na = std::isnan(va);
  const bool nb = std::isnan(vb);
  if (na != nb) return na;
  if (!na && va != vb) return va > vb;
  return a < b;
}

}  // namespace

void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) {
  const int64_t d = table.dim(1);
  dispatch_float(table.dtype(), [&](auto tag) {
    using T = decltype(tag);
    gather_typed(table.data<T>(), ids.data<int32_t>(), nullptr, out.data<T>(), ids.numel(), d);
  });
}

void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  const int64_t d = dtable.dim(1);
  if (ids.numel() == 0 || d == 0) return;
  dispatch_float(dout.dtype(), [&](auto tag) {
    using T = decltype(tag);
    scatter_add_typed(dout.data<T>(), ids.data<int32_t>(), nullptr, dtable.data<float>(),
                      ids.numel(), dtable.dim(0), d);
  });
}

void topk(const Tensor& x, int64_t k, Tensor& values, Tensor& indices) {
  const int64_t rows = x.dim(0);
  const int64_t e = x.dim(1);
  const float* xp = x.data<float>();
  float* vp = values.data<float>();
  int32_t* ip = indices.data<int32_t>();
#pragma omp parallel if (rows > 1 && rows * e >= kParallelMin)
  {
    std::vector<int32_t> idx(static_cast<size_t>(e));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = xp + r * e;
      std::iota(idx.begin(), idx.end(), 0);
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                        [xr](int32_t a, int32_t b) { return ranks_before(xr, a, b); });
      for (int64_t j = 0; j < k; ++j) {
        vp[r * k + j] = xr[idx[j]];
        ip[r * k + j] = idx[j];
      }
    }
  }
}

void gather_rows(const Tensor& x, const Tensor& index, const Tensor& scale, Tensor& out) {
  const int64_t d = x.dim(1);
  const float* s = scale.defined() ? scale.data<float>() : nullptr;
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    gather_typed(x.data<T>(), index.data<int32_t>(), s, out.data<T>(), index.numel(), d);
  });
}

void scatter_add_rows(const Tensor& x, const Tensor& index, const Tensor& scale, Tensor& out) {
  const int64_t d = x.dim(1);
  if (index.numel() == 0 || d == 0) return;
  const float* s = scale.defined() ? scale.data<float>() : nullptr;
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    scatter_add_typed(x.data<T>(), index.data<int32_t>(), s, out.data<T>(), index.numel(),
                      out.dim(0), d);
  });
}

void gathered_row_dot(const Tensor& a, const Tensor& index, const Tensor& b, Tensor& out) {
  const int64_t d = a.dim(1);
  dispatch_float(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    row_dot_typed(a.data<T>(), index.data<int32_t>(), b.data<T>(), out.data<float>(), index.numel(),
                  d);
  });
}

namespace {

// Blocks of 32 x 32 keep both the reads and the writes within a few cache lines.
template <typename T>
void transpose_typed(const T* x, T* y, int64_t batch, int64_t m, int64_t n) {
  constexpr int64_t kBlock = 32;
  const int64_t row_blocks = (m + kBlock - 1) / kBlock;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t rb = 0; rb < row_blocks; ++rb) {
      const T* xb = x + b * m * n;
      T* yb = y + b * m * n;
      const int64_t r_end = std::min(m, (rb + 1) * kBlock);
      for (int64_t c0 = 0; c0 < n; c0 += kBlock) {
        const int64_t c_end = std::min(n, c0 + kBlock);
        for (int64_t r = rb * kBlock; r < r_end; ++r) {
          for (int64_t c = c0; c < c_end; ++c) yb[c * m + r] = xb[r * n + c];
        }
      }
    }
  }
}

}  // namespace

void transpose(const Tensor& x, Tensor& y) {
  const int64_t m = x.dim(-2);
  const int64_t n = x.dim(-1);
  const int64_t batch = m * n == 0 ? 0 : x.numel() / (m * n);
  switch (dtype_size(x.dtype())) {
    case 1:
      transpose_typed(static_cast<const uint8_t*>(x.raw_data()),
                      static_cast<uint8_t*>(y.raw_data()), batch, m, n);
      break;
    case 2:
      transpose_typed(static_cast<const uint16_t*>(x.raw_data()),
                      static_cast<uint16_t*>(y.raw_data()), batch, m, n);
      break;
    default:
      transpose_typed(static_cast<const uint32_t*>(x.raw_data()),
                      static_cast<uint32_t*>(y.raw_data()), batch, m, n);
      break;
  }
}

void copy_columns(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col,
                  int64_t cols) {
  const int64_t rows = src.dim(0);
  const size_t elem = dtype_size(src.dtype());
  const auto* s = static_cast<const char*>(src.raw_data());
  auto* d = static_cast<char*>(dst.raw_data());
  const int64_t sp = src.dim(1);
  const int64_t dp = dst.dim(1);
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(d + (r * dp + dst_col) * elem, s + (r * sp + src_col) * elem, cols * elem);
  }
}

}  // namespace fathom::cpu
