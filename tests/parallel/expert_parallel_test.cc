// Tests of the expert-parallel token dispatcher (parallel/expert_parallel.h) over the world
// communicator as one EP group, at any world size P:
// - rows of x encode (source rank, token), the routing reaches every rank, leaves one (source,
//   destination) pair and one local expert empty: dispatch delivers exactly the expected rows
//   grouped by local expert (source-major within an expert), with the counts and the metrics;
//   combine brings each selection's row back to its origin; dispatch_backward sums a token's rows;
// - combine_backward and dispatch_backward are exact adjoints (dyadic values, dot products in
//   double summed over ranks), with ranks of different batch sizes (from 3 ranks on, one with
//   no tokens);
// - the DeepSeekMoE layer with the EP dispatcher (local expert slices) reproduces the single-rank
//   layer on the same global batch: outputs, input gradients, expert and gate gradients, the
//   balance loss and the expert load;
// - FP8 dispatch delivers dequantize(quantize(x)) rows exactly while combine and the backward stay
//   f32, and the byte metrics show the smaller payload;
// - two micro-batches in flight, their calls interleaved, each use only their own plan;
// - errors: experts that do not split over the ranks, bad expert ids, and ranks that disagree on
//   the row width or on the call all throw on every rank (no rank is left waiting).
#include "parallel/expert_parallel.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "kernels/fp8.h"
#include "model/config.h"
#include "model/moe.h"
#include "parallel/mpi_env.h"
#include "tests/kernels/test_util.h"

namespace fathom::parallel {
namespace {

using model::DispatchPlan;

Communicator& world() { return world_communicator(); }

// Sum over ranks of a double, exact and in rank order on every rank (the bits travel as i64).
double sum_over_ranks(Communicator& comm, double v) {
  int64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  Tensor mine = Tensor::from_vector(std::vector<int64_t>{bits}, {1});
  Tensor all = Tensor::empty({comm.size()}, DType::kI64);
  all_gather_sync(comm, mine, all);
  double sum = 0;
  for (int64_t b : all.to_vector<int64_t>()) {
    double d;
    std::memcpy(&d, &b, sizeof d);
    sum += d;
  }
  return sum;
}

double dot(const Tensor& a, const Tensor& b) {
  const std::vector<float> va = a.to_floats(), vb = b.to_floats();
  EXPECT_EQ(va.size(), vb.size());
  double s = 0;
  for (size_t i = 0; i < va.size() && i < vb.size(); ++i) s += double{va[i]} * double{vb[i]};
  return s;
}

// Values m / 16 with m in [-64, 64]: sums of a few of them and their products are exact in f32
// and double, so adjoint identities hold exactly.
Tensor dyadic_tensor(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(-64, 64);
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (float& x : v) x = static_cast<float>(dist(rng)) / 16.0f;
  return Tensor::from_floats(v, {rows, cols});
}

// The first mismatch of two float vectors, or "" when equal.
std::string first_difference(const std::vector<float>& got, const std::vector<float>& want,
                             int64_t cols) {
  if (got.size() != want.size()) {
    return "size " + std::to_string(got.size()) + " vs " + std::to_string(want.size());
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) {
      std::ostringstream os;
      os << "row " << i / cols << " col " << i % cols << ": got " << got[i] << ", want " << want[i];
      return os.str();
    }
  }
  return "";
}

// ---- A routing with known traffic ----
//
// E = 3P experts (3 per rank), K = 2. Source rank s has T_s = 3 + 2s tokens; token t picks
// allowed_s[(3t + k) % |allowed_s|], where allowed_s is every expert except expert 1 (rank 0's
// second local expert stays empty) and, for s = 0 with P > 1, rank P-1's experts (an empty send).
// x_s[t, c] = 1000 s + t + c / 64: the row names its source and token.
constexpr int64_t kLocal = 3;
constexpr int64_t kTopK = 2;

struct Source {
  int64_t tokens;
  std::vector<int32_t> topk;  // (tokens, K)
  std::vector<float> x;       // (tokens, dim)
};

// shift != 0 gives another micro-batch: shift more tokens, routing rotated by shift.
Source make_source(int s, int p, int64_t dim, int64_t shift = 0) {
  const int64_t e_count = kLocal * p;
  std::vector<int32_t> allowed;
  for (int64_t e = 0; e < e_count; ++e) {
    if (e == 1) continue;
    if (s == 0 && p > 1 && e / kLocal == p - 1) continue;
    allowed.push_back(static_cast<int32_t>(e));
  }
  Source src;
  src.tokens = 3 + 2 * s + shift;
  const int64_t a = static_cast<int64_t>(allowed.size());
  for (int64_t t = 0; t < src.tokens; ++t) {
    for (int64_t k = 0; k < kTopK; ++k) src.topk.push_back(allowed[(3 * t + k + shift) % a]);
    for (int64_t c = 0; c < dim; ++c) {
      src.x.push_back(static_cast<float>(1000 * s + t) + static_cast<float>(c) / 64.0f);
    }
  }
  return src;
}

// The "expert computation" of the round-trip tests: local expert j (global first + j) multiplies
// its rows by first + j + 1.
Tensor scale_by_expert(const Tensor& expert_tokens, const std::vector<int64_t>& counts,
                       int64_t first) {
  std::vector<float> v = expert_tokens.to_floats();
  const int64_t dim = expert_tokens.dim(1);
  int64_t row = 0;
  for (size_t j = 0; j < counts.size(); ++j) {
    for (int64_t i = 0; i < counts[j]; ++i, ++row) {
      for (int64_t c = 0; c < dim; ++c) v[row * dim + c] *= static_cast<float>(first + j + 1);
    }
  }
  EXPECT_EQ(row, expert_tokens.dim(0));
  return Tensor::from_floats(v, {expert_tokens.dim(0), dim});
}

// What combine returns after scale_by_expert: row t * K + k = x[t] * (topk[t, k] + 1).
std::vector<float> scaled_selections(const Source& src, int64_t dim) {
  std::vector<float> out;
  for (int64_t sel = 0; sel < src.tokens * kTopK; ++sel) {
    const int64_t t = sel / kTopK;
    for (int64_t c = 0; c < dim; ++c) {
      out.push_back(src.x[t * dim + c] * static_cast<float>(src.topk[sel] + 1));
    }
  }
  return out;
}

TEST(ExpertParallel, DispatchDeliversRowsGroupedByLocalExpertAndCombineReturnsThem) {
  Communicator& comm = world();
  const int p = comm.size();
  const int r = comm.rank();
  const int64_t dim = 5;
  const int64_t e_count = kLocal * p;
  std::vector<Source> sources;
  for (int s = 0; s < p; ++s) sources.push_back(make_source(s, p, dim));
  const Source& me = sources[r];

  ExpertParallelDispatcher dispatcher(comm, e_count);
  EXPECT_EQ(dispatcher.n_local_experts(), kLocal);
  EXPECT_EQ(dispatcher.first_local_expert(), r * kLocal);
  const Tensor x = Tensor::from_floats(me.x, {me.tokens, dim});
  const Tensor topk = Tensor::from_vector(me.topk, {me.tokens, kTopK});
  DispatchPlan plan;
  Tensor expert_tokens;
  std::vector<int64_t> counts;
  dispatcher.dispatch(x, topk, plan, expert_tokens, counts);

  // Expected: for each local expert, the rows of every source in rank order, then selection order.
  std::vector<float> want;
  std::vector<int64_t> want_counts(kLocal, 0);
  std::vector<int64_t> want_received(p, 0), want_sent(p, 0);
  std::vector<float> expert_out_want_scale;  // per row: global expert + 1
  for (int64_t j = 0; j < kLocal; ++j) {
    const int32_t e = static_cast<int32_t>(r * kLocal + j);
    for (int s = 0; s < p; ++s) {
      for (int64_t sel = 0; sel < sources[s].tokens * kTopK; ++sel) {
        if (sources[s].topk[sel] != e) continue;
        const int64_t t = sel / kTopK;
        want.insert(want.end(), sources[s].x.begin() + t * dim,
                    sources[s].x.begin() + (t + 1) * dim);
        ++want_counts[j];
        ++want_received[s];
        expert_out_want_scale.push_back(static_cast<float>(e + 1));
      }
    }
  }
  for (int32_t e : me.topk) ++want_sent[e / kLocal];
  EXPECT_EQ(counts, want_counts) << "rank " << r;
  EXPECT_EQ(first_difference(expert_tokens.to_floats(), want, dim), "") << "rank " << r;
  EXPECT_EQ(dispatcher.metrics().rows_sent, want_sent) << "rank " << r;
  EXPECT_EQ(dispatcher.metrics().rows_received, want_received) << "rank " << r;
  // The routing has an empty send and an empty local expert.
  if (p > 1 && r == 0) {
    EXPECT_EQ(want_sent[p - 1], 0);
  }
  if (r == 0) {
    EXPECT_EQ(want_counts[1], 0);
  }
  // Traffic: one count exchange and one row exchange, bytes to the other ranks only.
  int64_t rows_to_others = 0;
  for (int q = 0; q < p; ++q) rows_to_others += q == r ? 0 : want_sent[q];
  EXPECT_EQ(dispatcher.metrics().n_all_to_all, 2);
  EXPECT_EQ(dispatcher.metrics().n_dispatch, 1);
  EXPECT_EQ(dispatcher.metrics().bytes_sent, (p - 1) * (kLocal + 2) * 8 + rows_to_others * dim * 4);
  EXPECT_GT(dispatcher.metrics().all_to_all_seconds, 0.0);

  // Expert e multiplies its rows by e + 1; combine returns x[t] * (topk[t, k] + 1) to (t, k).
  std::vector<float> out = expert_tokens.to_floats();
  for (size_t i = 0; i < out.size(); ++i) out[i] *= expert_out_want_scale[i / dim];
  const Tensor expert_out = Tensor::from_floats(out, {expert_tokens.dim(0), dim});
  Tensor selection_out;
  dispatcher.combine(expert_out, plan, selection_out);
  std::vector<float> want_sel;
  std::vector<float> want_dx(static_cast<size_t>(me.tokens * dim), 0.0f);
  for (int64_t sel = 0; sel < me.tokens * kTopK; ++sel) {
    const int64_t t = sel / kTopK;
    for (int64_t c = 0; c < dim; ++c) {
      const float v = me.x[t * dim + c] * static_cast<float>(me.topk[sel] + 1);
      want_sel.push_back(v);
      want_dx[t * dim + c] += v;
    }
  }
  EXPECT_EQ(first_difference(selection_out.to_floats(), want_sel, dim), "") << "rank " << r;

  // dispatch_backward of the same rows sums each token's K selections at its origin.
  Tensor dx;
  dispatcher.dispatch_backward(expert_out, plan, dx);
  EXPECT_EQ(first_difference(dx.to_floats(), want_dx, dim), "") << "rank " << r;
  // combine_backward of selection_out gives expert_out back.
  Tensor d_expert_out;
  dispatcher.combine_backward(selection_out, plan, d_expert_out);
  EXPECT_EQ(first_difference(d_expert_out.to_floats(), out, dim), "") << "rank " << r;

  EXPECT_EQ(dispatcher.metrics().n_all_to_all, 8);
  dispatcher.reset_metrics();
  EXPECT_EQ(dispatcher.metrics().n_all_to_all, 0);
  EXPECT_EQ(dispatcher.metrics().bytes_sent, 0);
  EXPECT_EQ(dispatcher.metrics().rows_sent, std::vector<int64_t>(p, 0));
}

TEST(ExpertParallel, BackwardCallsAreExactAdjoints) {
  Communicator& comm = world();
  const int p = comm.size();
  const int r = comm.rank();
  const int64_t e_count = 2 * p, k = 3, dim = 7;
  // Different batch sizes per rank; from 3 ranks on, the last one has no tokens.
  const int64_t tokens = (p > 2 && r == p - 1) ? 0 : 4 + 3 * r;
  std::mt19937 rng(1234 + r);
  std::vector<int32_t> topk;
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<int32_t> experts(e_count);
    for (int64_t e = 0; e < e_count; ++e) experts[e] = static_cast<int32_t>(e);
    std::shuffle(experts.begin(), experts.end(), rng);
    topk.insert(topk.end(), experts.begin(), experts.begin() + std::min(k, e_count));
  }
  const int64_t kk = std::min(k, e_count);
  ExpertParallelDispatcher dispatcher(comm, e_count);
  const Tensor x = dyadic_tensor(tokens, dim, 10 + r);
  DispatchPlan plan;
  Tensor expert_tokens;
  std::vector<int64_t> counts;
  dispatcher.dispatch(x, Tensor::from_vector(topk, {tokens, kk}), plan, expert_tokens, counts);
  const int64_t n = expert_tokens.dim(0);
  int64_t count_sum = 0;
  for (int64_t c : counts) count_sum += c;
  EXPECT_EQ(count_sum, n);

  // <dispatch(x), y> = <x, dispatch_backward(y)>.
  const Tensor y = dyadic_tensor(n, dim, 20 + r);
  Tensor dx;
  dispatcher.dispatch_backward(y, plan, dx);
  const double lhs = sum_over_ranks(comm, dot(expert_tokens, y));
  const double rhs = sum_over_ranks(comm, dot(x, dx));
  EXPECT_EQ(lhs, rhs);
  EXPECT_NE(lhs, 0.0);

  // <combine(a), b> = <a, combine_backward(b)>.
  const Tensor a = dyadic_tensor(n, dim, 30 + r);
  const Tensor b = dyadic_tensor(tokens * kk, dim, 40 + r);
  Tensor selection_out, d_expert_out;
  dispatcher.combine(a, plan, selection_out);
  dispatcher.combine_backward(b, plan, d_expert_out);
  const double lhs2 = sum_over_ranks(comm, dot(selection_out, b));
  const double rhs2 = sum_over_ranks(comm, dot(a, d_expert_out));
  EXPECT_EQ(lhs2, rhs2);
  EXPECT_NE(lhs2, 0.0);
}

// The tiny MoE of the model tests, with E = 8 experts (so 8 / P local experts at P = 1, 2, 4).
model::ModelConfig moe_config() {
  model::ModelConfig c;
  c.dim = 16;
  c.moe_inter_dim = 8;
  c.n_routed_experts = 8;
  c.n_shared_experts = 1;
  c.n_activated_experts = 2;
  c.n_expert_groups = 4;
  c.n_limited_groups = 2;
  c.score_func = model::ScoreFunc::kSigmoid;
  c.route_scale = 2.5;
  c.balance_loss_alpha = 0.01;
  return c;
}

void copy_rows(const Tensor& src, int64_t first, Tensor& dst) {
  dst.copy_from(src.narrow(first, dst.dim(0)));
}

TEST(ExpertParallel, MoeLayerMatchesSingleRankOnTheGlobalBatch) {
  Communicator& comm = world();
  const int p = comm.size();
  const int r = comm.rank();
  const model::ModelConfig cfg = moe_config();
  if (cfg.n_routed_experts % p != 0) GTEST_SKIP() << "E = 8 does not split over " << p << " ranks";
  const int64_t seq_len = 3, tokens = 6, dim = cfg.dim, k = cfg.n_activated_experts;
  const int64_t global_tokens = tokens * p;

  // The global batch and its routing, identical on every rank; rank s holds rows
  // [s * tokens, (s + 1) * tokens). Fixed routing (the gate weights still follow the logits)
  // sends tokens to every rank and leaves rank 0 -> rank P-1 empty.
  const Tensor x_global = testing::random_tensor({global_tokens, dim}, 7);
  const Tensor dy_global = testing::random_tensor({global_tokens, dim}, 8);
  std::vector<int32_t> topk;
  for (int64_t t = 0; t < global_tokens; ++t) {
    const int64_t s = t / tokens;
    std::vector<int32_t> allowed;
    for (int64_t e = 0; e < cfg.n_routed_experts; ++e) {
      if (s == 0 && p > 1 && e * p / cfg.n_routed_experts == p - 1) continue;
      allowed.push_back(static_cast<int32_t>(e));
    }
    const int64_t a = static_cast<int64_t>(allowed.size());
    for (int64_t kk = 0; kk < k; ++kk) topk.push_back(allowed[(3 * (t % tokens) + kk) % a]);
  }
  const Tensor topk_global = Tensor::from_vector(topk, {global_tokens, k});

  model::Moe reference("layers.1.ffn", cfg, model::TrainingPrecision::kFp32, Device::cpu());
  reference.init(42, 0.2);
  reference.set_fixed_routing(topk_global);
  model::Moe::Saved ref_saved;
  Tensor y_ref = Tensor::empty({global_tokens, dim}, DType::kF32);
  reference.forward(x_global, seq_len, y_ref, ref_saved);
  Tensor dx_ref = Tensor::empty({global_tokens, dim}, DType::kF32);
  reference.backward(dy_global, 1.0, ref_saved, dx_ref, nullptr);

  ExpertParallelDispatcher dispatcher(comm, cfg.n_routed_experts);
  model::Moe moe("layers.1.ffn", cfg, model::TrainingPrecision::kFp32, Device::cpu(), &dispatcher);
  const int64_t n_local = dispatcher.n_local_experts();
  const int64_t first = dispatcher.first_local_expert();
  ASSERT_EQ(moe.w1.groups(), n_local);
  moe.gate.weight.value.copy_from(reference.gate.weight.value);
  copy_rows(reference.w1.weight.value, first, moe.w1.weight.value);
  copy_rows(reference.w2.weight.value, first, moe.w2.weight.value);
  copy_rows(reference.w3.weight.value, first, moe.w3.weight.value);
  ASSERT_TRUE(moe.shared_experts.has_value());
  moe.shared_experts->w1.weight.value.copy_from(reference.shared_experts->w1.weight.value);
  moe.shared_experts->w2.weight.value.copy_from(reference.shared_experts->w2.weight.value);
  moe.shared_experts->w3.weight.value.copy_from(reference.shared_experts->w3.weight.value);
  moe.set_fixed_routing(topk_global.narrow(r * tokens, tokens));

  model::Moe::Saved saved;
  const Tensor x = x_global.narrow(r * tokens, tokens);
  Tensor y = Tensor::empty({tokens, dim}, DType::kF32);
  moe.forward(x, seq_len, y, saved);
  // The balance loss is a mean over sequences: the global one is the mean of the ranks' ones,
  // so each rank's share of d loss / d balance_loss is 1 / P.
  Tensor dx = Tensor::empty({tokens, dim}, DType::kF32);
  moe.backward(dy_global.narrow(r * tokens, tokens), 1.0 / p, saved, dx, nullptr);

  const testing::Tolerance tol{1e-5, 1e-5};
  const std::string ctx = "rank " + std::to_string(r) + " of " + std::to_string(p);
  testing::expect_close(y.to_floats(), y_ref.narrow(r * tokens, tokens).to_floats(), tol,
                        ctx + " y");
  testing::expect_close(dx.to_floats(), dx_ref.narrow(r * tokens, tokens).to_floats(), tol,
                        ctx + " dx");
  // Expert gradients: this rank's experts saw every rank's tokens.
  testing::expect_close(moe.w1.weight.grad.to_floats(),
                        reference.w1.weight.grad.narrow(first, n_local).to_floats(), tol,
                        ctx + " w1.grad");
  testing::expect_close(moe.w2.weight.grad.to_floats(),
                        reference.w2.weight.grad.narrow(first, n_local).to_floats(), tol,
                        ctx + " w2.grad");
  testing::expect_close(moe.w3.weight.grad.to_floats(),
                        reference.w3.weight.grad.narrow(first, n_local).to_floats(), tol,
                        ctx + " w3.grad");
  // Replicated parameters: the sum over ranks (what data parallelism reduces).
  Tensor gate_grad = moe.gate.weight.grad.clone();
  all_reduce_sync(comm, gate_grad);
  testing::expect_close(gate_grad.to_floats(), reference.gate.weight.grad.to_floats(), tol,
                        ctx + " gate.grad");
  Tensor shared_grad = moe.shared_experts->w1.weight.grad.clone();
  all_reduce_sync(comm, shared_grad);
  testing::expect_close(shared_grad.to_floats(),
                        reference.shared_experts->w1.weight.grad.to_floats(), tol,
                        ctx + " shared w1.grad");
  EXPECT_NEAR(sum_over_ranks(comm, saved.balance_loss) / p, ref_saved.balance_loss,
              1e-12 + 1e-6 * std::abs(ref_saved.balance_loss))
      << ctx;
  // The expert load, all-reduced, is the global one.
  Tensor load = Tensor::from_vector(moe.expert_load(), {cfg.n_routed_experts});
  all_reduce_sync(comm, load);
  EXPECT_EQ(load.to_vector<int64_t>(), reference.expert_load()) << ctx;
  // Every rank's experts got work, and rank 0 sent nothing to rank P-1.
  for (int64_t c : saved.counts) EXPECT_GT(c, 0) << ctx;
  if (p > 1 && r == 0) {
    EXPECT_EQ(dispatcher.metrics().rows_sent[p - 1], 0) << ctx;
  }
}

TEST(ExpertParallel, InterleavedMicroBatchesUseOnlyTheirPlans) {
  Communicator& comm = world();
  const int p = comm.size();
  const int r = comm.rank();
  const int64_t dim = 3;
  ExpertParallelDispatcher dispatcher(comm, kLocal * p);
  const int64_t first = dispatcher.first_local_expert();
  const Source a = make_source(r, p, dim);
  const Source b = make_source(r, p, dim, /*shift=*/1);
  DispatchPlan plan_a, plan_b;
  Tensor tokens_a, tokens_b;
  std::vector<int64_t> counts_a, counts_b;
  dispatcher.dispatch(Tensor::from_floats(a.x, {a.tokens, dim}),
                      Tensor::from_vector(a.topk, {a.tokens, kTopK}), plan_a, tokens_a, counts_a);
  dispatcher.dispatch(Tensor::from_floats(b.x, {b.tokens, dim}),
                      Tensor::from_vector(b.topk, {b.tokens, kTopK}), plan_b, tokens_b, counts_b);
  EXPECT_NE(counts_a, counts_b) << "rank " << r << ": the micro-batches must route differently";
  const Tensor out_a = scale_by_expert(tokens_a, counts_a, first);
  const Tensor out_b = scale_by_expert(tokens_b, counts_b, first);
  Tensor sel_a, sel_b;
  dispatcher.combine(out_b, plan_b, sel_b);
  dispatcher.combine(out_a, plan_a, sel_a);
  EXPECT_EQ(first_difference(sel_a.to_floats(), scaled_selections(a, dim), dim), "")
      << "rank " << r;
  EXPECT_EQ(first_difference(sel_b.to_floats(), scaled_selections(b, dim), dim), "")
      << "rank " << r;
  // Backward in the other order: combine_backward returns each batch's expert rows.
  Tensor d_out_a, d_out_b;
  dispatcher.combine_backward(sel_a, plan_a, d_out_a);
  dispatcher.combine_backward(sel_b, plan_b, d_out_b);
  EXPECT_EQ(first_difference(d_out_a.to_floats(), out_a.to_floats(), dim), "") << "rank " << r;
  EXPECT_EQ(first_difference(d_out_b.to_floats(), out_b.to_floats(), dim), "") << "rank " << r;
}

TEST(ExpertParallel, Fp8DispatchSendsQuantizedRowsAndKeepsCombineFullPrecision) {
  Communicator& comm = world();
  const int p = comm.size();
  const int r = comm.rank();
  const int64_t dim = 130;  // two 1x128 tiles, the second ragged
  const int64_t tiles = 2;
  const int64_t e_count = kLocal * p;
  // make_source's routing, with values of varied magnitude per tile.
  std::vector<Source> sources;
  std::vector<std::vector<float>> dequantized;
  for (int s = 0; s < p; ++s) {
    Source src = make_source(s, p, dim);
    src.x = testing::random_values(src.x.size(), 100 + s, -3.0f, 3.0f);
    for (size_t i = 0; i < src.x.size(); ++i) src.x[i] *= 1.0f + static_cast<float>(i % dim) / 8;
    const Fp8Tensor q =
        quantize_fp8(Tensor::from_floats(src.x, {src.tokens, dim}), ScaleBlock::k1x128);
    Tensor deq = Tensor::empty({src.tokens, dim}, DType::kF32);
    dequantize_fp8(q, deq);
    dequantized.push_back(deq.to_floats());
    sources.push_back(std::move(src));
  }
  const Source& me = sources[r];

  ExpertParallelDispatcher dispatcher(comm, e_count, ExpertParallelOptions{.fp8_dispatch = true});
  EXPECT_TRUE(dispatcher.options().fp8_dispatch);
  const Tensor x = Tensor::from_floats(me.x, {me.tokens, dim});
  DispatchPlan plan;
  Tensor expert_tokens;
  std::vector<int64_t> counts;
  dispatcher.dispatch(x, Tensor::from_vector(me.topk, {me.tokens, kTopK}), plan, expert_tokens,
                      counts);

  std::vector<float> want, full;  // dequantize(quantize(x)) rows and the f32 rows
  int64_t rows_to_others = 0;
  for (int32_t e : me.topk) rows_to_others += e / kLocal != r;
  for (int64_t j = 0; j < kLocal; ++j) {
    for (int s = 0; s < p; ++s) {
      for (int64_t sel = 0; sel < sources[s].tokens * kTopK; ++sel) {
        if (sources[s].topk[sel] != r * kLocal + j) continue;
        const int64_t t = sel / kTopK;
        want.insert(want.end(), dequantized[s].begin() + t * dim,
                    dequantized[s].begin() + (t + 1) * dim);
        full.insert(full.end(), sources[s].x.begin() + t * dim,
                    sources[s].x.begin() + (t + 1) * dim);
      }
    }
  }
  EXPECT_EQ(first_difference(expert_tokens.to_floats(), want, dim), "") << "rank " << r;
  EXPECT_NE(want, full) << "rank " << r << ": the test data must not be exact in E4M3";
  // Counts, then the E4M3 data (1 byte per value) and the f32 scales.
  EXPECT_EQ(dispatcher.metrics().n_all_to_all, 3);
  EXPECT_EQ(dispatcher.metrics().bytes_sent,
            (p - 1) * (kLocal + 2) * 8 + rows_to_others * (dim + 4 * tiles));

  // combine and dispatch_backward move f32 rows: the full-precision rows come back exactly.
  const Tensor expert_out = Tensor::from_floats(full, {expert_tokens.dim(0), dim});
  Tensor selection_out;
  dispatcher.combine(expert_out, plan, selection_out);
  std::vector<float> want_sel, want_dx;
  for (int64_t sel = 0; sel < me.tokens * kTopK; ++sel) {
    const int64_t t = sel / kTopK;
    want_sel.insert(want_sel.end(), me.x.begin() + t * dim, me.x.begin() + (t + 1) * dim);
  }
  for (float v : me.x) want_dx.push_back(v + v);  // K = 2 selections of the same row
  EXPECT_EQ(first_difference(selection_out.to_floats(), want_sel, dim), "") << "rank " << r;
  Tensor dx;
  dispatcher.dispatch_backward(expert_out, plan, dx);
  EXPECT_EQ(first_difference(dx.to_floats(), want_dx, dim), "") << "rank " << r;
}

TEST(ExpertParallel, ErrorsThrowOnEveryRank) {
  Communicator& comm = world();
  const int p = comm.size();
  const int r = comm.rank();
  EXPECT_THROW(ExpertParallelDispatcher(comm, 0), Error);
  if (p > 1) {
    try {
      ExpertParallelDispatcher bad(comm, p + 1);
      ADD_FAILURE() << "E = " << p + 1 << " over " << p << " ranks was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("cannot be split evenly"), std::string::npos)
          << e.what();
    }
  }
  ExpertParallelDispatcher dispatcher(comm, 2 * p);
  DispatchPlan plan;
  Tensor expert_tokens;
  std::vector<int64_t> counts;
  // Bad expert ids and a topk_idx that does not match x fail before any communication.
  const Tensor x = testing::random_tensor({2, 4}, 1);
  EXPECT_THROW(dispatcher.dispatch(x, Tensor::from_vector(std::vector<int32_t>{0, 2 * p}, {2, 1}),
                                   plan, expert_tokens, counts),
               Error);
  EXPECT_THROW(dispatcher.dispatch(x, Tensor::from_vector(std::vector<int32_t>{0, 1, 0}, {3, 1}),
                                   plan, expert_tokens, counts),
               Error);
  EXPECT_EQ(dispatcher.metrics().n_all_to_all, 0);

  const Tensor topk = Tensor::from_vector(std::vector<int32_t>{0, 2 * p - 1}, {2, 1});
  if (p > 1) {
    // Rank 0 dispatches rows of another width: every rank learns it from the count exchange.
    const Tensor x_width = testing::random_tensor({2, r == 0 ? 3 : 4}, 2);
    try {
      dispatcher.dispatch(x_width, topk, plan, expert_tokens, counts);
      ADD_FAILURE() << "rank " << r << ": mismatched row widths were accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("disagree"), std::string::npos) << e.what();
    }
  }
  // A good dispatch, then rank 0 calls combine_backward while the others call combine.
  dispatcher.dispatch(x, topk, plan, expert_tokens, counts);
  Tensor out;
  if (p > 1) {
    try {
      if (r == 0) {
        dispatcher.combine_backward(testing::random_tensor({2, 4}, 3), plan, out);
      } else {
        dispatcher.combine(expert_tokens, plan, out);
      }
      ADD_FAILURE() << "rank " << r << ": mismatched calls were accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("combine_backward"), std::string::npos) << e.what();
    }
  }
  // The group is still in step: a matching combine works on every rank.
  dispatcher.combine(expert_tokens, plan, out);
  EXPECT_EQ(first_difference(out.to_floats(), x.to_floats(), 4), "") << "rank " << r;
  // A plan from a dispatcher of another expert count is refused.
  ExpertParallelDispatcher other(comm, 4 * p);
  EXPECT_THROW(other.combine(expert_tokens, plan, out), Error);
}

}  // namespace
}  // namespace fathom::parallel
