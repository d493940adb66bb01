// CUDA attention vs the CPU reference: forward (out, lse) and backward (dq, dk, dv) over causal and
// full masks, grouped-query heads (H / Hkv = 1, 2, 4), Dqk != Dv (MLA's 192 / 128 among them),
// awkward sequence lengths around the 32-key tiles, an explicit softmax scale, f32 and bf16.
// The backward of both backends gets the CPU forward's out and lse, so it is checked on its own;
// its outputs start as garbage to check they are written (=), not accumulated.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"
#include "tests/kernels/cuda_test_util.h"

namespace fathom {
namespace {

using testing::expect_gpu_close;
using testing::float_dtypes;
using testing::name;
using testing::on_gpu;
using testing::random_tensor;
using testing::scaled_tolerance;

Device gpu() { return testing::gpu(); }

struct Case {
  int64_t batch, seq, heads, kv_heads, dqk, dv;
  bool causal;
  float scale;  // 0: 1 / sqrt(dqk)
};

TEST(CudaAttention, MatchesCpu) {
  FATHOM_REQUIRE_GPU();
  const std::vector<Case> cases = {
      {1, 1, 1, 1, 16, 8, true, 0.0f},     {2, 31, 4, 2, 16, 16, true, 0.0f},
      {1, 33, 4, 1, 33, 17, false, 0.0f},  {1, 129, 2, 2, 192, 128, true, 0.0f},
      {2, 65, 4, 4, 64, 64, false, 0.3f},  {1, 128, 4, 1, 128, 128, true, 0.0f},
      {1, 32, 2, 1, 256, 256, true, 0.0f},
  };
  for (const Case& c : cases) {
    for (DType dtype : float_dtypes()) {
      const std::string ctx = absl::StrCat(
          "attention B=", c.batch, " S=", c.seq, " H=", c.heads, " Hkv=", c.kv_heads,
          " Dqk=", c.dqk, " Dv=", c.dv, " causal=", c.causal, " scale=", c.scale, " ", name(dtype));
      AttentionOptions options;
      options.causal = c.causal;
      options.scale = c.scale;
      const Tensor q = random_tensor({c.batch, c.seq, c.heads, c.dqk}, 1, dtype);
      const Tensor k = random_tensor({c.batch, c.seq, c.kv_heads, c.dqk}, 2, dtype);
      const Tensor v = random_tensor({c.batch, c.seq, c.kv_heads, c.dv}, 3, dtype);
      const Tensor dout = random_tensor({c.batch, c.seq, c.heads, c.dv}, 4, dtype);
      Tensor out = Tensor::empty({c.batch, c.seq, c.heads, c.dv}, dtype);
      Tensor lse = Tensor::empty({c.batch, c.heads, c.seq}, DType::kF32);
      attention_forward(q, k, v, options, out, lse);
      const Tensor q_gpu = on_gpu(q), k_gpu = on_gpu(k), v_gpu = on_gpu(v);
      Tensor out_gpu = Tensor::empty(out.shape(), dtype, gpu());
      Tensor lse_gpu = Tensor::empty(lse.shape(), DType::kF32, gpu());
      attention_forward(q_gpu, k_gpu, v_gpu, options, out_gpu, lse_gpu);
      expect_gpu_close(out_gpu, out, scaled_tolerance(dtype, out), ctx + " out");
      expect_gpu_close(lse_gpu, lse, scaled_tolerance(DType::kF32, lse), ctx + " lse");

      Tensor dq = Tensor::empty(q.shape(), dtype), dk = Tensor::empty(k.shape(), dtype),
             dv = Tensor::empty(v.shape(), dtype);
      attention_backward(q, k, v, out, lse, dout, options, dq, dk, dv);
      Tensor dq_gpu = Tensor::empty(q.shape(), dtype, gpu());
      Tensor dk_gpu = Tensor::empty(k.shape(), dtype, gpu());
      Tensor dv_gpu = Tensor::empty(v.shape(), dtype, gpu());
      fill(dq_gpu, 1e4f);
      fill(dk_gpu, 1e4f);
      fill(dv_gpu, 1e4f);
      attention_backward(q_gpu, k_gpu, v_gpu, on_gpu(out), on_gpu(lse), on_gpu(dout), options,
                         dq_gpu, dk_gpu, dv_gpu);
      expect_gpu_close(dq_gpu, dq, scaled_tolerance(dtype, dq), ctx + " dq");
      expect_gpu_close(dk_gpu, dk, scaled_tolerance(dtype, dk), ctx + " dk");
      expect_gpu_close(dv_gpu, dv, scaled_tolerance(dtype, dv), ctx + " dv");
    }
  }
}

TEST(CudaAttention, RejectsHeadDimsAboveTheKernelLimit) {
  FATHOM_REQUIRE_GPU();
  const Tensor q = Tensor::zeros({1, 4, 1, 512}, DType::kBF16, gpu());
  const Tensor v = Tensor::zeros({1, 4, 1, 64}, DType::kBF16, gpu());
  Tensor out = Tensor::empty({1, 4, 1, 64}, DType::kBF16, gpu());
  Tensor lse = Tensor::empty({1, 1, 4}, DType::kF32, gpu());
  try {
    attention_forward(q, q, v, {}, out, lse);
    ADD_FAILURE() << "Dqk 512 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Dqk 512"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace fathom
