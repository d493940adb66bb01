// CUDA backend vs the CPU reference for the elementwise, norm, rope, index, reduce and optimizer
// ops, plus the CUDA caching allocator. Each op runs on host tensors and on GPU copies of the same
// inputs at awkward sizes (1, 31, 32, 33, 127, 128, 129) in f32 and bf16, compared with
// tolerance_for(dtype) (bit-exact where the op is exact). Every test skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/allocator.h"
#include "kernels/ops.h"
#include "tests/kernels/cuda_test_util.h"

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
using testing::Tolerance;
using testing::tolerance_for;

Device gpu() { return testing::gpu(); }

TEST(CudaOps, CastMatchesCpuBitForBit) {
  FATHOM_REQUIRE_GPU();
  const std::vector<DType> types = {DType::kF32, DType::kBF16, DType::kF8E4M3, DType::kF8E5M2};
  for (int64_t n : awkward_sizes()) {
    // Magnitudes from beyond the fp8 range (saturation) down to fp8 subnormals and below.
    std::vector<float> values = random_values(static_cast<size_t>(n), 11, -70000.0f, 70000.0f);
    for (size_t i = 0; i < values.size(); ++i) values[i] *= std::pow(10.0f, -2.0f * (i % 5));
    for (DType src : types) {
      for (DType dst : types) {
        const std::string ctx = absl::StrCat("cast n=", n, " ", name(src), " -> ", name(dst));
        const Tensor x = Tensor::from_floats(values, {n}, src);
        Tensor want = Tensor::empty({n}, dst);
        cast(x, want);
        Tensor got = Tensor::empty({n}, dst, gpu());
        cast(on_gpu(x), got);
        expect_same_bytes(got, want, ctx);
      }
    }
    std::vector<int64_t> ints(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) ints[i] = (i % 2 ? -1 : 1) * (i * 7919 % 100003);
    const Tensor i64 = Tensor::from_vector(ints, {n});
    Tensor i32_want = Tensor::empty({n}, DType::kI32);
    cast(i64, i32_want);
    Tensor i32_got = Tensor::empty({n}, DType::kI32, gpu());
    cast(on_gpu(i64), i32_got);
    expect_same_bytes(i32_got, i32_want, absl::StrCat("cast n=", n, " i64 -> i32"));
    Tensor i64_got = Tensor::empty({n}, DType::kI64, gpu());
    cast(i32_got, i64_got);
    expect_same_bytes(i64_got, i64, absl::StrCat("cast n=", n, " i32 -> i64"));
  }
}

TEST(CudaOps, FillMatchesCpuBitForBit) {
  FATHOM_REQUIRE_GPU();
  const std::vector<DType> types = {DType::kF32, DType::kBF16, DType::kF8E4M3, DType::kF8E5M2,
                                    DType::kI32, DType::kI64,  DType::kU8};
  for (int64_t n : awkward_sizes()) {
    for (DType dtype : types) {
      for (float value : {0.0f, -3.3f, 1000.0f}) {
        if (dtype == DType::kU8 && (value < 0 || value > 255)) continue;  // no u8 for those
        const std::string ctx = absl::StrCat("fill n=", n, " ", name(dtype), " value=", value);
        Tensor want = Tensor::empty({n}, dtype);
        fill(want, value);
        Tensor got = Tensor::empty({n}, dtype, gpu());
        fill(got, value);
        expect_same_bytes(got, want, ctx);
      }
    }
  }
}

TEST(CudaOps, AxpyAndScaleMatchCpu) {
  FATHOM_REQUIRE_GPU();
  for (int64_t n : awkward_sizes()) {
    for (DType dtype : float_dtypes()) {
      const std::string ctx = absl::StrCat("n=", n, " ", name(dtype));
      const Tensor x = random_tensor({n, 3}, 1, dtype);
      const Tensor y0 = random_tensor({n, 3}, 2, dtype);
      Tensor want = y0.clone();
      axpy(-0.75f, x, want);
      Tensor got = on_gpu(y0);
      axpy(-0.75f, on_gpu(x), got);
      expect_gpu_close(got, want, tolerance_for(dtype), "axpy " + ctx);
      scale(want, 1.5f);
      scale(got, 1.5f);
      expect_gpu_close(got, want, tolerance_for(dtype), "axpy+scale " + ctx);
    }
  }
}

TEST(CudaOps, SwigluAndSigmoidMatchCpu) {
  FATHOM_REQUIRE_GPU();
  for (int64_t n : awkward_sizes()) {
    for (DType dtype : float_dtypes()) {
      const std::string ctx = absl::StrCat("shape [2, ", n, "] ", name(dtype));
      const Tolerance tol = tolerance_for(dtype);
      const Tensor gate = random_tensor({2, n}, 3, dtype, Device::cpu(), -4.0f, 4.0f);
      const Tensor up = random_tensor({2, n}, 4, dtype);
      const Tensor dy = random_tensor({2, n}, 5, dtype);
      Tensor y = Tensor::empty({2, n}, dtype);
      Tensor y_gpu = Tensor::empty({2, n}, dtype, gpu());
      swiglu_forward(gate, up, y);
      swiglu_forward(on_gpu(gate), on_gpu(up), y_gpu);
      expect_gpu_close(y_gpu, y, tol, "swiglu_forward " + ctx);
      Tensor dgate = Tensor::empty({2, n}, dtype), dup = Tensor::empty({2, n}, dtype);
      Tensor dgate_gpu = Tensor::empty({2, n}, dtype, gpu());
      Tensor dup_gpu = Tensor::empty({2, n}, dtype, gpu());
      swiglu_backward(dy, gate, up, dgate, dup);
      swiglu_backward(on_gpu(dy), on_gpu(gate), on_gpu(up), dgate_gpu, dup_gpu);
      expect_gpu_close(dgate_gpu, dgate, tol, "swiglu_backward dgate " + ctx);
      expect_gpu_close(dup_gpu, dup, tol, "swiglu_backward dup " + ctx);
      Tensor s = Tensor::empty({2, n}, dtype);
      Tensor s_gpu = Tensor::empty({2, n}, dtype, gpu());
      sigmoid_forward(gate, s);
      sigmoid_forward(on_gpu(gate), s_gpu);
      expect_gpu_close(s_gpu, s, tol, "sigmoid_forward " + ctx);
      Tensor ds = Tensor::empty({2, n}, dtype);
      Tensor ds_gpu = Tensor::empty({2, n}, dtype, gpu());
      sigmoid_backward(dy, s, ds);
      sigmoid_backward(on_gpu(dy), on_gpu(s), ds_gpu);
      expect_gpu_close(ds_gpu, ds, tol, "sigmoid_backward " + ctx);
    }
  }
}

TEST(CudaOps, SoftmaxMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  for (int64_t cols : awkward_sizes()) {
    for (int64_t rows : {1, 33}) {
      for (DType dtype : float_dtypes()) {
        const std::string ctx = absl::StrCat("rows=", rows, " cols=", cols, " ", name(dtype));
        const Tolerance tol = tolerance_for(dtype);
        const Tensor x = random_tensor({rows, cols}, 6, dtype, Device::cpu(), -8.0f, 8.0f);
        const Tensor dy = random_tensor({rows, cols}, 7, dtype);
        Tensor y = Tensor::empty({rows, cols}, dtype);
        Tensor y_gpu = Tensor::empty({rows, cols}, dtype, gpu());
        softmax_forward(x, y);
        softmax_forward(on_gpu(x), y_gpu);
        expect_gpu_close(y_gpu, y, tol, "softmax_forward " + ctx);
        Tensor dx = Tensor::empty({rows, cols}, dtype);
        Tensor dx_gpu = Tensor::empty({rows, cols}, dtype, gpu());
        softmax_backward(dy, y, dx);
        softmax_backward(on_gpu(dy), on_gpu(y), dx_gpu);
        expect_gpu_close(dx_gpu, dx, tol, "softmax_backward " + ctx);
      }
    }
  }
}

TEST(CudaOps, RmsNormMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  for (int64_t cols : awkward_sizes()) {
    for (int64_t rows : {1, 33, 129}) {  // 129 rows: three partial sums for dw
      for (DType dtype : float_dtypes()) {
        const std::string ctx = absl::StrCat("rows=", rows, " cols=", cols, " ", name(dtype));
        const Tolerance tol = tolerance_for(dtype);
        const Tensor x = random_tensor({rows, cols}, 8, dtype);
        const Tensor w = random_tensor({cols}, 9, DType::kF32, Device::cpu(), 0.5f, 1.5f);
        const Tensor dy = random_tensor({rows, cols}, 10, dtype);
        Tensor y = Tensor::empty({rows, cols}, dtype), rstd = Tensor::empty({rows}, DType::kF32);
        Tensor y_gpu = Tensor::empty({rows, cols}, dtype, gpu());
        Tensor rstd_gpu = Tensor::empty({rows}, DType::kF32, gpu());
        rmsnorm_forward(x, w, 1e-6f, y, rstd);
        rmsnorm_forward(on_gpu(x), on_gpu(w), 1e-6f, y_gpu, rstd_gpu);
        expect_gpu_close(y_gpu, y, tol, "rmsnorm_forward y " + ctx);
        expect_gpu_close(rstd_gpu, rstd, tolerance_for(DType::kF32), "rmsnorm_forward rstd " + ctx);
        // dw accumulates: start from non-zero values.
        const Tensor dw0 = random_tensor({cols}, 11);
        Tensor dx = Tensor::empty({rows, cols}, dtype), dw = dw0.clone();
        Tensor dx_gpu = Tensor::empty({rows, cols}, dtype, gpu());
        Tensor dw_gpu = on_gpu(dw0);
        rmsnorm_backward(dy, x, w, rstd, dx, dw);
        rmsnorm_backward(on_gpu(dy), on_gpu(x), on_gpu(w), rstd_gpu, dx_gpu, dw_gpu);
        expect_gpu_close(dx_gpu, dx, scaled_tolerance(dtype, dx), "rmsnorm_backward dx " + ctx);
        expect_gpu_close(dw_gpu, dw, scaled_tolerance(DType::kF32, dw),
                         "rmsnorm_backward dw " + ctx);
      }
    }
  }
}

TEST(CudaOps, RopeMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  const int64_t max_position = 300;
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalf}) {
    for (bool yarn : {false, true}) {
      RopeConfig config;
      config.dim = 16;
      config.style = style;
      if (yarn) config.yarn = YarnConfig{.factor = 4.0f, .original_max_position = 64};
      const RopeTable table = make_rope_table(config, max_position);
      const RopeTable table_gpu = make_rope_table(config, max_position, gpu());
      for (int64_t tokens : awkward_sizes()) {
        for (DType dtype : float_dtypes()) {
          for (bool inverse : {false, true}) {
            const std::string ctx =
                absl::StrCat("tokens=", tokens, " heads=3 head_dim=24 rot=16 style=",
                             style == RopeStyle::kHalf ? "half" : "interleaved", " yarn=", yarn,
                             " inverse=", inverse, " ", name(dtype));
            const Tensor x0 = random_tensor({tokens, 3, 24}, 12, dtype);
            const Tensor pos = Tensor::from_vector(random_ids(tokens, max_position, 13), {tokens});
            Tensor want = x0.clone();
            rope_apply(want, pos, table, inverse);
            Tensor got = on_gpu(x0);
            rope_apply(got, on_gpu(pos), table_gpu, inverse);
            expect_gpu_close(got, want, tolerance_for(dtype), "rope_apply " + ctx);
          }
        }
      }
    }
  }
}

TEST(CudaOps, RopeOutOfRangePositionGivesNaNRotatedDims) {
  FATHOM_REQUIRE_GPU();
  // Positions are not checked on the host for CUDA tensors: the kernel marks the bad token.
  const int64_t max_position = 8, tokens = 3, heads = 2, head_dim = 6, rot = 4;
  const RopeTable table = make_rope_table({.dim = rot}, max_position, gpu());
  const Tensor x0 = random_tensor({tokens, heads, head_dim}, 29);
  Tensor x = on_gpu(x0);
  rope_apply(x, on_gpu(Tensor::from_vector(std::vector<int32_t>{1, 8, 2}, {tokens})), table);
  const std::vector<float> got = x.to_floats();
  const std::vector<float> before = x0.to_floats();
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t d = 0; d < head_dim; ++d) {
        const int64_t i = (t * heads + h) * head_dim + d;
        const bool rotated = d >= head_dim - rot;
        if (t == 1 && rotated) {
          EXPECT_TRUE(std::isnan(got[i])) << "token " << t << " head " << h << " dim " << d;
        } else if (!rotated) {
          EXPECT_EQ(got[i], before[i])
              << "unrotated dim changed: token " << t << " head " << h << " dim " << d;
        } else {
          EXPECT_FALSE(std::isnan(got[i])) << "token " << t << " head " << h << " dim " << d;
        }
      }
    }
  }
}

TEST(CudaOps, EmbeddingMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  const int64_t vocab = 50;
  for (int64_t tokens : awkward_sizes()) {
    for (int64_t d : {1, 33, 128}) {
      for (DType dtype : float_dtypes()) {
        const std::string ctx =
            absl::StrCat("tokens=", tokens, " vocab=", vocab, " d=", d, " ", name(dtype));
        // Few distinct ids: many repeats for the deterministic backward.
        const Tensor ids = Tensor::from_vector(random_ids(tokens, 7, 14), {tokens});
        const Tensor table = random_tensor({vocab, d}, 15, dtype);
        Tensor out = Tensor::empty({tokens, d}, dtype);
        Tensor out_gpu = Tensor::empty({tokens, d}, dtype, gpu());
        embedding_forward(ids, table, out);
        embedding_forward(on_gpu(ids), on_gpu(table), out_gpu);
        expect_same_bytes(out_gpu, out, "embedding_forward " + ctx);
        const Tensor dout = random_tensor({tokens, d}, 16, dtype);
        const Tensor dtable0 = random_tensor({vocab, d}, 17);
        Tensor dtable = dtable0.clone();
        Tensor dtable_gpu = on_gpu(dtable0);
        embedding_backward(ids, dout, dtable);
        embedding_backward(on_gpu(ids), on_gpu(dout), dtable_gpu);
        expect_gpu_close(dtable_gpu, dtable, tolerance_for(DType::kF32),
                         "embedding_backward " + ctx);
      }
    }
  }
}

TEST(CudaOps, TopkMatchesCpuIncludingTies) {
  FATHOM_REQUIRE_GPU();
  for (int64_t experts : awkward_sizes()) {
    for (int64_t k : {int64_t{1}, std::min<int64_t>(8, experts), experts}) {
      const std::string ctx = absl::StrCat("rows=33 experts=", experts, " k=", k);
      // Values on a coarse grid: many exact ties, which go to the lower index; some NaN, which
      // rank above every number.
      std::vector<float> v = random_values(static_cast<size_t>(33 * experts), 18, -4.0f, 4.0f);
      for (size_t i = 0; i < v.size(); ++i) {
        v[i] = i % 11 == 5 ? std::numeric_limits<float>::quiet_NaN() : std::round(v[i]);
      }
      const Tensor x = Tensor::from_floats(v, {33, experts});
      Tensor values = Tensor::empty({33, k}, DType::kF32);
      Tensor indices = Tensor::empty({33, k}, DType::kI32);
      Tensor values_gpu = Tensor::empty({33, k}, DType::kF32, gpu());
      Tensor indices_gpu = Tensor::empty({33, k}, DType::kI32, gpu());
      topk(x, k, values, indices);
      topk(on_gpu(x), k, values_gpu, indices_gpu);
      expect_same_bytes(values_gpu, values, "topk values " + ctx);
      expect_same_bytes(indices_gpu, indices, "topk indices " + ctx);
    }
  }
}

TEST(CudaOps, GatherScatterAndRowDotMatchCpu) {
  FATHOM_REQUIRE_GPU();
  const int64_t rows = 40;
  for (int64_t n : awkward_sizes()) {
    for (int64_t d : {1, 32, 129}) {
      for (DType dtype : float_dtypes()) {
        for (bool with_scale : {false, true}) {
          const std::string ctx = absl::StrCat("n=", n, " rows=", rows, " d=", d, " ", name(dtype),
                                               " scale=", with_scale);
          const Tolerance tol = tolerance_for(dtype);
          const Tensor index = Tensor::from_vector(random_ids(n, rows, 19), {n});
          const Tensor scale = with_scale ? random_tensor({n}, 20) : Tensor();
          const Tensor scale_gpu = with_scale ? on_gpu(scale) : Tensor();
          const Tensor x = random_tensor({rows, d}, 21, dtype);
          Tensor out = Tensor::empty({n, d}, dtype);
          Tensor out_gpu = Tensor::empty({n, d}, dtype, gpu());
          gather_rows(x, index, scale, out);
          gather_rows(on_gpu(x), on_gpu(index), scale_gpu, out_gpu);
          expect_gpu_close(out_gpu, out, tol, "gather_rows " + ctx);

          const Tensor src = random_tensor({n, d}, 22, dtype);
          const Tensor acc0 = random_tensor({rows, d}, 23, dtype);
          Tensor acc = acc0.clone();
          Tensor acc_gpu = on_gpu(acc0);
          scatter_add_rows(src, index, scale, acc);
          scatter_add_rows(on_gpu(src), on_gpu(index), scale_gpu, acc_gpu);
          expect_gpu_close(acc_gpu, acc, tol, "scatter_add_rows " + ctx);

          Tensor dot = Tensor::empty({n}, DType::kF32);
          Tensor dot_gpu = Tensor::empty({n}, DType::kF32, gpu());
          gathered_row_dot(x, index, src, dot);
          gathered_row_dot(on_gpu(x), on_gpu(index), on_gpu(src), dot_gpu);
          expect_gpu_close(dot_gpu, dot, scaled_tolerance(DType::kF32, dot),
                           "gathered_row_dot " + ctx);
        }
      }
    }
  }
}

TEST(CudaOps, TransposeMatchesCpuBitForBit) {
  FATHOM_REQUIRE_GPU();
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF8E4M3}) {
    for (int64_t m : awkward_sizes()) {
      for (int64_t n : {int64_t{1}, int64_t{33}, int64_t{128}}) {
        const std::string ctx = absl::StrCat(std::string(dtype_name(dtype)), " m=", m, " n=", n);
        const Tensor x = random_tensor({3, m, n}, 5, dtype);
        Tensor y = Tensor::empty({3, n, m}, dtype);
        Tensor y_gpu = Tensor::empty({3, n, m}, dtype, gpu());
        transpose(x, y);
        transpose(on_gpu(x), y_gpu);
        expect_same_bytes(y_gpu, y, "transpose " + ctx);
      }
    }
  }
}

TEST(CudaOps, CopyColumnsMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t rows : awkward_sizes()) {
      const Tensor src = random_tensor({rows, 37}, 9, dtype);
      Tensor dst = Tensor::zeros({rows, 20}, dtype);
      Tensor dst_gpu = Tensor::zeros({rows, 20}, dtype, gpu());
      copy_columns(src, 30, dst, 3, 7);
      copy_columns(on_gpu(src), 30, dst_gpu, 3, 7);
      expect_same_bytes(dst_gpu, dst, absl::StrCat("copy_columns rows=", rows));
    }
  }
}

TEST(CudaOps, ScatterAddIsDeterministic) {
  FATHOM_REQUIRE_GPU();
  // Thousands of contributions to three rows: any ordering race would show up as bit changes.
  const int64_t n = 4096, d = 33;
  const Tensor index = Tensor::from_vector(random_ids(n, 3, 24), {n});
  const Tensor x = on_gpu(random_tensor({n, d}, 25, DType::kF32, Device::cpu(), -1e3f, 1e3f));
  Tensor first = Tensor::zeros({3, d}, DType::kF32, gpu());
  scatter_add_rows(x, on_gpu(index), Tensor(), first);
  for (int repeat = 0; repeat < 3; ++repeat) {
    Tensor again = Tensor::zeros({3, d}, DType::kF32, gpu());
    scatter_add_rows(x, on_gpu(index), Tensor(), again);
    expect_same_bytes(again, first.to(Device::cpu()), absl::StrCat("repeat ", repeat));
  }
}

TEST(CudaOps, ReduceMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  for (Reduce op : {Reduce::kSum, Reduce::kMean, Reduce::kMax, Reduce::kSumSquares}) {
    for (int64_t cols : awkward_sizes()) {
      for (DType dtype : float_dtypes()) {
        const std::string ctx =
            absl::StrCat("op=", static_cast<int>(op), " rows=33 cols=", cols, " ", name(dtype));
        const Tensor x = random_tensor({33, cols}, 26, dtype);
        Tensor out = Tensor::empty({33}, DType::kF32);
        Tensor out_gpu = Tensor::empty({33}, DType::kF32, gpu());
        reduce_rows(x, op, out);
        reduce_rows(on_gpu(x), op, out_gpu);
        expect_gpu_close(out_gpu, out, scaled_tolerance(DType::kF32, out), "reduce_rows " + ctx);
        const double want = reduce_all(x, op);
        const double got = reduce_all(on_gpu(x), op);
        EXPECT_NEAR(got, want, 1e-9 * (1.0 + std::fabs(want) + static_cast<double>(x.numel())))
            << "reduce_all " << ctx;
      }
    }
    const Tensor empty = Tensor::empty({0, 4}, DType::kF32, gpu());
    EXPECT_EQ(reduce_all(empty, op), reduce_all(Tensor::empty({0, 4}, DType::kF32), op))
        << "reduce_all of an empty tensor, op=" << static_cast<int>(op);
  }
}

TEST(CudaOps, GlobalNormAndClipMatchCpu) {
  FATHOM_REQUIRE_GPU();
  for (int64_t n : awkward_sizes()) {
    const std::string ctx = absl::StrCat("grads f32[", n, "] and bf16[", n, ", 3], max_norm 0.5");
    Tensor a = random_tensor({n}, 30), b = random_tensor({n, 3}, 31, DType::kBF16);
    Tensor a_gpu = on_gpu(a), b_gpu = on_gpu(b);
    const double want = clip_grad_norm({&a, &b}, 0.5);
    const double got = clip_grad_norm({&a_gpu, &b_gpu}, 0.5);
    EXPECT_NEAR(got, want, 1e-9 * want) << "norm " << ctx;
    expect_gpu_close(a_gpu, a, tolerance_for(DType::kF32), "clipped a " + ctx);
    expect_gpu_close(b_gpu, b, tolerance_for(DType::kBF16), "clipped b " + ctx);
  }
}

TEST(CudaOps, AdamWMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  for (int64_t n : awkward_sizes()) {
    for (DType moments : float_dtypes()) {
      const std::string ctx = absl::StrCat("n=", n, " moments=", name(moments));
      Tensor p = random_tensor({n}, 27), m = Tensor::zeros({n}, moments),
             v = Tensor::zeros({n}, moments);
      Tensor p_gpu = on_gpu(p), m_gpu = on_gpu(m), v_gpu = on_gpu(v);
      AdamWConfig config;
      for (int64_t step = 1; step <= 3; ++step) {
        config.step = step;
        const Tensor g = random_tensor({n}, 28 + static_cast<uint32_t>(step));
        adamw_update(p, g, m, v, config);
        adamw_update(p_gpu, on_gpu(g), m_gpu, v_gpu, config);
      }
      expect_gpu_close(p_gpu, p, tolerance_for(DType::kF32), "adamw param " + ctx);
      expect_gpu_close(m_gpu, m, tolerance_for(moments), "adamw m " + ctx);
      expect_gpu_close(v_gpu, v, tolerance_for(moments), "adamw v " + ctx);
    }
  }
}

TEST(CudaAllocator, ReportsBytesAndReusesCacheOnOneStream) {
  FATHOM_REQUIRE_GPU();
  Allocator& alloc = cuda_allocator(0);
  const AllocatorStats before = alloc.stats();
  const int64_t bytes = 3 << 20;
  {
    Tensor t = Tensor::empty({bytes}, DType::kU8, gpu());
    const AllocatorStats during = alloc.stats();
    EXPECT_GE(during.current_bytes, before.current_bytes + static_cast<size_t>(bytes));
    EXPECT_GE(during.peak_bytes, during.current_bytes);
    EXPECT_GE(during.reserved_bytes, during.current_bytes);
  }
  const AllocatorStats after_free = alloc.stats();
  EXPECT_EQ(after_free.current_bytes, before.current_bytes) << "bytes=" << bytes;
  // Same size again on the same (default) stream: served from the cache, no cudaMalloc.
  {
    Tensor t = Tensor::empty({bytes}, DType::kU8, gpu());
    EXPECT_EQ(alloc.stats().backend_allocs, after_free.backend_allocs) << "bytes=" << bytes;
  }
  EXPECT_EQ(alloc.stats().current_bytes, before.current_bytes) << "bytes=" << bytes;
}

}  // namespace
}  // namespace fathom
