// The model as the training loop (trainer/trainer.h) sees it: the whole DeepSeek-V3 on this rank
// (pp = 1), or this rank's pipeline chunks run by a schedule (pp > 1; DESIGN.md decision 2,
// SPEC.md section 2), with the bookkeeping that makes the stages act as one model.
//
// Copies. A parameter can have several copies: DualPipe holds every stage on two ranks (r and
// P-1-r), and the embedding lives in the first stage and, with MTP, in the last (so DualPipe's
// and DualPipeV's rank 0 holds two copies of it). After forward_backward every copy's gradient is
// the sum over all copies: local copies are folded into the first one, then copies on other
// pipeline ranks are all-reduced over the ranks that hold them. The optimizer updates one copy
// per rank (parameters()); every rank holding a copy applies the same update to the same summed
// gradient, and after_step() refreshes the second local copy. The gradient norm counts each
// parameter once (norm_weight).
//
// Losses are summed over the stages (each MoE block adds its balance loss where it runs); expert
// load is summed over copies and data-parallel ranks, so every copy of a router applies the same
// bias update.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "kernels/device.h"
#include "model/deepseek_v3.h"
#include "parallel/expert_parallel.h"
#include "parallel/pipeline/executor.h"
#include "parallel/pipeline/schedule.h"
#include "parallel/topology.h"
#include "trainer/evaluate.h"
#include "trainer/run_config.h"
#include "trainer/zero_optimizer.h"

namespace fathom::trainer {

class TrainModel {
 public:
  // groups: this rank's process groups (must outlive the model). The layout and the schedule
  // must be valid (load_run_config checks them); otherwise throws fathom::Error.
  TrainModel(const RunConfig& config, Device device, parallel::ProcessGroups& groups);
  ~TrainModel();
  TrainModel(const TrainModel&) = delete;
  TrainModel& operator=(const TrainModel&) = delete;

  void init(uint64_t seed);
  void set_mtp_lambda(double lambda);

  // Forward and backward of one step's micro-batches (each (B, S + mtp_depth + 1) i32; with
  // pp > 1 exactly the schedule's N): every parameter gradient += the gradient of the mean loss
  // over the micro-batches, summed over copies. early_reduce (pp = 1 only): the last
  // micro-batch's backward posts its gradient reductions as they become final. Returns the mean
  // losses; with pp > 1 they are summed over the stages, identical on every pipeline rank.
  model::Losses forward_backward(absl::Span<const Tensor> micro_batches,
                                 ZeroAdamW* early_reduce);
  // pp > 1: the losses of the last forward_backward's micro-batches whose last stage ran on
  // this rank (by micro-batch id, unscaled, exactly as the last stage computed them; lm and mtp
  // are whole there, balance is the last stage's share).
  std::map<int, model::Losses> last_stage_losses() const;
  // After the optimizer step: refresh the second local copies from the updated first ones.
  void after_step();

  // One copy of every parameter this rank holds: what its optimizer updates.
  model::ParameterList parameters();
  // Every copy (a checkpoint is read into all of them).
  model::ParameterList all_copies();
  // Router biases of every MoE block this rank holds.
  model::BufferList buffers();
  // Whether this rank's copy is the one checkpoints store (the first pipeline rank holding it,
  // its first local copy); parameters and optimizer moments by name, buffers by name.
  bool stores(const std::string& name) const { return stored_.count(name) > 0; }
  // Weight of a parameter's squared gradient in the global norm: 1 / its pipeline copies.
  double norm_weight(const model::Parameter& p) const;
  parallel::Communicator* pipeline_group() const { return pp_ > 1 ? groups_.pp.get() : nullptr; }

  // Every MoE layer of the whole model ("layers.3", "mtp.0.block"), in model order.
  const std::vector<std::string>& moe_layer_names() const { return moe_names_; }
  // Tokens per expert of every MoE layer over the step's global batch (summed over copies and
  // data-parallel ranks), in moe_layer_names() order: the same on every rank.
  std::vector<std::vector<double>> expert_load();
  // The auxiliary-loss-free bias update of the layers held here from expert_load(), then resets
  // the load counters.
  void update_biases(const std::vector<std::vector<double>>& load, double speed);

  // Held-out evaluation (trainer/evaluate.h). With pp > 1 the stages run forward in pipeline
  // order and every pipeline rank returns the last stage's result.
  EvalResult evaluate(const EvalSet& set, int64_t batch);

  // Expert-parallel traffic of this rank's chunks since the last reset (empty without EP).
  parallel::ExpertParallelMetrics ep_metrics() const;
  void reset_ep_metrics();
  bool expert_parallel() const { return !dispatchers_.empty(); }
  // Where the pipeline step's time went on this rank (pp > 1).
  const parallel::pipeline::ExecutorStats& pipeline_stats() const { return stats_; }
  const parallel::pipeline::Schedule* schedule() const { return schedule_.get(); }

 private:
  class ChunkWorker;
  struct CopyGroup;  // parameters whose copies live on the same set of pipeline ranks

  std::set<int> holders_of_stage(int stage) const;
  std::set<int> holders_of(const std::string& name, int stage) const;
  void sum_copies();

  const RunConfig& config_;
  parallel::ProcessGroups& groups_;
  int pp_;
  std::unique_ptr<parallel::pipeline::Schedule> schedule_;
  std::vector<std::unique_ptr<parallel::Communicator>> ep_copies_;  // EP groups of chunks >= 1
  std::vector<std::unique_ptr<parallel::ExpertParallelDispatcher>> dispatchers_;
  std::vector<std::unique_ptr<model::DeepSeekV3>> chunks_;
  std::vector<std::unique_ptr<ChunkWorker>> workers_;
  std::unique_ptr<parallel::pipeline::PipelineExecutor> executor_;
  parallel::pipeline::ExecutorStats stats_;

  model::ParameterList primaries_;
  // Second local copies and the first copy they mirror.
  std::vector<std::pair<model::Parameter*, model::Parameter*>> local_copies_;
  std::map<const model::Parameter*, int> copy_count_;  // pipeline ranks holding each primary
  std::vector<std::unique_ptr<CopyGroup>> copy_groups_;
  std::set<std::string> stored_;
  std::vector<std::string> moe_names_;
  std::map<std::string, model::Moe*> held_moes_;
};

}  // namespace fathom::trainer
