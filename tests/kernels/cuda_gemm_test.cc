// CUDA backend vs the CPU reference for the GEMM family, FP8 quantization and the fused linear
// cross-entropy:
// - gemm (cuBLASLt): awkward m/n/k, every transpose pair, f32/bf16 inputs and outputs, accumulate
//   with alpha, k == 0, batches with shared and per-batch B;
// - grouped_gemm / grouped_gemm_weight_grad with empty groups (dw of an empty group is zeroed);
// - quantize_fp8 / dequantize_fp8: bit-identical data bytes and scales, both block shapes, pow2;
// - gemm_fp8 / grouped_gemm_fp8 within the bound stated at fp8_bound() (cuBLASLt block-scaled
//   kernels for aligned shapes, the dequantize + BF16 fallback otherwise), and that aligned shapes
//   really take the cuBLASLt path;
// - fused_linear_cross_entropy forward and backward over several chunk sizes and ignored targets.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"
#include "tests/kernels/cuda_test_util.h"
#if FATHOM_HAVE_CUDA
#include "kernels/cuda/blas.h"
#endif

namespace fathom {
namespace {

using testing::awkward_sizes;
using testing::expect_gpu_close;
using testing::expect_same_bytes;
using testing::float_dtypes;
using testing::name;
using testing::on_gpu;
using testing::random_ids;
using testing::random_tensor;
using testing::random_values;
using testing::scaled_tolerance;
using testing::tolerance_for;

Device gpu() { return testing::gpu(); }

Fp8Tensor on_gpu_fp8(const Fp8Tensor& t) {
  Fp8Tensor out;
  out.block = t.block;
  out.data = on_gpu(t.data);
  out.scales = on_gpu(t.scales);
  return out;
}

// Random values whose magnitude changes by powers of two from one 128-wide column block (and
// 128-row block) to the next, so every block gets its own scale and a wrong scale layout shows up
// as a large error; the first block of the first row is all zeros (scale 1).
Tensor blocky_tensor(absl::Span<const int64_t> shape, uint32_t seed, DType dtype) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> v = random_values(static_cast<size_t>(n), seed);
  const int64_t k = shape.back();
  const int64_t rows = shape.size() >= 2 ? shape[shape.size() - 2] : 1;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = (i / k) % rows;
    const int64_t c = i % k;
    const int exponent = static_cast<int>((c / 128 * 3 + r / 128 * 5) % 9) - 4;
    v[i] = std::ldexp(v[i], exponent);
    if (i / k == 0 && c < 128) v[i] = 0.0f;
  }
  return Tensor::from_floats(v, shape, dtype);
}

TEST(CudaGemm, MatchesCpu) {
  FATHOM_REQUIRE_GPU();
  struct Shape3 {
    int64_t m, n, k;
  };
  const std::vector<Shape3> shapes = {{1, 1, 1},      {31, 33, 127}, {128, 129, 32},
                                      {129, 127, 33}, {33, 1, 129},  {32, 128, 0}};
  for (const Shape3& s : shapes) {
    for (bool trans_a : {false, true}) {
      for (bool trans_b : {false, true}) {
        for (DType in : float_dtypes()) {
          for (DType out : float_dtypes()) {
            for (bool accumulate : {false, true}) {
              const std::string ctx =
                  absl::StrCat("gemm m=", s.m, " n=", s.n, " k=", s.k, " trans_a=", trans_a,
                               " trans_b=", trans_b, " in=", name(in), " out=", name(out),
                               " accumulate=", accumulate);
              const Tensor a =
                  trans_a ? random_tensor({s.k, s.m}, 1, in) : random_tensor({s.m, s.k}, 1, in);
              const Tensor b =
                  trans_b ? random_tensor({s.n, s.k}, 2, in) : random_tensor({s.k, s.n}, 2, in);
              const Tensor c0 = random_tensor({s.m, s.n}, 3, out);
              GemmOptions options;
              options.trans_a = trans_a;
              options.trans_b = trans_b;
              options.accumulate = accumulate;
              options.alpha = accumulate ? 0.5f : 1.0f;
              Tensor want = c0.clone();
              gemm(a, b, want, options);
              Tensor got = on_gpu(c0);
              gemm(on_gpu(a), on_gpu(b), got, options);
              // bf16 operands run on the tensor cores, whose FP32 accumulation need not round
              // like IEEE additions: bf16 tolerances whenever bf16 is involved.
              const DType tol_dtype = in == DType::kBF16 ? DType::kBF16 : out;
              expect_gpu_close(got, want, scaled_tolerance(tol_dtype, want), ctx);
            }
          }
        }
      }
    }
  }
}

TEST(CudaGemm, BatchedMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  const int64_t batch = 3, m = 33, n = 31, k = 129;
  for (bool shared_b : {true, false}) {
    for (bool trans_a : {false, true}) {
      for (bool trans_b : {false, true}) {
        for (DType dtype : float_dtypes()) {
          const std::string ctx = absl::StrCat(
              "batched gemm batch=", batch, " m=", m, " n=", n, " k=", k, " shared_b=", shared_b,
              " trans_a=", trans_a, " trans_b=", trans_b, " ", name(dtype));
          const Tensor a = trans_a ? random_tensor({batch, k, m}, 4, dtype)
                                   : random_tensor({batch, m, k}, 4, dtype);
          Shape b_shape = trans_b ? Shape{n, k} : Shape{k, n};
          if (!shared_b) b_shape.insert(b_shape.begin(), batch);
          const Tensor b = random_tensor(b_shape, 5, dtype);
          GemmOptions options;
          options.trans_a = trans_a;
          options.trans_b = trans_b;
          Tensor want = Tensor::empty({batch, m, n}, dtype);
          gemm(a, b, want, options);
          Tensor got = Tensor::empty({batch, m, n}, dtype, gpu());
          gemm(on_gpu(a), on_gpu(b), got, options);
          expect_gpu_close(got, want, scaled_tolerance(dtype, want), ctx);
        }
      }
    }
  }
}

TEST(CudaGemm, GroupedMatchesCpuWithEmptyGroups) {
  FATHOM_REQUIRE_GPU();
  const std::vector<int64_t> counts = {0, 33, 1, 0, 95};
  const int64_t tokens = 129, groups = 5, n = 31, k = 33;
  for (DType dtype : float_dtypes()) {
    for (bool trans_w : {true, false}) {
      for (bool accumulate : {false, true}) {
        const std::string ctx =
            absl::StrCat("grouped_gemm counts=[0,33,1,0,95] n=", n, " k=", k, " trans_w=", trans_w,
                         " accumulate=", accumulate, " ", name(dtype));
        const Tensor x = random_tensor({tokens, k}, 6, dtype);
        const Tensor w = trans_w ? random_tensor({groups, n, k}, 7, dtype)
                                 : random_tensor({groups, k, n}, 7, dtype);
        const Tensor y0 = random_tensor({tokens, n}, 8, dtype);
        GroupedGemmOptions options;
        options.trans_w = trans_w;
        options.accumulate = accumulate;
        Tensor want = y0.clone();
        grouped_gemm(x, w, counts, want, options);
        Tensor got = on_gpu(y0);
        grouped_gemm(on_gpu(x), on_gpu(w), counts, got, options);
        expect_gpu_close(got, want, scaled_tolerance(dtype, want), ctx);
      }
    }
    for (bool accumulate : {false, true}) {
      const std::string ctx = absl::StrCat("grouped_gemm_weight_grad counts=[0,33,1,0,95] n=", n,
                                           " k=", k, " accumulate=", accumulate, " ", name(dtype));
      const Tensor dy = random_tensor({tokens, n}, 9, dtype);
      const Tensor x = random_tensor({tokens, k}, 10, dtype);
      // Non-zero start: empty groups must come out zero unless accumulating.
      const Tensor dw0 = random_tensor({groups, n, k}, 11);
      Tensor want = dw0.clone();
      grouped_gemm_weight_grad(dy, x, counts, want, accumulate);
      Tensor got = on_gpu(dw0);
      grouped_gemm_weight_grad(on_gpu(dy), on_gpu(x), counts, got, accumulate);
      expect_gpu_close(got, want, scaled_tolerance(dtype, want), ctx);
    }
  }
}

TEST(CudaFp8, QuantizeIsBitIdenticalToCpu) {
  FATHOM_REQUIRE_GPU();
  struct Case {
    Shape shape;
    ScaleBlock block;
  };
  std::vector<Case> cases;
  for (int64_t k : awkward_sizes()) {
    for (int64_t rows : {1, 33}) cases.push_back({Shape{rows, k}, ScaleBlock::k1x128});
    for (int64_t m : {1, 129}) cases.push_back({Shape{2, m, k}, ScaleBlock::k128x128});
  }
  cases.push_back({Shape{3, 300}, ScaleBlock::k1x128});
  cases.push_back({Shape{300, 257}, ScaleBlock::k128x128});
  for (const Case& c : cases) {
    for (DType dtype : float_dtypes()) {
      for (bool pow2 : {false, true}) {
        const std::string ctx =
            absl::StrCat("quantize_fp8 shape=", shape_str(c.shape),
                         " block=", c.block == ScaleBlock::k1x128 ? "1x128" : "128x128",
                         " pow2=", pow2, " ", name(dtype));
        const Tensor x = blocky_tensor(c.shape, 12, dtype);
        const Fp8Tensor want = quantize_fp8(x, c.block, {.pow2_scales = pow2});
        const Fp8Tensor got = quantize_fp8(on_gpu(x), c.block, {.pow2_scales = pow2});
        expect_same_bytes(got.data, want.data, ctx + " data");
        expect_same_bytes(got.scales, want.scales, ctx + " scales");
        Tensor back = Tensor::empty(c.shape, dtype);
        dequantize_fp8(want, back);
        Tensor back_gpu = Tensor::empty(c.shape, dtype, gpu());
        dequantize_fp8(got, back_gpu);
        expect_same_bytes(back_gpu, back, ctx + " dequantized");
      }
    }
  }
}

// The FP8 GEMM bound: |gpu - cpu| <= 2^-7 * sum_k |a_ik b_jk| (dequantized operands) + 1e-6,
// plus 2^-6 |cpu| for a bf16 C. The CPU multiplies the dequantized values in f32; cuBLASLt
// accumulates the FP8 products on the tensor cores and applies the scales per 128-element K
// block in FP32, and the fallback rounds the dequantized operands to bf16 (2^-8 per product).
// A misplaced scale changes results by factors of 2 or more (blocky_tensor), far outside it.
void expect_fp8_gemm_close(const Tensor& got_gpu, const Tensor& want, const Fp8Tensor& a,
                           const Fp8Tensor& b, const std::string& ctx) {
  const Tensor got = got_gpu.to(Device::cpu());
  Tensor a32 = Tensor::empty(a.shape(), DType::kF32);
  Tensor b32 = Tensor::empty(b.shape(), DType::kF32);
  dequantize_fp8(a, a32);
  dequantize_fp8(b, b32);
  const int64_t m = want.dim(0), n = want.dim(1), k = a.shape()[1];
  const std::vector<float> g = got.to_floats(), w = want.to_floats();
  const float* pa = a32.data<float>();
  const float* pb = b32.data<float>();
  int64_t bad = 0;
  std::ostringstream first;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double abs_sum = 0.0;
      for (int64_t l = 0; l < k; ++l) abs_sum += std::fabs(pa[i * k + l] * pb[j * k + l]);
      const double want_ij = w[i * n + j];
      double bound = std::ldexp(abs_sum, -7) + 1e-6;
      if (want.dtype() == DType::kBF16) bound += std::ldexp(std::fabs(want_ij), -6);
      const double err = std::fabs(g[i * n + j] - want_ij);
      if (!(err <= bound)) {
        if (bad < 5) {
          first << "  [" << i << ", " << j << "] got " << g[i * n + j] << " want " << want_ij
                << " bound " << bound << "\n";
        }
        ++bad;
      }
    }
  }
  EXPECT_EQ(bad, 0) << ctx << ": " << bad << " of " << m * n << " outside the FP8 bound\n"
                    << first.str();
}

TEST(CudaFp8, GemmMatchesCpuWithinBound) {
  FATHOM_REQUIRE_GPU();
  struct Shape3 {
    int64_t m, n, k;
  };
  // Aligned (cuBLASLt), ragged K (multiple of 16, not of 128), and shapes that need the fallback.
  const std::vector<Shape3> shapes = {{128, 256, 256}, {64, 96, 144}, {256, 136, 384},
                                      {33, 31, 129},   {1, 4, 16},    {4, 8, 32}};
  for (const Shape3& s : shapes) {
    for (ScaleBlock b_block : {ScaleBlock::k128x128, ScaleBlock::k1x128}) {
      for (DType out : float_dtypes()) {
        for (bool accumulate : {false, true}) {
          const std::string ctx =
              absl::StrCat("gemm_fp8 m=", s.m, " n=", s.n, " k=", s.k,
                           " b_block=", b_block == ScaleBlock::k1x128 ? "1x128" : "128x128",
                           " out=", name(out), " accumulate=", accumulate);
          const Fp8Tensor a =
              quantize_fp8(blocky_tensor({s.m, s.k}, 13, DType::kF32), ScaleBlock::k1x128);
          const Fp8Tensor b = quantize_fp8(blocky_tensor({s.n, s.k}, 14, DType::kF32), b_block);
          const Tensor c0 = random_tensor({s.m, s.n}, 15, out);
          Tensor want = c0.clone();
          gemm_fp8(a, b, want, accumulate);
          Tensor got = on_gpu(c0);
          gemm_fp8(on_gpu_fp8(a), on_gpu_fp8(b), got, accumulate);
          expect_fp8_gemm_close(got, want, a, b, ctx);
        }
      }
    }
  }
}

#if FATHOM_HAVE_CUDA
TEST(CudaFp8, AlignedGemmUsesCublasLtBlockScaling) {
  FATHOM_REQUIRE_GPU();
  for (ScaleBlock b_block : {ScaleBlock::k128x128, ScaleBlock::k1x128}) {
    const std::string ctx = absl::StrCat("gemm_fp8 m=128 n=256 k=256 b_block=",
                                         b_block == ScaleBlock::k1x128 ? "1x128" : "128x128");
    const Fp8Tensor a = quantize_fp8(on_gpu(random_tensor({128, 256}, 16)), ScaleBlock::k1x128);
    const Fp8Tensor b = quantize_fp8(on_gpu(random_tensor({256, 256}, 17)), b_block);
    Tensor c = Tensor::empty({128, 256}, DType::kBF16, gpu());
    const cuda::Fp8GemmStats before = cuda::fp8_gemm_stats();
    gemm_fp8(a, b, c);
    const cuda::Fp8GemmStats after = cuda::fp8_gemm_stats();
    EXPECT_EQ(after.cublaslt, before.cublaslt + 1) << ctx << ": the cuBLASLt FP8 path did not run";
    EXPECT_EQ(after.fallback, before.fallback) << ctx << ": fell back to dequantize + BF16";
  }
}
#endif

TEST(CudaFp8, GroupedGemmMatchesCpuWithinBound) {
  FATHOM_REQUIRE_GPU();
  const std::vector<int64_t> counts = {0, 64, 65, 0};  // 64 rows: cuBLASLt; 65: the fallback
  const int64_t tokens = 129, groups = 4, n = 128, k = 256;
  for (DType out : float_dtypes()) {
    const std::string ctx =
        absl::StrCat("grouped_gemm_fp8 counts=[0,64,65,0] n=", n, " k=", k, " out=", name(out));
    const Fp8Tensor x =
        quantize_fp8(blocky_tensor({tokens, k}, 18, DType::kF32), ScaleBlock::k1x128);
    const Fp8Tensor w =
        quantize_fp8(blocky_tensor({groups, n, k}, 19, DType::kF32), ScaleBlock::k128x128);
    Tensor want = Tensor::empty({tokens, n}, out);
    grouped_gemm_fp8(x, w, counts, want);
    Tensor got = Tensor::empty({tokens, n}, out, gpu());
    grouped_gemm_fp8(on_gpu_fp8(x), on_gpu_fp8(w), counts, got);
    // Check each group against its own expert.
    int64_t row = 0;
    for (size_t g = 0; g < counts.size(); ++g) {
      if (counts[g] == 0) continue;
      Fp8Tensor x_g{x.data.narrow(row, counts[g]), x.scales.narrow(row, counts[g]),
                    ScaleBlock::k1x128};
      Fp8Tensor w_g{
          w.data.narrow(static_cast<int64_t>(g), 1).view({n, k}),
          w.scales.narrow(static_cast<int64_t>(g), 1).view({w.scales.dim(1), w.scales.dim(2)}),
          ScaleBlock::k128x128};
      expect_fp8_gemm_close(got.narrow(row, counts[g]), want.narrow(row, counts[g]).clone(), x_g,
                            w_g, absl::StrCat(ctx, " group ", g));
      row += counts[g];
    }
  }
}

TEST(CudaLoss, FusedLinearCrossEntropyMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  struct Case {
    int64_t tokens, vocab, d, chunk;
  };
  const std::vector<Case> cases = {{1, 1, 16, 4096},
                                   {31, 33, 16, 7},
                                   {33, 129, 33, 128},
                                   {129, 300, 32, 64},
                                   {32, 128, 129, 4096}};
  for (const Case& c : cases) {
    for (DType dtype : float_dtypes()) {
      const std::string ctx =
          absl::StrCat("fused_linear_cross_entropy tokens=", c.tokens, " vocab=", c.vocab,
                       " d=", c.d, " chunk=", c.chunk, " ", name(dtype));
      CrossEntropyOptions options;
      options.chunk_size = c.chunk;
      options.ignore_index = -100;
      std::vector<int32_t> t = random_ids(c.tokens, c.vocab, 20);
      for (size_t i = 2; i < t.size(); i += 5) t[i] = options.ignore_index;
      const Tensor targets = Tensor::from_vector(t, {c.tokens});
      const Tensor h = random_tensor({c.tokens, c.d}, 21, dtype);
      const Tensor w = random_tensor({c.vocab, c.d}, 22, dtype);
      Tensor loss = Tensor::empty({c.tokens}, DType::kF32);
      Tensor lse = Tensor::empty({c.tokens}, DType::kF32);
      Tensor loss_gpu = Tensor::empty({c.tokens}, DType::kF32, gpu());
      Tensor lse_gpu = Tensor::empty({c.tokens}, DType::kF32, gpu());
      fused_linear_cross_entropy_forward(h, w, targets, loss, lse, options);
      fused_linear_cross_entropy_forward(on_gpu(h), on_gpu(w), on_gpu(targets), loss_gpu, lse_gpu,
                                         options);
      // The logits come from GEMMs in the operands' dtype (tensor cores for bf16).
      expect_gpu_close(loss_gpu, loss, scaled_tolerance(dtype, loss), ctx + " loss");
      expect_gpu_close(lse_gpu, lse, scaled_tolerance(dtype, lse), ctx + " lse");

      const Tensor dloss = random_tensor({c.tokens}, 23);
      const Tensor dw0 = random_tensor({c.vocab, c.d}, 24);
      Tensor dh = Tensor::empty({c.tokens, c.d}, dtype);
      Tensor dw = dw0.clone();
      Tensor dh_gpu = Tensor::empty({c.tokens, c.d}, dtype, gpu());
      Tensor dw_gpu = on_gpu(dw0);
      fused_linear_cross_entropy_backward(h, w, targets, lse, dloss, dh, dw, options);
      fused_linear_cross_entropy_backward(on_gpu(h), on_gpu(w), on_gpu(targets), on_gpu(lse),
                                          on_gpu(dloss), dh_gpu, dw_gpu, options);
      expect_gpu_close(dh_gpu, dh, scaled_tolerance(dtype, dh), ctx + " dh");
      // With bf16 operands the GPU rounds each chunk's gradient to bf16 for the GEMMs.
      expect_gpu_close(dw_gpu, dw, scaled_tolerance(dtype, dw), ctx + " dw");
    }
  }
}

TEST(CudaLoss, BadTargetIsAnError) {
  FATHOM_REQUIRE_GPU();
  const Tensor h = on_gpu(random_tensor({2, 8}, 25));
  const Tensor w = on_gpu(random_tensor({5, 8}, 26));
  const Tensor targets = on_gpu(Tensor::from_vector(std::vector<int32_t>{1, 5}, {2}));
  Tensor loss = Tensor::empty({2}, DType::kF32, gpu());
  Tensor lse = Tensor::empty({2}, DType::kF32, gpu());
  try {
    fused_linear_cross_entropy_forward(h, w, targets, loss, lse);
    ADD_FAILURE() << "target 5 of vocab 5 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("targets[1] = 5"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace fathom
