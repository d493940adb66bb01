// Run configuration: the typed form of a run YAML (configs/runs/*.yaml; DESIGN.md decision 6).
//
// A run YAML has these top-level sections; every key is optional and the defaults suit a short
// run of configs/models/tiny.yaml on a CPU:
//   base: pretrain-tiny.yaml     # start from another run YAML (relative to this file) and
//                                # override its keys: mappings merge key by key
//   model: ../models/tiny.yaml   # a model YAML, relative to this file's directory, or a mapping
//   precision: fp32              # fp32 | bf16 | fp8
//   seed: 1                      # parameter init; also the data seed unless data.seed is given
//   train:     steps, micro_batch_size, grad_accum, seq_len, recompute, log_every, eval_every,
//              eval_samples, checkpoint_every, threads, init_from
//   optimizer: lr, min_lr, beta1, beta2, eps, weight_decay, grad_clip, moments,
//              schedule: {type, warmup_steps, decay_start, decay_steps, decay_shape}
//   mtp:       lambda, lambda_after, switch_step
//   data:      task, weights, seed, train_problems, arithmetic: {...}, countdown: {...}
//   parallel:  pp, dp, ep, fp8_dispatch, schedule, fb_overlap (parallel/topology.h)
// The fields below say what each key means and what it defaults to. Defaults that depend on other
// keys are resolved while parsing, so a RunConfig holds only concrete values and
// run_config_to_yaml() writes them all out.
//
// Errors are absl::Status (InvalidArgument) with one line per problem, every problem at once, in
// the style of model/config.h: "configs/runs/x.yaml:12: train.seq_len: must be at most
// model.max_seq_len (256), got 512", "...: optimizer.lrr: unknown key (did you mean 'lr'?)".
// Errors found in a model file carry that file's name and lines.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "data/loader.h"
#include "data/tasks.h"
#include "kernels/dtype.h"
#include "model/config.h"
#include "model/precision.h"
#include "parallel/topology.h"
#include "trainer/lr_schedule.h"
#include "yaml-cpp/yaml.h"

namespace fathom::trainer {

struct TrainConfig {
  int64_t steps = 300;           // optimizer steps, >= 1
  int64_t micro_batch_size = 8;  // sequences per micro-batch per data-parallel rank, >= 1
  int64_t grad_accum = 1;        // micro-batches per optimizer step, >= 1
  int64_t seq_len = 64;          // tokens per sequence, in [1, model.max_seq_len]
  bool recompute = false;        // recompute activations in backward instead of saving them
  int64_t log_every = 10;        // steps between metrics lines, >= 1
  int64_t eval_every = 100;      // steps between held-out evaluations; 0: only at the end
  int64_t eval_samples = 256;    // held-out problems per evaluation; 0: no evaluation
  int64_t checkpoint_every = 0;  // steps between checkpoints; 0: only at the end
  int64_t threads = 0;           // CPU threads per rank; 0: all cores
  // A checkpoint directory to take the initial weights from (parameters and router biases; the
  // optimizer starts fresh at step 0): a training checkpoint, or a Hugging Face model imported
  // with `fathom convert`. Relative to the working directory. Empty: random initialisation.
  std::string init_from;

  bool operator==(const TrainConfig&) const = default;
};

struct OptimizerConfig {
  // AdamW (SPEC.md section 2: betas 0.9 / 0.95, weight decay 0.1, gradient clipping at 1.0).
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;  // global gradient-norm limit; 0: no clipping
  // Dtype of the AdamW moments, kF32 or kBF16. Default: bf16 with precision fp8 (as in V3),
  // else f32.
  DType moments = DType::kF32;
  // The learning-rate schedule, including the keys optimizer.lr (default 3e-3) and
  // optimizer.min_lr (default 3e-4) and the section optimizer.schedule:
  //   type          wcc (default) | wsd | cosine
  //   warmup_steps  default steps / 10
  //   decay_steps   wcc and wsd; default max(1, steps / 5)
  //   decay_start   wcc and wsd; default steps - decay_steps (the decay ends with the run)
  //   decay_shape   wsd only: linear (default) | 1-sqrt
  // cosine takes neither decay key: it decays from warmup_steps to steps (make_cosine()).
  LrSchedule schedule;

  bool operator==(const OptimizerConfig&) const = default;
};

struct DataConfig {
  // "arithmetic", "countdown" or "mix" (both kinds, weighted by the weights below).
  std::string task = "arithmetic";
  // Key data.weights: {arithmetic: w, countdown: w}; only with task mix; default 1 and 1.
  double arithmetic_weight = 1.0;
  double countdown_weight = 1.0;
  int64_t seed = 1;            // default: the run's seed
  int64_t train_problems = 0;  // distinct train problems cycled through; 0: fresh without end
  // Keys data.arithmetic: {min_digits, max_digits, ops, allow_negative} and data.countdown:
  // {min_numbers, max_numbers, max_value, max_target} (data/tasks.h has their meaning and ranges).
  data::TaskOptions options;

  bool operator==(const DataConfig& other) const;
};

// Made by parse_run_config() / load_run_config(), which resolve the defaults that depend on other
// fields; a default-constructed RunConfig holds only the plain member defaults (e.g. no warmup).
struct RunConfig {
  model::ModelConfig model;
  model::TrainingPrecision precision = model::TrainingPrecision::kFp32;
  int64_t seed = 1;  // >= 0
  TrainConfig train;
  OptimizerConfig optimizer;
  // The MTP loss weight over the run; defaults: lambda = model.mtp_lambda, lambda_after = lambda,
  // switch_step = train.steps (no switch).
  MtpSchedule mtp;
  DataConfig data;
  // Section parallel: {pp, dp, ep, fp8_dispatch, schedule, fb_overlap} (parallel/topology.h);
  // checked against the world size when the job starts. With pp > 1, train.grad_accum is the
  // number of micro-batches the pipeline schedule runs per step.
  parallel::ParallelConfig parallel;

  bool operator==(const RunConfig&) const = default;
};

// Applies `--set key.path=value` overrides to a parsed run YAML, in order. The value is parsed as
// YAML ("3e-4", "true", "[1, 2]"); text that is not valid YAML is taken as a plain string.
// Missing mappings on the path are created; a null root becomes a mapping. Unknown keys are not
// checked here: the parser then reports them with a "did you mean". Errors (InvalidArgument, every
// bad override at once, `root` unchanged by them): no '=' or an empty or malformed key path
// ("--set 'train.steps': expected key.path=value"), or a path through a value that is not a
// mapping ("--set train.steps.x=1: train.steps is '300', not a mapping").
absl::Status apply_overrides(YAML::Node& root, const std::vector<std::string>& sets);

// Reads a whole run YAML (the root mapping). source: the file name for messages ("" for none);
// base_dir: the directory a `model:` path is relative to. Errors as described at the top, plus the
// checks: every size positive, steps >= 1, seq_len <= model.max_seq_len, model.vocab_size at least
// the data tokenizer's vocabulary (263), lr > 0, 0 <= min_lr <= lr, 0 <= beta1, beta2 < 1,
// eps > 0, weight_decay and grad_clip >= 0, warmup_steps <= steps (< steps for cosine),
// decay_start >= warmup_steps, mtp weights >= 0, data.weights >= 0 and not both 0, task options
// in range, and keys given that the chosen type does not use (decay keys for cosine, decay_shape
// without wsd, weights without mix).
absl::StatusOr<RunConfig> parse_run_config(const YAML::Node& root, std::string_view source = "",
                                           const std::string& base_dir = ".");

// Loads `file`, applies `sets` (see apply_overrides; keys under "model." go into the model file
// when `model:` is a path, so its errors keep that file's lines) and parses it. Errors: NotFound
// for a missing file; InvalidArgument for invalid YAML, bad overrides and everything
// parse_run_config() reports.
absl::StatusOr<RunConfig> load_run_config(const std::string& file,
                                          const std::vector<std::string>& sets = {});

// The config as a self-contained run YAML (the model inline, every field, numbers written so they
// read back exactly): parse_run_config(YAML::Load(run_config_to_yaml(c))) == c.
std::string run_config_to_yaml(const RunConfig& config);

// Loader options of rank `rank` of `world` data-parallel ranks: the data section, seq_len, and
// extra = model.mtp_depth + 1 tokens of look-ahead.
data::LoaderOptions loader_options(const RunConfig& config, int64_t rank = 0, int64_t world = 1);

}  // namespace fathom::trainer
