// Pipeline parallelism with real model chunks (issue 5): every schedule, run by the pipeline
// executor over all ranks of the world (pp = world size), computes the non-pipelined model's
// losses and gradients. Every micro-batch's loss is bit-identical to the serial model's. 1F1B
// and ZB1P accumulate each stage's micro-batches in the serial order, so their gradients are
// bit-identical (except the embedding, whose two copies are summed); DualPipe and DualPipeV
// interleave the two directions' micro-batches, so theirs agree to rounding. The overlapped
// forward+backward pairs give the same bits with and without threads.
// The embedding has a copy on the first and on the last stage; the model's stage split
// (model/deepseek_v3.h) gives the last stage fewer blocks since it runs the MTP module.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "kernels/hash.h"
#include "model/deepseek_v3.h"
#include "parallel/mpi_env.h"
#include "parallel/topology.h"
#include "trainer/run_config.h"
#include "trainer/train_model.h"

namespace fathom::trainer {
namespace {

using parallel::pipeline::ScheduleKind;

constexpr int kMicroBatchSize = 2;
constexpr int kSeqLen = 12;

RunConfig pipeline_run(ScheduleKind kind, int pp) {
  absl::StatusOr<RunConfig> c = load_run_config(
      std::string(FATHOM_SOURCE_DIR) + "/configs/runs/pretrain-tiny.yaml",
      {"train.threads=1", "train.seq_len=" + std::to_string(kSeqLen),
       "train.micro_batch_size=" + std::to_string(kMicroBatchSize)});
  FATHOM_CHECK(c.ok()) << c.status();
  c->model.n_layers = 2 * pp;  // DualPipeV cuts the model into 2 * pp stages
  c->parallel.pp = pp;
  c->parallel.schedule = kind;
  c->train.grad_accum = 2 * pp;  // N >= 2P, even: valid for every schedule
  return *c;
}

// Non-zero router biases (the same on every rank and in the reference), so that selection
// differs from the unbiased scores.
void set_biases(model::BufferList buffers) {
  for (model::Buffer* b : buffers) {
    std::vector<float> v(b->value.numel());
    for (size_t i = 0; i < v.size(); ++i) {
      v[i] = static_cast<float>(static_cast<int64_t>(mix64(fnv1a(b->name) + i) % 2001) - 1000) *
             1e-4f;
    }
    b->value.copy_from(Tensor::from_floats(v, b->value.shape()));
  }
}

std::vector<Tensor> micro_batches(const RunConfig& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Tensor> out;
  const int64_t width = kSeqLen + c.model.mtp_depth + 1;
  for (int64_t m = 0; m < c.train.grad_accum; ++m) {
    std::vector<int32_t> ids(kMicroBatchSize * width);
    for (int32_t& id : ids) id = static_cast<int32_t>(rng() % c.model.vocab_size);
    out.push_back(Tensor::from_vector(ids, {kMicroBatchSize, width}));
  }
  return out;
}

struct Reference {
  model::Losses losses;
  std::vector<model::Losses> per_micro_batch;
  std::map<std::string, std::vector<float>> grads;
};

Reference serial_reference(const RunConfig& c, const std::vector<Tensor>& batches) {
  model::DeepSeekV3 whole(c.model, c.precision, Device::cpu());
  whole.init(static_cast<uint64_t>(c.seed));
  set_biases(whole.buffers());
  Reference ref;
  const double scale = 1.0 / static_cast<double>(batches.size());
  for (const Tensor& b : batches) {
    const model::Losses l = whole.forward_backward(b, scale);
    ref.losses.total += l.total * scale;
    ref.losses.lm += l.lm * scale;
    ref.per_micro_batch.push_back(l);
  }
  for (model::Parameter* p : whole.parameters()) ref.grads[p->name] = p->grad.to_floats();
  return ref;
}

struct PipelineRun {
  model::Losses losses;
  std::map<int, model::Losses> last_stage;  // micro-batches whose loss this rank computed
  std::map<std::string, std::vector<float>> grads;  // every copy on this rank, by name
  parallel::pipeline::ExecutorStats stats;
};

PipelineRun run_pipeline(const RunConfig& c, const std::vector<Tensor>& batches) {
  parallel::Communicator& world = parallel::world_communicator();
  parallel::ProcessGroups groups = parallel::make_groups(world, parallel::RankGrid(c.parallel));
  TrainModel model(c, Device::cpu(), groups);
  model.init(static_cast<uint64_t>(c.seed));
  set_biases(model.buffers());
  PipelineRun run;
  run.losses = model.forward_backward(batches, nullptr);
  run.last_stage = model.last_stage_losses();
  run.stats = model.pipeline_stats();
  for (model::Parameter* p : model.all_copies()) {
    const std::vector<float> g = p->grad.to_floats();
    auto [it, fresh] = run.grads.emplace(p->name, g);
    // A second local copy (the embedding) has handed its gradient to the first.
    if (!fresh) {
      EXPECT_TRUE(std::all_of(g.begin(), g.end(), [](float x) { return x == 0; })) << p->name;
    }
  }
  return run;
}

void expect_matches_serial(ScheduleKind kind, bool bitwise) {
  parallel::Communicator& world = parallel::world_communicator();
  const int pp = world.size();
  if (pp < 2) GTEST_SKIP() << "needs at least 2 ranks";
  const RunConfig c = pipeline_run(kind, pp);
  const std::vector<Tensor> batches = micro_batches(c, 7);
  const Reference ref = serial_reference(c, batches);
  const PipelineRun run = run_pipeline(c, batches);
  const std::string what(parallel::pipeline::schedule_kind_name(kind));
  // Each micro-batch's loss is computed by its last stage exactly as the serial model computes
  // it (SPEC: loss bit-exact); the step's mean crosses the pipeline group in f32.
  for (const auto& [micro_batch, l] : run.last_stage) {
    const model::Losses& want = ref.per_micro_batch[micro_batch];
    EXPECT_EQ(l.lm, want.lm) << what << " micro-batch " << micro_batch;
    EXPECT_EQ(l.mtp, want.mtp) << what << " micro-batch " << micro_batch;
  }
  Tensor computed = Tensor::from_vector(
      std::vector<int64_t>{static_cast<int64_t>(run.last_stage.size())}, {1});
  parallel::all_reduce_sync(parallel::world_communicator(), computed);
  EXPECT_EQ(computed.to_vector<int64_t>()[0], c.train.grad_accum)
      << what << ": every micro-batch's loss, once";
  EXPECT_NEAR(run.losses.total, ref.losses.total, 1e-6 * ref.losses.total) << what;
  EXPECT_NEAR(run.losses.lm, ref.losses.lm, 1e-6 * ref.losses.lm) << what;
  ASSERT_FALSE(run.grads.empty());
  for (const auto& [name, got] : run.grads) {
    const std::vector<float>& want = ref.grads.at(name);
    ASSERT_EQ(got.size(), want.size()) << name;
    if (bitwise && name != "embed.weight") {
      EXPECT_EQ(got, want) << what << ": " << name << " differs from the serial model";
      continue;
    }
    float largest = 0, worst = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      largest = std::max(largest, std::abs(want[i]));
      worst = std::max(worst, std::abs(got[i] - want[i]));
    }
    EXPECT_LE(worst, 1e-6f * largest) << what << ": " << name << " (largest " << largest << ")";
  }
}

TEST(PipelineTest, OneFOneBEqualsSerialBitForBit) {
  expect_matches_serial(ScheduleKind::k1F1B, true);
}
TEST(PipelineTest, ZeroBubbleEqualsSerialBitForBit) {
  expect_matches_serial(ScheduleKind::kZB1P, true);
}
TEST(PipelineTest, DualPipeEqualsSerial) {
  if (parallel::world_communicator().size() % 2 != 0) GTEST_SKIP() << "DualPipe needs even P";
  expect_matches_serial(ScheduleKind::kDualPipe, false);
}
TEST(PipelineTest, DualPipeVEqualsSerial) {
  expect_matches_serial(ScheduleKind::kDualPipeV, false);
}

// The overlapped pairs run on two threads (pp2 x dp2 with ep2, so there is an all-to-all to
// hide); the result must not depend on it, and the pairs must have run concurrently.
TEST(PipelineTest, OverlappedForwardBackwardGivesTheSameBits) {
  parallel::Communicator& world = parallel::world_communicator();
  if (world.size() != 4) GTEST_SKIP() << "needs 4 ranks (pp2 x dp2 x ep2)";
  RunConfig c = pipeline_run(ScheduleKind::kDualPipe, 2);
  c.parallel.dp = 2;
  c.parallel.ep = 2;
  const std::vector<Tensor> batches = micro_batches(c, 8 + static_cast<uint32_t>(world.rank()));
  c.parallel.fb_overlap = true;
  const PipelineRun overlapped = run_pipeline(c, batches);
  c.parallel.fb_overlap = false;
  const PipelineRun sequential = run_pipeline(c, batches);
  EXPECT_EQ(overlapped.losses.total, sequential.losses.total);
  EXPECT_EQ(overlapped.grads, sequential.grads);
  EXPECT_GT(overlapped.stats.forward_backward.count, 0);
  EXPECT_GT(overlapped.stats.overlapped_seconds(), 0);
  EXPECT_LE(sequential.stats.overlapped_seconds(), 1e-3 * sequential.stats.total_seconds);
}

}  // namespace
}  // namespace fathom::trainer
