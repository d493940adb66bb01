#include "kernels/ops/index.h"

#include "kernels/check.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"

namespace fathom {
namespace {

// index: (n) i32. Returns n.
int64_t check_index(const char* op, const char* name, const Tensor& index) {
  check_dtype(op, name, index, DType::kI32);
  FATHOM_CHECK(index.ndim() == 1) << op << ": " << name << " must be 1-d, got " << index.str();
  return index.dim(0);
}

// Every index in [0, bound): checked on a host copy (a device-to-host copy for CUDA tensors).
void check_index_range(const char* op, const char* name, const Tensor& index, int64_t bound,
                       const char* of_name, const Tensor& of) {
  const Tensor host = index.is_cuda() ? index.to(Device::cpu()) : index;
  const int32_t* p = host.data<int32_t>();
  for (int64_t i = 0; i < host.numel(); ++i) {
    FATHOM_CHECK(p[i] >= 0 && p[i] < bound)
        << op << ": " << name << "[" << i << "] = " << p[i] << " out of range [0, " << bound
        << ") for " << of_name << " " << of.str();
  }
}

// x: (rows, D) f32/bf16.
void check_matrix(const char* op, const char* name, const Tensor& x) {
  check_float_dtype(op, name, x);
  FATHOM_CHECK(x.ndim() == 2) << op << ": " << name << " must be 2-d, got " << x.str();
}

// An optional (n) f32 scale.
void check_scale(const char* op, const Tensor& scale, int64_t n) {
  if (!scale.defined()) return;
  check_dtype(op, "scale", scale, DType::kF32);
  check_shape(op, "scale", scale, {n});
}

}  // namespace

void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) {
  constexpr const char* kOp = "embedding_forward";
  const int64_t t = check_index(kOp, "ids", ids);
  check_matrix(kOp, "table", table);
  check_dtype(kOp, "out", out, table.dtype());
  check_shape(kOp, "out", out, {t, table.dim(1)});
  check_same_device(kOp, {&ids, &table, &out});
  check_index_range(kOp, "ids", ids, table.dim(0), "table", table);
  if (table.is_cuda()) {
    cuda::embedding_forward(ids, table, out);
  } else {
    cpu::embedding_forward(ids, table, out);
  }
}

void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  constexpr const char* kOp = "embedding_backward";
  const int64_t t = check_index(kOp, "ids", ids);
  check_dtype(kOp, "dtable", dtable, DType::kF32);
  FATHOM_CHECK(dtable.ndim() == 2) << kOp << ": dtable must be (V, D), got " << dtable.str();
  check_float_dtype(kOp, "dout", dout);
  check_shape(kOp, "dout", dout, {t, dtable.dim(1)});
  check_same_device(kOp, {&ids, &dout, &dtable});
  check_index_range(kOp, "ids", ids, dtable.dim(0), "dtable", dtable);
  if (dtable.is_cuda()) {
    cuda::embedding_backward(ids, dout, dtable);
  } else {
    cpu::embedding_backward(ids, dout, dtable);
  }
}

void topk(const Tensor& x, int64_t k, Tensor& values, Tensor& indices) {
  constexpr const char* kOp = "topk";
  check_dtype(kOp, "x", x, DType::kF32);
  FATHOM_CHECK(x.ndim() == 2) << kOp << ": x must be (T, E), got " << x.str();
  FATHOM_CHECK(k >= 1 && k <= x.dim(1))
      << kOp << ": k = " << k << " must be in [1, " << x.dim(1) << "] for x " << x.str();
  check_dtype(kOp, "values", values, DType::kF32);
  check_shape(kOp, "values", values, {x.dim(0), k});
  check_dtype(kOp, "indices", indices, DType::kI32);
  check_shape(kOp, "indices", indices, {x.dim(0), k});
  check_same_device(kOp, {&x, &values, &indices});
  if (x.is_cuda()) {
    cuda::topk(x, k, values, indices);
  } else {
    cpu::topk(x, k, values, indices);
  }
}

void gather_rows(const Tensor& x, const Tensor& index, const Tensor& scale, Tensor& out) {
  constexpr const char* kOp = "gather_rows";
  check_matrix(kOp, "x", x);
  const int64_t n = check_index(kOp, "index", index);
  check_scale(kOp, scale, n);
  check_dtype(kOp, "out", out, x.dtype());
  check_shape(kOp, "out", out, {n, x.dim(1)});
  check_same_device(kOp, {&x, &index, &scale, &out});
  check_index_range(kOp, "index", index, x.dim(0), "x", x);
  if (x.is_cuda()) {
    cuda::gather_rows(x, index, scale, out);
  } else {
    cpu::gather_rows(x, index, scale, out);
  }
}

void scatter_add_rows(const Tensor& x, const Tensor& index, const Tensor& scale, Tensor& out) {
  constexpr const char* kOp = "scatter_add_rows";
  check_matrix(kOp, "x", x);
  const int64_t n = check_index(kOp, "index", index);
  FATHOM_CHECK(n == x.dim(0)) << kOp << ": index " << index.str()
                              << " must have one entry per row of x " << x.str();
  check_scale(kOp, scale, n);
  check_dtype(kOp, "out", out, x.dtype());
  FATHOM_CHECK(out.ndim() == 2 && out.dim(1) == x.dim(1))
      << kOp << ": out must be (R, " << x.dim(1) << ") for x " << x.str() << ", got " << out.str();
  check_same_device(kOp, {&x, &index, &scale, &out});
  check_index_range(kOp, "index", index, out.dim(0), "out", out);
  if (x.is_cuda()) {
    cuda::scatter_add_rows(x, index, scale, out);
  } else {
    cpu::scatter_add_rows(x, index, scale, out);
  }
}

void gathered_row_dot(const Tensor& a, const Tensor& index, const Tensor& b, Tensor& out) {
  constexpr const char* kOp = "gathered_row_dot";
  check_matrix(kOp, "a", a);
  const int64_t n = check_index(kOp, "index", index);
  check_dtype(kOp, "b", b, a.dtype());
  check_shape(kOp, "b", b, {n, a.dim(1)});
  check_dtype(kOp, "out", out, DType::kF32);
  check_shape(kOp, "out", out, {n});
  check_same_device(kOp, {&a, &index, &b, &out});
  check_index_range(kOp, "index", index, a.dim(0), "a", a);
  if (a.is_cuda()) {
    cuda::gathered_row_dot(a, index, b, out);
  } else {
    cpu::gathered_row_dot(a, index, b, out);
  }
}

void transpose(const Tensor& x, Tensor& y) {
  constexpr const char* kOp = "transpose";
  check_defined(kOp, "x", x);
  FATHOM_CHECK(x.ndim() >= 2) << kOp << ": x must be at least 2-d, got " << x.str();
  const size_t elem = dtype_size(x.dtype());
  FATHOM_CHECK(elem == 1 || elem == 2 || elem == 4)
      << kOp << ": elements of 1, 2 or 4 bytes expected, got " << x.str();
  check_dtype(kOp, "y", y, x.dtype());
  Shape swapped = x.shape();
  std::swap(swapped[swapped.size() - 1], swapped[swapped.size() - 2]);
  check_shape(kOp, "y", y, swapped);
  check_same_device(kOp, {&x, &y});
  if (x.is_cuda()) {
    cuda::transpose(x, y);
  } else {
    cpu::transpose(x, y);
  }
}

void copy_columns(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col,
                  int64_t cols) {
  constexpr const char* kOp = "copy_columns";
  check_defined(kOp, "src", src);
  check_defined(kOp, "dst", dst);
  FATHOM_CHECK(src.ndim() == 2 && dst.ndim() == 2)
      << kOp << ": 2-d tensors expected, got " << src.str() << " and " << dst.str();
  check_dtype(kOp, "dst", dst, src.dtype());
  FATHOM_CHECK(src.dim(0) == dst.dim(0))
      << kOp << ": row counts differ: " << src.str() << " vs " << dst.str();
  FATHOM_CHECK(cols >= 0 && src_col >= 0 && dst_col >= 0 && src_col + cols <= src.dim(1) &&
               dst_col + cols <= dst.dim(1))
      << kOp << ": columns [" << src_col << ", " << src_col + cols << ") of " << src.str()
      << " to [" << dst_col << ", " << dst_col + cols << ") of " << dst.str() << " out of range";
  check_same_device(kOp, {&src, &dst});
  if (src.is_cuda()) {
    cuda::copy_columns(src, src_col, dst, dst_col, cols);
  } else {
    cpu::copy_columns(src, src_col, dst, dst_col, cols);
  }
}

}  // namespace fathom
