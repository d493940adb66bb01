// The CUDA implementations of the ops in kernels/ops.h, one per public op with the same
// signature (without defaults). Arguments arrive already checked by the public op: shapes,
// dtypes and devices are valid and every tensor is on one CUDA device.
// Not for use outside kernels/.
#pragma once

#include "kernels/ops.h"

namespace fathom::cuda {

void cast(const Tensor& src, Tensor& dst);
void fill(Tensor& t, float value);
void axpy(float alpha, const Tensor& x, Tensor& y);
void scale(Tensor& t, float alpha);
void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& y);
void swiglu_backward(const Tensor& dy, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor&
    dup);
void sigmoid_forward(const Tensor& x, Tensor& y);
void sigmoid_backward(const Tensor& dy, const Tensor& y, Tensor& dx);
void softmax_forward(const Tensor& x, Tensor& y);
void softmax_backward(const Tensor& dy, const Tensor& y, Tensor& dx);
void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd);
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
    Tensor& dx, Tensor& dw);
void rope_apply(Tensor& x, const Tensor& positions, const RopeTable& table, bool inverse);
void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out);
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable);
void topk(const Tensor& x, int64_t k, Tensor& values, Tensor& indices);
void gather_rows(const Tensor& x, const Tensor& index, const Tensor& scale, Tensor& out);
void scatter_add_rows(const Tensor& x, const Tensor& index, const Tensor& scale, Tensor& out);
void gathered_row_dot(const Tensor& a, const Tensor& index, const Tensor& b, Tensor& out);
void transpose(const Tensor& x, Tensor& y);
void copy_columns(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col, int64_t cols);
void reduce_rows(const Tensor& x, Reduce op, Tensor& out);
double reduce_all(const Tensor& x, Reduce op);
void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWConfig&
    config);
void fused_linear_cross_entropy_forward(const Tensor& h, const Tensor& w, const Tensor& targets,
    Tensor& loss, Tensor& lse, const CrossEntropyOptions& options);
void fused_linear_cross_entropy_backward(const Tensor& h, const Tensor& w, const Tensor& targets,
    const Tensor& lse, const Tensor& dloss, Tensor& dh, Tensor& dw, const CrossEntropyOptions&
    options);
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions&
    options, Tensor& out, Tensor& lse);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const
    Tensor& lse, const Tensor& dout, const AttentionOptions& options, Tensor& dq, Tensor& dk,
    Tensor& dv);
void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOptions& options);
void gemm_fp8(const Fp8Tensor& a, const Fp8Tensor& b, Tensor& c, bool accumulate);
void grouped_gemm_fp8(const Fp8Tensor& x, const Fp8Tensor& w, absl::Span<const int64_t> counts,
    Tensor& y);
void quantize_fp8_into(const Tensor& x, Fp8Tensor& out, Fp8Options options);
void dequantize_fp8(const Fp8Tensor& q, Tensor& out);

}  // namespace fathom::cuda
