// ZeRO-1 AdamW (trainer/zero_optimizer.h) against plain AdamW on one rank: the same parameters
// after several steps, whatever the world size, bucket size, or the order in which gradients are
// reported ready; expert parameters reduced over their expert-data-parallel group only.
#include "trainer/zero_optimizer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "kernels/ops/elementwise.h"
#include "parallel/mpi_env.h"
#include "trainer/optimizer.h"

namespace fathom::trainer {
namespace {

// Parameters with awkward sizes (not multiples of the world size), one without weight decay and
// one routed-expert weight.
struct Params {
  std::vector<model::Parameter> storage;
  model::ParameterList list() {
    model::ParameterList out;
    for (auto& p : storage) out.push_back(&p);
    return out;
  }
};

Params make_params() {
  Params p;
  p.storage.push_back(model::make_parameter("a", {7, 3}, Device::cpu()));
  p.storage.push_back(model::make_parameter("norm", {5}, Device::cpu(), false));
  p.storage.push_back(model::make_parameter("b", {1}, Device::cpu()));
  p.storage.push_back(model::make_parameter("experts", {4, 3}, Device::cpu()));
  p.storage.back().is_expert = true;
  for (auto& q : p.storage) model::init_normal(q, 11, 0.5);
  return p;
}

// The gradient rank r computes at step s: deterministic, different per rank and step.
void set_grads(Params& p, int rank, int step) {
  for (size_t i = 0; i < p.storage.size(); ++i) {
    std::vector<float> g(p.storage[i].grad.numel());
    for (size_t j = 0; j < g.size(); ++j) {
      g[j] = std::sin(1.0f + i * 7.0f + j * 0.37f + rank * 1.3f + step * 0.71f);
    }
    p.storage[i].grad.copy_from(Tensor::from_floats(g, p.storage[i].grad.shape()));
  }
}

// clip: some steps clip at 1.5. Without clipping, the dense parameters do not depend on the
// expert gradients (with experts reduced over pairs, the global norm differs from the reference).
AdamWOptions options(bool clip = true) {
  AdamWOptions o;
  o.grad_clip = clip ? 1.5 : 0.0;
  o.weight_decay = 0.1;
  return o;
}

// What one rank computes with the mean of every rank's gradients.
std::vector<std::vector<float>> reference(int world, int steps, bool clip) {
  Params p = make_params();
  AdamW adam(p.list(), options(clip));
  for (int s = 0; s < steps; ++s) {
    std::vector<std::vector<double>> mean(p.storage.size());
    for (int r = 0; r < world; ++r) {
      set_grads(p, r, s);
      for (size_t i = 0; i < p.storage.size(); ++i) {
        const std::vector<float> g = p.storage[i].grad.to_floats();
        mean[i].resize(g.size());
        for (size_t j = 0; j < g.size(); ++j) mean[i][j] += g[j] / world;
      }
    }
    for (size_t i = 0; i < p.storage.size(); ++i) {
      p.storage[i].grad.copy_from(Tensor::from_floats(
          std::vector<float>(mean[i].begin(), mean[i].end()), p.storage[i].grad.shape()));
    }
    adam.step(1e-2);
  }
  std::vector<std::vector<float>> out;
  for (auto& q : p.storage) out.push_back(q.value.to_floats());
  return out;
}

void expect_matches_reference(int64_t bucket_bytes, bool report_ready, bool expert_split) {
  parallel::Communicator& world = parallel::world_communicator();
  // Experts reduced over pairs of consecutive ranks when split (the expert-data-parallel group),
  // else over all.
  std::unique_ptr<parallel::Communicator> edp;
  if (expert_split && world.size() % 2 == 0) edp = world.split(world.rank() / 2, world.rank());
  parallel::Communicator& expert_comm = edp != nullptr ? *edp : world;
  Params p = make_params();
  ZeroAdamW zero(p.list(), options(!expert_split), world, expert_comm, bucket_bytes);
  constexpr int kSteps = 4;
  for (int s = 0; s < kSteps; ++s) {
    set_grads(p, world.rank(), s);
    if (report_ready) {
      model::ParameterList all = p.list();
      zero.gradients_ready({all.rbegin(), all.rend()});
    }
    zero.step(1e-2);
  }
  const std::vector<std::vector<float>> want = reference(world.size(), kSteps, !expert_split);
  for (size_t i = 0; i < p.storage.size(); ++i) {
    if (p.storage[i].is_expert && edp != nullptr) continue;  // checked below
    const std::vector<float> got = p.storage[i].value.to_floats();
    for (size_t j = 0; j < got.size(); ++j) {
      EXPECT_NEAR(got[j], want[i][j], 1e-5 * (1 + std::abs(want[i][j])))
          << p.storage[i].name << "[" << j << "] buckets of " << bucket_bytes << " bytes";
    }
  }
  if (edp != nullptr) {
    // Expert weights: reduced over the pair only, so with more than one pair they differ from the
    // all-rank reference, but the two members of a pair agree exactly.
    const model::Parameter& e = p.storage.back();
    Tensor mine = e.value.clone();
    Tensor theirs = Tensor::zeros({2 * mine.numel()}, DType::kF32);
    parallel::all_gather_sync(*edp, mine.view({mine.numel()}), theirs);
    const std::vector<float> both = theirs.to_floats();
    for (int64_t j = 0; j < mine.numel(); ++j) EXPECT_EQ(both[j], both[mine.numel() + j]) << j;
  }
}

TEST(ZeroAdamWTest, OneBucketMatchesAdamWOnTheMeanGradient) {
  expect_matches_reference(ZeroAdamW::kDefaultBucketBytes, false, false);
}

TEST(ZeroAdamWTest, SmallBucketsPostedEarlyMatchToo) {
  expect_matches_reference(64, true, false);
}

TEST(ZeroAdamWTest, ExpertsReduceOverTheirGroupOnly) {
  expect_matches_reference(64, true, true);
}

TEST(ZeroAdamWTest, MomentShardsCoverEveryElementOnce) {
  parallel::Communicator& world = parallel::world_communicator();
  Params p = make_params();
  ZeroAdamW zero(p.list(), options(), world, world, 64);
  EXPECT_GE(zero.bucket_count(), 2);
  std::vector<float> covered(21 + 5 + 1 + 12, 0.0f);
  const int64_t base[] = {0, 21, 26, 27};
  const char* names[] = {"a", "norm", "b", "experts"};
  for (const TensorShard& s : zero.moment_shards()) {
    if (s.name.rfind("optim.m.", 0) != 0) continue;
    const std::string name = s.name.substr(8);
    for (int k = 0; k < 4; ++k) {
      if (name != names[k]) continue;
      for (int64_t j = 0; j < s.tensor.numel(); ++j) covered[base[k] + s.row_offset + j] += 1;
    }
  }
  Tensor counts = Tensor::from_floats(covered, {static_cast<int64_t>(covered.size())});
  parallel::all_reduce_sync(world, counts);
  for (float c : counts.to_floats()) EXPECT_EQ(c, 1.0f);
}

}  // namespace
}  // namespace fathom::trainer
