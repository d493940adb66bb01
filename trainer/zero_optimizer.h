// ZeRO-1 AdamW across data-parallel ranks (DESIGN.md decision 3, SPEC.md section 2).
//
// Every data-parallel rank holds the full FP32 parameters and computes gradients on its own
// micro-batches. The gradients are reduce-scattered in buckets of about bucket_bytes: dense
// parameters over the data-parallel group, routed-expert parameters (Parameter::is_expert) over
// the expert-data-parallel group only (the ranks that hold the same experts). Buckets follow the
// reverse parameter order (the order backward finishes them), and a bucket's non-blocking
// reduce-scatter is posted as soon as every gradient in it is final (gradients_ready(), called from
// the model's backward of the last micro-batch), so communication overlaps the rest of backward.
// step():
//   1. posts the buckets not posted yet and waits for all;
//   2. divides by the data-parallel size (the loss is a mean over the global batch);
//   3. clips by the global gradient norm, all-reduced over the data-parallel group;
//   4. runs AdamW on this rank's shard: 1/D of every parameter's elements, with moments for that
//      shard only;
//   5. all-gathers the updated shards, so every rank again holds the full parameters.
// With one rank it computes exactly what trainer::AdamW computes.
//
// Shards are element ranges of each flattened parameter: parameter p of n elements gives rank q
// the elements [q * ceil(n / D), min(n, (q + 1) * ceil(n / D))). moment_shards() names them for
// checkpoints as 1-D global tensors "optim.m.<name>" / "optim.v.<name>" with the element count of
// the GLOBAL parameter (Parameter::global(); an expert-parallel rank's experts are a contiguous
// element range of it), so a checkpoint written under one layout loads under another.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "model/module.h"
#include "parallel/communicator.h"
#include "trainer/checkpoint.h"
#include "trainer/optimizer.h"

namespace fathom::trainer {

class ZeroAdamW {
 public:
  // dp: the data-parallel group; edp: the expert-data-parallel group (dp itself when there is no
  // expert parallelism). Both must outlive the optimizer, as must the parameters.
  ZeroAdamW(model::ParameterList params, const AdamWOptions& options, parallel::Communicator& dp,
            parallel::Communicator& edp, int64_t bucket_bytes = kDefaultBucketBytes);

  static constexpr int64_t kDefaultBucketBytes = 16 << 20;

  // Pipeline parallelism: the global norm also sums over `pp` (every pipeline stage holds other
  // parameters), each parameter's squares weighted by norm_weight(p): 1 / (the number of pipeline
  // ranks holding a copy of it), so mirrored copies count once. Call before the first step().
  void set_pipeline_norm(parallel::Communicator* pp,
                         std::function<double(const model::Parameter&)> norm_weight);

  // These parameters' gradients are final for this step: posts the reduce-scatter of every bucket
  // they complete. Parameters not in this optimizer are ignored. Every rank must report the same
  // parameters in the same order (the model's backward does).
  void gradients_ready(const model::ParameterList& params);
  // Steps 1-5 above. Every rank returns the same StepResult; a non-finite global norm skips the
  // update everywhere.
  StepResult step(double lr);
  int64_t bucket_count() const { return static_cast<int64_t>(buckets_.size()); }
  void zero_grad();

  int64_t steps() const { return steps_; }
  void set_steps(int64_t steps) { steps_ = steps; }
  const model::ParameterList& parameters() const { return params_; }
  // This rank's moment shards, as live views (read_checkpoint fills them in place).
  std::vector<TensorShard> moment_shards();

 private:
  // Parameters reduced together over one communicator, laid out rank-major in flat buffers:
  // rank q's chunk holds, for every parameter, its shard q (padded to the shard size).
  struct Bucket {
    parallel::Communicator* comm = nullptr;
    std::vector<model::Parameter*> params;
    std::vector<int64_t> shard;   // per parameter: ceil(numel / comm size)
    std::vector<int64_t> offset;  // per parameter: offset of its shard in a chunk
    int64_t chunk = 0;            // elements per rank chunk
    Tensor flat;                  // (size * chunk) f32: gradients out, parameters back
    Tensor grad_shard;            // (chunk) f32
    Tensor param_shard;           // (chunk) f32
    Tensor m, v;                  // (chunk) moments dtype
    int64_t ready = 0;            // parameters reported ready this step
    parallel::WorkHandle reduce;  // the posted reduce-scatter, until step() waits for it
  };
  void build_buckets(parallel::Communicator& comm, const std::vector<model::Parameter*>& params,
                     int64_t bucket_bytes);
  void post(Bucket& b);
  // Elements of parameter i of b held by rank q: [q * shard[i], + length) of the flattened value.
  static int64_t shard_length(const Bucket& b, size_t i, int q);

  model::ParameterList params_;
  AdamWOptions options_;
  parallel::Communicator& dp_;
  parallel::Communicator* pp_ = nullptr;
  std::function<double(const model::Parameter&)> norm_weight_;
  std::vector<Bucket> buckets_;
  // Parameter -> (bucket, index in bucket).
  std::vector<std::pair<const model::Parameter*, std::pair<size_t, size_t>>> where_;
  int64_t steps_ = 0;
};

}  // namespace fathom::trainer
