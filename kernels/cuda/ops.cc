// The CUDA ops of kernels/cuda/ops.h except the GEMM family and the fused loss (ops_gemm.cc):
// each makes the tensors' device current, allocates scratch from the caching allocator on the
// current stream, and calls the launchers of launchers.h on that stream. Nothing synchronises
// except reduce_all, which returns a host value.
#include "kernels/cuda/ops.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/tensor_args.h"

namespace fathom::cuda {
namespace {

ElemType elem_type(const char* op, const Tensor& t) {
  switch (t.dtype()) {
    case DType::kF32: return ElemType::kF32;
    case DType::kBF16: return ElemType::kBF16;
    case DType::kF8E4M3: return ElemType::kF8E4M3;
    case DType::kF8E5M2: return ElemType::kF8E5M2;
    case DType::kI32: return ElemType::kI32;
    case DType::kI64: return ElemType::kI64;
    case DType::kU8: break;
  }
  FATHOM_CHECK(false) << op << " (CUDA): unsupported dtype of " << t.str();
  return ElemType::kF32;
}

ReduceOp reduce_op(Reduce op) {
  switch (op) {
    case Reduce::kSum: return ReduceOp::kSum;
    case Reduce::kMean: return ReduceOp::kMean;
    case Reduce::kMax: return ReduceOp::kMax;
    case Reduce::kSumSquares: return ReduceOp::kSumSquares;
  }
  return ReduceOp::kSum;
}

int64_t rows_of(const Tensor& t) {
  const int64_t cols = t.dim(-1);
  return cols == 0 ? 0 : t.numel() / cols;
}

const float* optional_f32(const Tensor& t) {
  return t.defined() ? static_cast<const float*>(t.raw_data()) : nullptr;
}

}  // namespace

void cast(const Tensor& src, Tensor& dst) {
  if (src.numel() == 0) return;
  DeviceGuard guard(dst.device().index);
  if (src.dtype() == dst.dtype()) {
    FATHOM_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), src.nbytes(),
                                      cudaMemcpyDeviceToDevice, stream_of(dst)));
    return;
  }
  launch_cast(src.raw_data(), elem_type("cast", src), dst.raw_data(), elem_type("cast", dst),
              src.numel(), stream_of(dst));
}

void fill(Tensor& t, float value) {
  if (t.numel() == 0) return;
  DeviceGuard guard(t.device().index);
  uint64_t pattern = 0;
  int bytes = static_cast<int>(dtype_size(t.dtype()));
  switch (t.dtype()) {
    case DType::kF32: {
      uint32_t bits;
      std::memcpy(&bits, &value, sizeof bits);
      pattern = bits;
      break;
    }
    case DType::kBF16: pattern = float_to_bf16(value).bits; break;
    case DType::kF8E4M3: pattern = float_to_fp8e4m3(value).bits; break;
    case DType::kF8E5M2: pattern = float_to_fp8e5m2(value).bits; break;
    case DType::kI32: pattern = static_cast<uint32_t>(static_cast<int32_t>(value)); break;
    case DType::kI64: pattern = static_cast<uint64_t>(static_cast<int64_t>(value)); break;
    case DType::kU8: pattern = static_cast<uint8_t>(value); break;
  }
  launch_fill(t.raw_data(), bytes, pattern, t.numel(), stream_of(t));
}

void axpy(float alpha, const Tensor& x, Tensor& y) {
  DeviceGuard guard(y.device().index);
  launch_axpy(alpha, in_ptr(x), out_ptr(y), y.numel(), stream_of(y));
}

void scale(Tensor& t, float alpha) {
  DeviceGuard guard(t.device().index);
  launch_scale(out_ptr(t), alpha, t.numel(), stream_of(t));
}

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& y) {
  DeviceGuard guard(y.device().index);
  launch_swiglu_forward(in_ptr(gate), in_ptr(up), out_ptr(y), y.numel(), stream_of(y));
}

void swiglu_backward(const Tensor& dy, const Tensor& gate, const Tensor& up, Tensor& dgate,
                     Tensor& dup) {
  DeviceGuard guard(dy.device().index);
  launch_swiglu_backward(in_ptr(dy), in_ptr(gate), in_ptr(up), out_ptr(dgate), out_ptr(dup),
                         dy.numel(), stream_of(dy));
}

void sigmoid_forward(const Tensor& x, Tensor& y) {
  DeviceGuard guard(y.device().index);
  launch_sigmoid_forward(in_ptr(x), out_ptr(y), y.numel(), stream_of(y));
}

void sigmoid_backward(const Tensor& dy, const Tensor& y, Tensor& dx) {
  DeviceGuard guard(dx.device().index);
  launch_sigmoid_backward(in_ptr(dy), in_ptr(y), out_ptr(dx), dx.numel(), stream_of(dx));
}

void softmax_forward(const Tensor& x, Tensor& y) {
  DeviceGuard guard(y.device().index);
  launch_softmax_forward(in_ptr(x), out_ptr(y), rows_of(x), x.dim(-1), stream_of(y));
}

void softmax_backward(const Tensor& dy, const Tensor& y, Tensor& dx) {
  DeviceGuard guard(dx.device().index);
  launch_softmax_backward(in_ptr(dy), in_ptr(y), out_ptr(dx), rows_of(y), y.dim(-1), stream_of(dx));
}

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) {
  DeviceGuard guard(y.device().index);
  launch_rmsnorm_forward(in_ptr(x), w.data<float>(), eps, out_ptr(y), rstd.data<float>(),
                         rstd.numel(), x.dim(-1), stream_of(y));
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor& dw) {
  DeviceGuard guard(dx.device().index);
  const int64_t rows = rstd.numel();
  const int64_t cols = x.dim(-1);
  if (rows == 0 || cols == 0) return;
  Tensor scratch = Tensor::empty({rmsnorm_dw_chunks(rows), cols}, DType::kF32, dx.device());
  launch_rmsnorm_backward(in_ptr(dy), in_ptr(x), w.data<float>(), rstd.data<float>(), out_ptr(dx),
                          dw.data<float>(), scratch.data<float>(), rows, cols, stream_of(dx));
}

void rope_apply(Tensor& x, const Tensor& positions, const RopeTable& table, bool inverse) {
  FATHOM_CHECK(table.cos.device() == x.device() && table.sin.device() == x.device())
      << "rope_apply (CUDA): the table (" << table.cos.str() << ") must be on " << x.device().str();
  DeviceGuard guard(x.device().index);
  launch_rope(out_ptr(x), positions.data<int32_t>(), table.cos.data<float>(),
              table.sin.data<float>(), table.cos.dim(0), x.dim(0), x.dim(1), x.dim(2),
              2 * table.cos.dim(1), table.style == RopeStyle::kHalf, inverse, stream_of(x));
}

void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) {
  DeviceGuard guard(out.device().index);
  launch_gather_rows(in_ptr(table), ids.data<int32_t>(), nullptr, out_ptr(out), ids.numel(),
                     table.dim(0), table.dim(1), stream_of(out));
}

void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  DeviceGuard guard(dtable.device().index);
  const int64_t n = ids.numel();
  if (n == 0 || dtable.dim(1) == 0) return;
  const size_t bytes = scatter_add_scratch_bytes(n);
  Tensor scratch = Tensor::empty({static_cast<int64_t>(bytes)}, DType::kU8, dtable.device());
  launch_scatter_add_rows(in_ptr(dout), ids.data<int32_t>(), nullptr, out_ptr(dtable), n,
                          dtable.dim(0), dtable.dim(1), scratch.raw_data(), bytes,
                          stream_of(dtable));
}

void topk(const Tensor& x, int64_t k, Tensor& values, Tensor& indices) {
  DeviceGuard guard(x.device().index);
  launch_topk(x.data<float>(), rows_of(x), x.dim(-1), k, values.data<float>(),
              indices.data<int32_t>(), stream_of(x));
}

void gather_rows(const Tensor& x, const Tensor& index, const Tensor& scale, Tensor& out) {
  DeviceGuard guard(out.device().index);
  launch_gather_rows(in_ptr(x), index.data<int32_t>(), optional_f32(scale), out_ptr(out),
                     index.numel(), x.dim(0), x.dim(1), stream_of(out));
}

void scatter_add_rows(const Tensor& x, const Tensor& index, const Tensor& scale, Tensor& out) {
  DeviceGuard guard(out.device().index);
  const int64_t n = index.numel();
  if (n == 0 || out.dim(1) == 0) return;
  const size_t bytes = scatter_add_scratch_bytes(n);
  Tensor scratch = Tensor::empty({static_cast<int64_t>(bytes)}, DType::kU8, out.device());
  launch_scatter_add_rows(in_ptr(x), index.data<int32_t>(), optional_f32(scale), out_ptr(out), n,
                          out.dim(0), out.dim(1), scratch.raw_data(), bytes, stream_of(out));
}

void gathered_row_dot(const Tensor& a, const Tensor& index, const Tensor& b, Tensor& out) {
  DeviceGuard guard(out.device().index);
  launch_gathered_row_dot(in_ptr(a), index.data<int32_t>(), in_ptr(b), out.data<float>(),
                          index.numel(), a.dim(0), a.dim(1), stream_of(out));
}

void transpose(const Tensor& x, Tensor& y) {
  DeviceGuard guard(y.device().index);
  const int64_t m = x.dim(-2);
  const int64_t n = x.dim(-1);
  if (m * n == 0) return;
  launch_transpose(x.raw_data(), y.raw_data(), static_cast<int>(dtype_size(x.dtype())),
                   x.numel() / (m * n), m, n, stream_of(y));
}

void copy_columns(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col,
                  int64_t cols) {
  DeviceGuard guard(dst.device().index);
  const size_t elem = dtype_size(src.dtype());
  launch_copy_2d(static_cast<const char*>(src.raw_data()) + src_col * elem, src.dim(1) * elem,
                 static_cast<char*>(dst.raw_data()) + dst_col * elem, dst.dim(1) * elem,
                 cols * elem, src.dim(0), stream_of(dst));
}

void reduce_rows(const Tensor& x, Reduce op, Tensor& out) {
  DeviceGuard guard(out.device().index);
  launch_reduce_rows(in_ptr(x), reduce_op(op), out.data<float>(), out.numel(), x.dim(-1),
                     stream_of(out));
}

double reduce_all(const Tensor& x, Reduce op) {
  const int64_t n = x.numel();
  if (n == 0) return op == Reduce::kMax ? -std::numeric_limits<double>::infinity() : 0.0;
  DeviceGuard guard(x.device().index);
  // Doubles live in a byte tensor: no f64 dtype. Slot 0 is the result, then the partials.
  const int64_t slots = 1 + reduce_all_scratch(n);
  Tensor scratch =
      Tensor::empty({slots * static_cast<int64_t>(sizeof(double))}, DType::kU8, x.device());
  double* base = static_cast<double*>(scratch.raw_data());
  launch_reduce_all(in_ptr(x), reduce_op(op), n, base + 1, base, stream_of(x));
  double result = 0.0;
  copy_bytes(&result, Device::cpu(), base, x.device(), sizeof result);  // synchronises
  return result;
}

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                  const AdamWConfig& config) {
  DeviceGuard guard(param.device().index);
  AdamWStep step;
  step.lr = config.lr;
  step.beta1 = config.beta1;
  step.beta2 = config.beta2;
  step.eps = config.eps;
  step.weight_decay = config.weight_decay;
  const double t = static_cast<double>(config.step);
  step.inv_bias_correction1 =
      static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(config.beta1), t)));
  step.inv_bias_correction2 =
      static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(config.beta2), t)));
  launch_adamw(param.data<float>(), grad.data<float>(), out_ptr(m), out_ptr(v), param.numel(), step,
               stream_of(param));
}

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                       const AttentionOptions& options, Tensor& out, Tensor& lse) {
  DeviceGuard guard(q.device().index);
  AttentionDims d{q.dim(0), q.dim(1), q.dim(2),      k.dim(2),
                  q.dim(3), v.dim(3), options.scale, options.causal};
  if (d.scale == 0.0f) d.scale = 1.0f / std::sqrt(static_cast<float>(d.dqk));
  launch_attention_forward(in_ptr(q), in_ptr(k), in_ptr(v), out_ptr(out), lse.data<float>(), d,
                           stream_of(q));
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, const AttentionOptions& options,
                        Tensor& dq, Tensor& dk, Tensor& dv) {
  DeviceGuard guard(q.device().index);
  AttentionDims d{q.dim(0), q.dim(1), q.dim(2),      k.dim(2),
                  q.dim(3), v.dim(3), options.scale, options.causal};
  if (d.scale == 0.0f) d.scale = 1.0f / std::sqrt(static_cast<float>(d.dqk));
  if (q.numel() == 0) {
    // Nothing attends: dk and dv are zero (dq is empty with q).
    cuda::fill(dk, 0.0f);
    cuda::fill(dv, 0.0f);
    return;
  }
  Tensor delta = Tensor::empty({d.batch, d.heads, d.seq}, DType::kF32, q.device());
  launch_attention_backward(in_ptr(q), in_ptr(k), in_ptr(v), in_ptr(out), in_ptr(dout),
                            lse.data<float>(), out_ptr(dq), out_ptr(dk), out_ptr(dv),
                            delta.data<float>(), d, stream_of(q));
}

void quantize_fp8_into(const Tensor& x, Fp8Tensor& out, Fp8Options options) {
  DeviceGuard guard(x.device().index);
  const int64_t k = x.dim(-1);
  uint8_t* q = static_cast<uint8_t*>(out.data.raw_data());
  float* scales = out.scales.data<float>();
  if (out.block == ScaleBlock::k1x128) {
    launch_quantize_1x128(in_ptr(x), rows_of(x), k, options.pow2_scales, q, scales, stream_of(x));
  } else {
    const int64_t m = x.dim(-2);
    const int64_t batch = m * k == 0 ? 0 : x.numel() / (m * k);
    launch_quantize_128x128(in_ptr(x), batch, m, k, options.pow2_scales, q, scales, stream_of(x));
  }
}

void dequantize_fp8(const Fp8Tensor& q, Tensor& out) {
  DeviceGuard guard(out.device().index);
  const bool blocks2d = q.block == ScaleBlock::k128x128;
  launch_dequantize(static_cast<const uint8_t*>(q.data.raw_data()), q.scales.data<float>(),
                    rows_of(q.data), q.data.dim(-1), blocks2d ? q.data.dim(-2) : 1, blocks2d,
                    out_ptr(out), stream_of(out));
}

}  // namespace fathom::cuda
