// The CUDA ops of a build without the CUDA backend. No CUDA tensor can exist in such a build
// (allocation fails first), so these are unreachable unless that invariant breaks.
#include "kernels/check.h"
#include "kernels/cuda/ops.h"

namespace fathom::cuda {
namespace {
[[noreturn]] void no_cuda(const char* op) {
  FATHOM_CHECK(false) << op << ": fathom was built without CUDA";
}
}  // namespace

void cast(const Tensor&, Tensor&) { no_cuda("cast"); }
void fill(Tensor&, float) { no_cuda("fill"); }
void axpy(float, const Tensor&, Tensor&) { no_cuda("axpy"); }
void scale(Tensor&, float) { no_cuda("scale"); }
void swiglu_forward(const Tensor&, const Tensor&, Tensor&) { no_cuda("swiglu_forward"); }
void swiglu_backward(const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&) { no_cuda("swiglu_backward"); }
void sigmoid_forward(const Tensor&, Tensor&) { no_cuda("sigmoid_forward"); }
void sigmoid_backward(const Tensor&, const Tensor&, Tensor&) { no_cuda("sigmoid_backward"); }
void softmax_forward(const Tensor&, Tensor&) { no_cuda("softmax_forward"); }
void softmax_backward(const Tensor&, const Tensor&, Tensor&) { no_cuda("softmax_backward"); }
void rmsnorm_forward(const Tensor&, const Tensor&, float, Tensor&, Tensor&) { no_cuda("rmsnorm_forward"); }
void rmsnorm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&) { no_cuda("rmsnorm_backward"); }
void rope_apply(Tensor&, const Tensor&, const RopeTable&, bool) { no_cuda("rope_apply"); }
void embedding_forward(const Tensor&, const Tensor&, Tensor&) { no_cuda("embedding_forward"); }
void embedding_backward(const Tensor&, const Tensor&, Tensor&) { no_cuda("embedding_backward"); }
void topk(const Tensor&, int64_t, Tensor&, Tensor&) { no_cuda("topk"); }
void gather_rows(const Tensor&, const Tensor&, const Tensor&, Tensor&) { no_cuda("gather_rows"); }
void scatter_add_rows(const Tensor&, const Tensor&, const Tensor&, Tensor&) { no_cuda("scatter_add_rows"); }
void gathered_row_dot(const Tensor&, const Tensor&, const Tensor&, Tensor&) { no_cuda("gathered_row_dot"); }
void transpose(const Tensor&, Tensor&) { no_cuda("transpose"); }
void copy_columns(const Tensor&, int64_t, Tensor&, int64_t, int64_t) { no_cuda("copy_columns"); }
void reduce_rows(const Tensor&, Reduce, Tensor&) { no_cuda("reduce_rows"); }
double reduce_all(const Tensor&, Reduce) { no_cuda("reduce_all"); }
void adamw_update(Tensor&, const Tensor&, Tensor&, Tensor&, const AdamWConfig&) { no_cuda("adamw_update"); }
void fused_linear_cross_entropy_forward(const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&, const CrossEntropyOptions&) { no_cuda("fused_linear_cross_entropy_forward"); }
void fused_linear_cross_entropy_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&, const CrossEntropyOptions&) { no_cuda("fused_linear_cross_entropy_backward"); }
void attention_forward(const Tensor&, const Tensor&, const Tensor&, const AttentionOptions&, Tensor&, Tensor&) { no_cuda("attention_forward"); }
void attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const AttentionOptions&, Tensor&, Tensor&, Tensor&) { no_cuda("attention_backward"); }
void gemm(const Tensor&, const Tensor&, Tensor&, const GemmOptions&) { no_cuda("gemm"); }
void gemm_fp8(const Fp8Tensor&, const Fp8Tensor&, Tensor&, bool) { no_cuda("gemm_fp8"); }
void grouped_gemm_fp8(const Fp8Tensor&, const Fp8Tensor&, absl::Span<const int64_t>, Tensor&) { no_cuda("grouped_gemm_fp8"); }
void quantize_fp8_into(const Tensor&, Fp8Tensor&, Fp8Options) { no_cuda("quantize_fp8_into"); }
void dequantize_fp8(const Fp8Tensor&, Tensor&) { no_cuda("dequantize_fp8"); }

}  // namespace fathom::cuda
