// Fused linear cross-entropy (kernels/ops/loss.h): forward against a full-softmax double
// reference, independence from the chunk size, ignore_index, backward against central finite
// differences of a double forward, O(T * chunk) memory, bf16, argument errors.
#include "kernels/ops/loss.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/allocator.h"
#include "tests/kernels/test_util.h"

namespace fathom {
namespace {

using testing::error_of;

using ::testing::HasSubstr;
using testing::random_tensor;

struct RefLoss {
  std::vector<double> loss, lse;
};

// Full softmax over all V logits, in double.
RefLoss reference_forward(const std::vector<double>& h, const std::vector<double>& w,
                          const std::vector<int32_t>& targets, int64_t d, int32_t ignore) {
  const int64_t t_count = static_cast<int64_t>(targets.size());
  const int64_t vocab = static_cast<int64_t>(w.size()) / d;
  RefLoss ref{std::vector<double>(t_count), std::vector<double>(t_count)};
  std::vector<double> logits(vocab);
  for (int64_t t = 0; t < t_count; ++t) {
    double m = -INFINITY;
    for (int64_t v = 0; v < vocab; ++v) {
      double z = 0;
      for (int64_t i = 0; i < d; ++i) z += h[t * d + i] * w[v * d + i];
      logits[v] = z;
      m = std::max(m, z);
    }
    double s = 0;
    for (double z : logits) s += std::exp(z - m);
    ref.lse[t] = m + std::log(s);
    ref.loss[t] = targets[t] == ignore ? 0.0 : ref.lse[t] - logits[targets[t]];
  }
  return ref;
}

std::vector<double> to_double(const Tensor& t) {
  const std::vector<float> f = t.to_floats();
  return std::vector<double>(f.begin(), f.end());
}

std::vector<float> to_float_vec(const std::vector<double>& d) {
  return std::vector<float>(d.begin(), d.end());
}

std::vector<int32_t> random_targets(int64_t n, int32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = dist(rng);
  return t;
}

struct Forward {
  Tensor loss, lse;
};
Forward run_forward(const Tensor& h, const Tensor& w, const std::vector<int32_t>& targets,
                    const CrossEntropyOptions& options) {
  const int64_t t = h.dim(0);
  Forward f{Tensor::empty({t}, DType::kF32), Tensor::empty({t}, DType::kF32)};
  fused_linear_cross_entropy_forward(h, w, Tensor::from_vector(targets, {t}), f.loss, f.lse,
                                     options);
  return f;
}

// Logits of a few units, so the softmax is far from uniform.
constexpr float kRange = 2.0f;

TEST(CrossEntropy, ForwardMatchesFullSoftmaxAtEveryChunkSize) {
  const int64_t t = 13, d = 24, vocab = 50;
  const Tensor h = random_tensor({t, d}, 1, DType::kF32, Device::cpu(), -kRange, kRange);
  const Tensor w = random_tensor({vocab, d}, 2, DType::kF32, Device::cpu(), -kRange, kRange);
  std::vector<int32_t> targets = random_targets(t, vocab, 3);
  targets[0] = 0;
  targets[1] = vocab - 1;
  const RefLoss ref = reference_forward(to_double(h), to_double(w), targets, d, -1);
  std::vector<float> loss_at_v;
  for (int64_t chunk : {vocab, int64_t{1}, int64_t{7}, vocab + 3, int64_t{4096}}) {
    CrossEntropyOptions options;
    options.chunk_size = chunk;
    const Forward f = run_forward(h, w, targets, options);
    const std::string ctx = "T 13 D 24 V 50 chunk " + std::to_string(chunk);
    testing::expect_close(f.loss.to_floats(), to_float_vec(ref.loss), {2e-5, 1e-5}, ctx + " loss");
    testing::expect_close(f.lse.to_floats(), to_float_vec(ref.lse), {2e-5, 1e-5}, ctx + " lse");
    // Chunking only reorders the sums: every chunk size agrees with the single-chunk result to
    // within a few f32 ulps.
    if (chunk == vocab) loss_at_v = f.loss.to_floats();
    testing::expect_close(f.loss.to_floats(), loss_at_v, {1e-6, 1e-6}, ctx + " vs chunk V");
  }
}

TEST(CrossEntropy, IgnoredTargetsContributeNothing) {
  const int64_t t = 9, d = 8, vocab = 20;
  const Tensor h = random_tensor({t, d}, 11, DType::kF32, Device::cpu(), -kRange, kRange);
  const Tensor w = random_tensor({vocab, d}, 12, DType::kF32, Device::cpu(), -kRange, kRange);
  for (int32_t ignore : {-1, -100, 7}) {
    std::vector<int32_t> targets = random_targets(t, vocab, 13);
    targets[2] = ignore;
    targets[5] = ignore;
    targets[8] = 7 == ignore ? 3 : 7;
    CrossEntropyOptions options;
    options.chunk_size = 6;
    options.ignore_index = ignore;
    const Forward f = run_forward(h, w, targets, options);
    const RefLoss ref = reference_forward(to_double(h), to_double(w), targets, d, ignore);
    const std::string ctx = "ignore_index " + std::to_string(ignore);
    testing::expect_close(f.loss.to_floats(), to_float_vec(ref.loss), {2e-5, 1e-5}, ctx);
    EXPECT_EQ(f.loss.to_floats()[2], 0.0f) << ctx;
    EXPECT_EQ(f.loss.to_floats()[5], 0.0f) << ctx;

    // Backward: the ignored rows of dh are zero even with a nonzero dloss, and dw equals the
    // gradient computed without those tokens.
    const Tensor dloss = random_tensor({t}, 14, DType::kF32, Device::cpu(), 0.5f, 1.5f);
    Tensor dh = Tensor::empty({t, d}, DType::kF32);
    Tensor dw = Tensor::zeros({vocab, d}, DType::kF32);
    fused_linear_cross_entropy_backward(h, w, Tensor::from_vector(targets, {t}), f.lse, dloss, dh,
                                        dw, options);
    const std::vector<float> dhv = dh.to_floats();
    for (int64_t i = 0; i < d; ++i) {
      EXPECT_EQ(dhv[2 * d + i], 0.0f) << ctx;
      EXPECT_EQ(dhv[5 * d + i], 0.0f) << ctx;
    }
    std::vector<float> dl = dloss.to_floats();
    std::vector<int32_t> kept = targets;
    for (int64_t i = 0; i < t; ++i) {
      if (targets[i] == ignore) {
        dl[i] = 0.0f;
        kept[i] = 0;  // any valid target: its dloss is now 0
      }
    }
    Tensor dh2 = Tensor::empty({t, d}, DType::kF32);
    Tensor dw2 = Tensor::zeros({vocab, d}, DType::kF32);
    CrossEntropyOptions plain = options;
    plain.ignore_index = -12345;
    fused_linear_cross_entropy_backward(h, w, Tensor::from_vector(kept, {t}), f.lse,
                                        Tensor::from_floats(dl, {t}), dh2, dw2, plain);
    testing::expect_close(dw, dw2, {1e-6, 1e-5}, ctx + " dw");
    testing::expect_close(dh, dh2, {1e-6, 1e-5}, ctx + " dh");
  }
}

// dh and dw against central differences of sum_t dloss_t * loss_t computed in double.
TEST(CrossEntropy, BackwardMatchesFiniteDifferences) {
  const int64_t t = 5, d = 6, vocab = 11;
  for (int64_t chunk : {int64_t{4}, vocab}) {
    const Tensor h = random_tensor({t, d}, 21, DType::kF32, Device::cpu(), -kRange, kRange);
    const Tensor w = random_tensor({vocab, d}, 22, DType::kF32, Device::cpu(), -kRange, kRange);
    std::vector<int32_t> targets = random_targets(t, vocab, 23);
    targets[3] = -1;
    const Tensor dloss = random_tensor({t}, 24, DType::kF32, Device::cpu(), -1.0f, 1.0f);
    CrossEntropyOptions options;
    options.chunk_size = chunk;
    const Forward f = run_forward(h, w, targets, options);
    Tensor dh = Tensor::empty({t, d}, DType::kF32);
    Tensor dw = random_tensor({vocab, d}, 25);  // dw accumulates onto what is there
    const std::vector<float> dw0 = dw.to_floats();
    fused_linear_cross_entropy_backward(h, w, Tensor::from_vector(targets, {t}), f.lse, dloss, dh,
                                        dw, options);

    std::vector<double> hd = to_double(h), wd = to_double(w);
    const std::vector<double> dl = to_double(dloss);
    auto total = [&] {
      const RefLoss r = reference_forward(hd, wd, targets, d, -1);
      double s = 0;
      for (int64_t i = 0; i < t; ++i) s += dl[i] * r.loss[i];
      return s;
    };
    const std::vector<double> fd_h = testing::finite_difference(hd, total);
    std::vector<double> fd_w = testing::finite_difference(wd, total);
    for (size_t i = 0; i < fd_w.size(); ++i) fd_w[i] += dw0[i];
    const std::string ctx = "T 5 D 6 V 11 chunk " + std::to_string(chunk);
    testing::expect_close(dh.to_floats(), to_float_vec(fd_h), {1e-5, 1e-4}, ctx + " dh");
    testing::expect_close(dw.to_floats(), to_float_vec(fd_w), {1e-5, 1e-4}, ctx + " dw");
  }
}

// The op never materialises T x V logits: its peak allocation stays far below T * V floats.
TEST(CrossEntropy, MemoryIsPerChunkNotPerVocabulary) {
  const int64_t t = 64, d = 16, vocab = 50000, chunk = 1024;
  const Tensor h = random_tensor({t, d}, 31);
  const Tensor w = random_tensor({vocab, d}, 32);
  const Tensor targets = Tensor::from_vector(random_targets(t, vocab, 33), {t});
  Tensor loss = Tensor::empty({t}, DType::kF32), lse = Tensor::empty({t}, DType::kF32);
  Tensor dh = Tensor::empty({t, d}, DType::kF32);
  Tensor dw = Tensor::zeros({vocab, d}, DType::kF32);
  const Tensor dloss = Tensor::from_floats(std::vector<float>(t, 1.0f / t), {t});
  CrossEntropyOptions options;
  options.chunk_size = chunk;
  const size_t full_logits = static_cast<size_t>(t * vocab) * sizeof(float);   // 12.8 MB
  const size_t chunk_logits = static_cast<size_t>(t * chunk) * sizeof(float);  // 256 KB

  Allocator& alloc = cpu_allocator();
  alloc.reset_peak();
  size_t base = alloc.stats().current_bytes;
  fused_linear_cross_entropy_forward(h, w, targets, loss, lse, options);
  const size_t forward_growth = alloc.stats().peak_bytes - base;
  alloc.reset_peak();
  base = alloc.stats().current_bytes;
  fused_linear_cross_entropy_backward(h, w, targets, lse, dloss, dh, dw, options);
  const size_t backward_growth = alloc.stats().peak_bytes - base;
  EXPECT_GE(forward_growth, chunk_logits) << "the chunk's logits are allocated as a tensor";
  EXPECT_LT(forward_growth, 2 * chunk_logits) << "T*V*4 = " << full_logits;
  EXPECT_LT(backward_growth, 2 * chunk_logits) << "T*V*4 = " << full_logits;
  // The loss is still right at this size: compare a few tokens with the double reference.
  const std::vector<double> hd = to_double(h), wd = to_double(w);
  const std::vector<int32_t> tv = targets.to_vector<int32_t>();
  const std::vector<int32_t> few(tv.begin(), tv.begin() + 3);
  const RefLoss ref =
      reference_forward(std::vector<double>(hd.begin(), hd.begin() + 3 * d), wd, few, d, -1);
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(loss.to_floats()[i], ref.loss[i], 1e-4) << "token " << i;
  }
}

// bf16 h and w: computed in f32 from the bf16 values, so the result matches the f32 op on the
// same (rounded) values closely; dh comes back rounded to bf16.
TEST(CrossEntropy, Bf16CloseToF32) {
  const int64_t t = 17, d = 40, vocab = 90;
  const Tensor hb = random_tensor({t, d}, 41, DType::kBF16, Device::cpu(), -kRange, kRange);
  const Tensor wb = random_tensor({vocab, d}, 42, DType::kBF16, Device::cpu(), -kRange, kRange);
  const Tensor hf = Tensor::from_floats(hb.to_floats(), {t, d});
  const Tensor wf = Tensor::from_floats(wb.to_floats(), {vocab, d});
  const std::vector<int32_t> targets = random_targets(t, vocab, 43);
  CrossEntropyOptions options;
  options.chunk_size = 32;
  const Forward fb = run_forward(hb, wb, targets, options);
  const Forward ff = run_forward(hf, wf, targets, options);
  testing::expect_close(fb.loss, ff.loss, {1e-5, 1e-5}, "bf16 loss vs f32 on the same values");
  const Tensor dloss = Tensor::from_floats(std::vector<float>(t, 1.0f), {t});
  Tensor dhb = Tensor::empty({t, d}, DType::kBF16), dhf = Tensor::empty({t, d}, DType::kF32);
  Tensor dwb = Tensor::zeros({vocab, d}, DType::kF32), dwf = Tensor::zeros({vocab, d}, DType::kF32);
  const Tensor tt = Tensor::from_vector(targets, {t});
  fused_linear_cross_entropy_backward(hb, wb, tt, fb.lse, dloss, dhb, dwb, options);
  fused_linear_cross_entropy_backward(hf, wf, tt, ff.lse, dloss, dhf, dwf, options);
  testing::expect_close(dhb, dhf, {1e-5, std::ldexp(1.0, -8)}, "bf16 dh");
  testing::expect_close(dwb, dwf, {1e-5, 1e-5}, "bf16 dw");
}

TEST(CrossEntropy, BadArgumentsNameOpAndShapes) {
  const Tensor h = Tensor::zeros({4, 8}, DType::kF32);
  const Tensor w = Tensor::zeros({10, 8}, DType::kF32);
  Tensor loss = Tensor::empty({4}, DType::kF32), lse = Tensor::empty({4}, DType::kF32);
  const Tensor targets = Tensor::from_vector(std::vector<int32_t>{1, 2, 10, 3}, {4});
  EXPECT_THAT(error_of([&] { fused_linear_cross_entropy_forward(h, w, targets, loss, lse); }),
              HasSubstr("fused_linear_cross_entropy_forward: targets[2] = 10 is outside [0, 10) "
                        "and is not ignore_index -1"));
  const Tensor ok = Tensor::from_vector(std::vector<int32_t>{1, 2, 3, 4}, {4});
  EXPECT_THAT(
      error_of([&] {
        fused_linear_cross_entropy_forward(h, Tensor::zeros({10, 9}, DType::kF32), ok, loss, lse);
      }),
      HasSubstr("fused_linear_cross_entropy_forward: w must be (V, 8) with V >= 1 for h "
                "f32[4, 8]@cpu, got f32[10, 9]@cpu"));
  CrossEntropyOptions zero_chunk;
  zero_chunk.chunk_size = 0;
  EXPECT_THAT(
      error_of([&] { fused_linear_cross_entropy_forward(h, w, ok, loss, lse, zero_chunk); }),
      HasSubstr("fused_linear_cross_entropy_forward: chunk_size must be >= 1, got 0"));
  Tensor short_loss = Tensor::empty({3}, DType::kF32);
  EXPECT_THAT(error_of([&] { fused_linear_cross_entropy_forward(h, w, ok, short_loss, lse); }),
              HasSubstr("fused_linear_cross_entropy_forward: loss must have shape [4], got "
                        "f32[3]@cpu"));
  Tensor dh = Tensor::empty({4, 8}, DType::kF32);
  Tensor dw = Tensor::zeros({10, 8}, DType::kBF16);
  EXPECT_THAT(
      error_of([&] { fused_linear_cross_entropy_backward(h, w, ok, lse, lse, dh, dw); }),
      HasSubstr("fused_linear_cross_entropy_backward: dw must be f32, got bf16[10, 8]@cpu"));
}

}  // namespace
}  // namespace fathom
