// Attention (kernels/ops/attention.h): forward and lse against a naive double reference (MLA head
// dims, grouped-query heads, causal and not, several query blocks), backward against central
// finite differences of a double forward, bf16, argument errors.
#include "kernels/ops/attention.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "tests/kernels/test_util.h"

namespace fathom {
namespace {

using testing::error_of;

using ::testing::HasSubstr;
using testing::random_tensor;

struct Config {
  int64_t b, s, h, hkv, dqk, dv;
  bool causal = true;
  float scale = 0.0f;
  std::string str() const {
    std::ostringstream os;
    os << "B " << b << " S " << s << " H " << h << " Hkv " << hkv << " Dqk " << dqk << " Dv " << dv
       << " causal " << causal << " scale " << scale;
    return os.str();
  }
  AttentionOptions options() const { return {scale, causal}; }
};

std::vector<double> to_double(const Tensor& t) {
  const std::vector<float> f = t.to_floats();
  return std::vector<double>(f.begin(), f.end());
}
std::vector<float> to_float_vec(const std::vector<double>& d) {
  return std::vector<float>(d.begin(), d.end());
}

// out (B, S, H, Dv) and lse (B, H, S) straight from the definition, in double.
void reference_forward(const Config& c, const std::vector<double>& q, const std::vector<double>& k,
                       const std::vector<double>& v, std::vector<double>& out,
                       std::vector<double>& lse) {
  const double scale = c.scale > 0 ? c.scale : 1.0 / std::sqrt(static_cast<double>(c.dqk));
  out.assign(c.b * c.s * c.h * c.dv, 0.0);
  lse.assign(c.b * c.h * c.s, 0.0);
  std::vector<double> p(c.s);
  for (int64_t b = 0; b < c.b; ++b) {
    for (int64_t h = 0; h < c.h; ++h) {
      const int64_t hk = h / (c.h / c.hkv);
      for (int64_t i = 0; i < c.s; ++i) {
        const int64_t n = c.causal ? i + 1 : c.s;
        double m = -INFINITY;
        for (int64_t j = 0; j < n; ++j) {
          double dot = 0;
          for (int64_t x = 0; x < c.dqk; ++x) {
            dot += q[((b * c.s + i) * c.h + h) * c.dqk + x] *
                   k[((b * c.s + j) * c.hkv + hk) * c.dqk + x];
          }
          p[j] = dot * scale;
          m = std::max(m, p[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < n; ++j) sum += (p[j] = std::exp(p[j] - m));
        lse[(b * c.h + h) * c.s + i] = m + std::log(sum);
        for (int64_t j = 0; j < n; ++j) {
          for (int64_t x = 0; x < c.dv; ++x) {
            out[((b * c.s + i) * c.h + h) * c.dv + x] +=
                p[j] / sum * v[((b * c.s + j) * c.hkv + hk) * c.dv + x];
          }
        }
      }
    }
  }
}

struct Inputs {
  Tensor q, k, v;
};
Inputs make_inputs(const Config& c, uint32_t seed, DType dtype = DType::kF32) {
  // Scores of a few units: softmax rows that are neither one-hot nor uniform.
  return {random_tensor({c.b, c.s, c.h, c.dqk}, seed, dtype, Device::cpu(), -1.5f, 1.5f),
          random_tensor({c.b, c.s, c.hkv, c.dqk}, seed + 1, dtype, Device::cpu(), -1.5f, 1.5f),
          random_tensor({c.b, c.s, c.hkv, c.dv}, seed + 2, dtype)};
}

TEST(Attention, ForwardMatchesReference) {
  const std::vector<Config> configs = {
      {2, 5, 2, 2, 8, 8},
      {1, 70, 2, 2, 192, 128},       // MLA head dims, two query blocks
      {2, 33, 4, 2, 16, 12},         // GQA
      {1, 130, 4, 1, 8, 4},          // multi-query, three query blocks
      {2, 31, 4, 2, 16, 12, false},  // not causal
      {1, 129, 2, 1, 24, 8, false, 0.3f},
      {1, 1, 1, 1, 3, 5},
  };
  uint32_t seed = 1;
  for (const Config& c : configs) {
    const Inputs in = make_inputs(c, seed);
    seed += 3;
    Tensor out = Tensor::empty({c.b, c.s, c.h, c.dv}, DType::kF32);
    Tensor lse = Tensor::empty({c.b, c.h, c.s}, DType::kF32);
    attention_forward(in.q, in.k, in.v, c.options(), out, lse);
    std::vector<double> ref_out, ref_lse;
    reference_forward(c, to_double(in.q), to_double(in.k), to_double(in.v), ref_out, ref_lse);
    testing::expect_close(out.to_floats(), to_float_vec(ref_out), {2e-6, 1e-5}, c.str() + " out");
    testing::expect_close(lse.to_floats(), to_float_vec(ref_lse), {2e-6, 1e-5}, c.str() + " lse");
  }
}

// dq, dk, dv against central differences of sum(out * dout) computed in double.
TEST(Attention, BackwardMatchesFiniteDifferences) {
  const std::vector<Config> configs = {
      {2, 6, 4, 2, 5, 3},         // GQA, batch 2
      {1, 67, 2, 1, 3, 2},        // two query blocks, multi-query
      {1, 7, 2, 2, 6, 4, false},  // not causal
      {1, 9, 3, 3, 4, 5, true, 0.7f},
  };
  uint32_t seed = 100;
  for (const Config& c : configs) {
    const Inputs in = make_inputs(c, seed);
    const Tensor dout = random_tensor({c.b, c.s, c.h, c.dv}, seed + 3);
    seed += 4;
    Tensor out = Tensor::empty({c.b, c.s, c.h, c.dv}, DType::kF32);
    Tensor lse = Tensor::empty({c.b, c.h, c.s}, DType::kF32);
    attention_forward(in.q, in.k, in.v, c.options(), out, lse);
    Tensor dq = Tensor::empty(in.q.shape(), DType::kF32);
    Tensor dk = Tensor::empty(in.k.shape(), DType::kF32);
    Tensor dv = Tensor::empty(in.v.shape(), DType::kF32);
    attention_backward(in.q, in.k, in.v, out, lse, dout, c.options(), dq, dk, dv);

    std::vector<double> q = to_double(in.q), k = to_double(in.k), v = to_double(in.v);
    const std::vector<double> g = to_double(dout);
    auto objective = [&] {
      std::vector<double> o, l;
      reference_forward(c, q, k, v, o, l);
      double s = 0;
      for (size_t i = 0; i < o.size(); ++i) s += o[i] * g[i];
      return s;
    };
    const testing::Tolerance tol{1e-5, 1e-4};
    testing::expect_close(dq.to_floats(), to_float_vec(testing::finite_difference(q, objective)),
                          tol, c.str() + " dq");
    testing::expect_close(dk.to_floats(), to_float_vec(testing::finite_difference(k, objective)),
                          tol, c.str() + " dk");
    testing::expect_close(dv.to_floats(), to_float_vec(testing::finite_difference(v, objective)),
                          tol, c.str() + " dv");
  }
}

// bf16 inputs: the op computes in f32 from the bf16 values and rounds its outputs to bf16, so it
// agrees with the f32 op on the same values within bf16 rounding.
TEST(Attention, Bf16WithinBf16Tolerance) {
  const Config c{2, 70, 4, 2, 32, 16};
  const Inputs b = make_inputs(c, 200, DType::kBF16);
  const Inputs f{Tensor::from_floats(b.q.to_floats(), b.q.shape()),
                 Tensor::from_floats(b.k.to_floats(), b.k.shape()),
                 Tensor::from_floats(b.v.to_floats(), b.v.shape())};
  const Tensor dout_b = random_tensor({c.b, c.s, c.h, c.dv}, 203, DType::kBF16);
  const Tensor dout_f = Tensor::from_floats(dout_b.to_floats(), dout_b.shape());
  Tensor out_b = Tensor::empty({c.b, c.s, c.h, c.dv}, DType::kBF16);
  Tensor out_f = Tensor::empty({c.b, c.s, c.h, c.dv}, DType::kF32);
  Tensor lse_b = Tensor::empty({c.b, c.h, c.s}, DType::kF32);
  Tensor lse_f = Tensor::empty({c.b, c.h, c.s}, DType::kF32);
  attention_forward(b.q, b.k, b.v, c.options(), out_b, lse_b);
  attention_forward(f.q, f.k, f.v, c.options(), out_f, lse_f);
  const testing::Tolerance bf16_tol = testing::tolerance_for(DType::kBF16);
  testing::expect_close(out_b, out_f, bf16_tol, c.str() + " out");
  testing::expect_close(lse_b, lse_f, {1e-5, 1e-5}, c.str() + " lse");
  Tensor dq_b = Tensor::empty(b.q.shape(), DType::kBF16),
         dq_f = Tensor::empty(b.q.shape(), DType::kF32);
  Tensor dk_b = Tensor::empty(b.k.shape(), DType::kBF16),
         dk_f = Tensor::empty(b.k.shape(), DType::kF32);
  Tensor dv_b = Tensor::empty(b.v.shape(), DType::kBF16),
         dv_f = Tensor::empty(b.v.shape(), DType::kF32);
  attention_backward(b.q, b.k, b.v, out_b, lse_b, dout_b, c.options(), dq_b, dk_b, dv_b);
  attention_backward(f.q, f.k, f.v, out_f, lse_f, dout_f, c.options(), dq_f, dk_f, dv_f);
  testing::expect_close(dq_b, dq_f, bf16_tol, c.str() + " dq");
  testing::expect_close(dk_b, dk_f, bf16_tol, c.str() + " dk");
  testing::expect_close(dv_b, dv_f, bf16_tol, c.str() + " dv");
}

TEST(Attention, BadArgumentsNameOpAndShapes) {
  const Tensor q = Tensor::zeros({1, 4, 3, 8}, DType::kF32);
  const Tensor k = Tensor::zeros({1, 4, 2, 8}, DType::kF32);
  const Tensor v = Tensor::zeros({1, 4, 2, 6}, DType::kF32);
  Tensor out = Tensor::empty({1, 4, 3, 6}, DType::kF32);
  Tensor lse = Tensor::empty({1, 3, 4}, DType::kF32);
  EXPECT_THAT(error_of([&] { attention_forward(q, k, v, {}, out, lse); }),
              HasSubstr("attention_forward: expected q (B, S, H, Dqk), k (B, S, Hkv, Dqk), v (B, "
                        "S, Hkv, Dv) with Dqk >= 1 and H a multiple of Hkv; got q f32[1, 4, 3, "
                        "8]@cpu, k f32[1, 4, 2, 8]@cpu, v f32[1, 4, 2, 6]@cpu"));
  const Tensor q4 = Tensor::zeros({1, 4, 4, 8}, DType::kF32);
  Tensor out4 = Tensor::empty({1, 4, 4, 6}, DType::kF32);
  Tensor lse_bad = Tensor::empty({1, 4, 3}, DType::kF32);
  EXPECT_THAT(error_of([&] { attention_forward(q4, k, v, {}, out4, lse_bad); }),
              HasSubstr("attention_forward: lse must have shape [1, 4, 4], got f32[1, 4, 3]@cpu"));
  const Tensor kb = Tensor::zeros({1, 4, 2, 8}, DType::kBF16);
  EXPECT_THAT(error_of([&] { attention_forward(q4, kb, v, {}, out4, lse); }),
              HasSubstr("attention_forward: q, k and v must have one dtype"));
  Tensor lse4 = Tensor::empty({1, 4, 4}, DType::kF32);
  Tensor dq = Tensor::empty({1, 4, 4, 8}, DType::kF32),
         dv = Tensor::empty({1, 4, 2, 6}, DType::kF32);
  Tensor dk_bad = Tensor::empty({1, 4, 4, 8}, DType::kF32);
  EXPECT_THAT(
      error_of([&] { attention_backward(q4, k, v, out4, lse4, out4, {}, dq, dk_bad, dv); }),
      HasSubstr("attention_backward: dk must have shape [1, 4, 2, 8], got f32[1, 4, 4, 8]@cpu"));
  EXPECT_THAT(error_of([&] {
                attention_forward(q4, k, v, {-1.0f, true}, out4, lse4);
              }),
              HasSubstr("attention_forward: scale must be finite and >= 0"));
}

}  // namespace
}  // namespace fathom
