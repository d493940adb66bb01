// Single-process training of a DeepSeek-V3 model from a RunConfig (`fathom train RUN.yaml`).
//
// Each step: grad_accum micro-batches of micro_batch_size sequences from the task loader, forward
// and backward with loss scale 1 / grad_accum, global-norm clipping and AdamW at the scheduled LR,
// then the auxiliary-loss-free router-bias update from the step's expert load (SPEC.md section 1).
//
// The run directory holds:
//   config.yaml    the resolved run config
//   metrics.jsonl  one JSON object per logged step (trainer/metrics.h): step, loss, lm_loss,
//                  mtp_loss, balance_loss, grad_norm, lr, mtp_lambda, tokens_per_s, mfu, step_ms,
//                  expert_load_max_mean (max / mean expert load of each MoE layer),
//                  expert_load.<layer> (tokens per expert over the global batch), with expert
//                  parallelism ep_rows_sent / ep_rows_received (per peer rank), ep_bytes_sent and
//                  ep_all_to_all_ms (rank 0's traffic over the step), and eval_* on evaluation
//                  steps
//   checkpoints/step-NNNNNN/  HDF5 checkpoints (trainer/checkpoint.h): parameters, AdamW moments
//                  ("optim.m.<name>", "optim.v.<name>", flattened to 1-D), router biases, and in the metadata the step,
//                  the optimizer step count, the loader position and the run config.
// Resume continues bit-identically: training is deterministic given the config (counter-based
// initialisation, a counter-based data stream, no dropout), and the checkpoint holds every piece
// of state that changes during training.
//
// Many ranks (issue 4): with a world communicator, the ranks form the grid of config.parallel
// (parallel/topology.h): data parallelism with ZeRO-1 (trainer/zero_optimizer.h), each DP rank
// reading its own share of every global batch, and expert parallelism inside the DP group
// (parallel/expert_parallel.h). Losses are averaged and expert loads summed over the DP group, so
// every rank holds identical parameters and router biases. Rank 0 logs and writes metrics; every
// rank writes its own checkpoint shard (its unique rows of every tensor, under global names), so a
// checkpoint written under one layout resumes under another. Pipeline parallelism (pp > 1) is not
// available yet.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/device.h"
#include "parallel/communicator.h"
#include "trainer/evaluate.h"
#include "trainer/run_config.h"

namespace fathom::trainer {

struct TrainOptions {
  std::string run_dir = "runs/default";
  // Continue from the newest checkpoint in run_dir/checkpoints (FailedPrecondition when there is
  // none, or when its model or precision differ from the config).
  bool resume = false;
  Device device = Device::cpu();
  FILE* log = stderr;  // progress and summaries (rank 0 only); nullptr: silent
  // The ranks of this job; nullptr: this process alone. Must outlive train().
  parallel::Communicator* world = nullptr;
};

struct TrainResult {
  int64_t start_step = 0;     // 0, or the step resumed from
  int64_t steps = 0;          // the step reached (config.train.steps)
  std::vector<double> loss;   // total loss of every step run, in order
  std::vector<double> lm_loss;
  EvalResult first_eval;      // before the first step run (when evaluation is on)
  EvalResult last_eval;       // after the last step
  double tokens_per_s = 0;    // training throughput over the steps run
  double mfu = 0;             // model FLOPs utilisation (0 when the peak is unknown)
  std::string checkpoint;     // the final checkpoint directory
};

// Errors (absl::Status): an unusable run directory, a bad resume, checkpoint I/O, evaluation set
// construction. Errors inside the model (bad shapes) throw fathom::Error.
absl::StatusOr<TrainResult> train(const RunConfig& config, const TrainOptions& options);

}  // namespace fathom::trainer
