#include "trainer/trainer.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/threads.h"
#include "model/param_count.h"
#include "parallel/local_communicator.h"
#include "parallel/topology.h"
#include "trainer/checkpoint.h"
#include "trainer/flops.h"
#include "trainer/hf_checkpoint.h"
#include "trainer/lr_schedule.h"
#include "trainer/metrics.h"
#include "trainer/optimizer.h"
#include "trainer/train_model.h"
#include "trainer/zero_optimizer.h"

namespace fathom::trainer {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr char kConsumedKey[] = "consumed_samples";
constexpr char kOptimizerStepsKey[] = "optimizer_steps";
constexpr char kConfigKey[] = "config";

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void log_line(FILE* log, const std::string& line) {
  if (log == nullptr) return;
  std::fprintf(log, "%s\n", line.c_str());
  std::fflush(log);
}

// What this rank stores of a checkpoint, and what it loads, as shards over the live tensors (read
// fills them in place). Each row of each global tensor is written by exactly one rank: replicated
// tensors by world rank 0, expert weights by the first rank of their expert-data-parallel group,
// optimizer moments by their ZeRO owner. Every rank reads everything it holds.
struct CheckpointState {
  std::vector<TensorShard> write;
  std::vector<TensorShard> read;
};

CheckpointState checkpoint_state(TrainModel& model, ZeroAdamW& optimizer, int dp_rank,
                                 int edp_rank) {
  CheckpointState state;
  for (model::Parameter* p : model.all_copies()) {
    TensorShard shard{p->name, p->value, p->global(), p->row_offset};
    state.read.push_back(shard);
  }
  for (model::Parameter* p : model.parameters()) {
    const bool owner = model.stores(p->name) && (p->is_expert ? edp_rank == 0 : dp_rank == 0);
    if (owner) state.write.push_back({p->name, p->value, p->global(), p->row_offset});
  }
  for (model::Buffer* b : model.buffers()) {
    TensorShard shard{b->name, b->value};
    if (dp_rank == 0 && model.stores(b->name)) state.write.push_back(shard);
    state.read.push_back(shard);
  }
  for (const TensorShard& m : optimizer.moment_shards()) {
    // "optim.m.<parameter>" / "optim.v.<parameter>" (prefixes of equal length): stored by the
    // pipeline rank that stores the parameter.
    if (model.stores(m.name.substr(std::string("optim.m.").size()))) state.write.push_back(m);
    state.read.push_back(m);
  }
  return state;
}

// Sums `values` over the group in place (no-op for one rank, so a single rank keeps its exact
// doubles).
void sum_over(parallel::Communicator& group, std::vector<double>& values) {
  if (group.size() == 1) return;
  std::vector<float> f(values.begin(), values.end());
  Tensor t = Tensor::from_floats(f, {static_cast<int64_t>(f.size())});
  parallel::all_reduce_sync(group, t);
  const std::vector<float> out = t.to_floats();
  for (size_t i = 0; i < values.size(); ++i) values[i] = out[i];
}

// Keeps the metrics lines of steps <= `step` (a resumed run rewrites what follows).
absl::Status truncate_metrics(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return absl::OkStatus();
  std::string kept, line;
  while (std::getline(in, line)) {
    const size_t at = line.find("\"step\":");
    if (at != std::string::npos && std::stoll(line.substr(at + 7)) > step) continue;
    kept += line + "\n";
  }
  in.close();
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << kept;
    if (!out.flush()) return absl::DataLossError(absl::StrCat("cannot rewrite ", path));
  }
  fs::rename(tmp, path);
  return absl::OkStatus();
}

absl::Status write_text_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    if (!out.flush()) return absl::DataLossError(absl::StrCat("cannot write ", path));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return absl::DataLossError(absl::StrCat("cannot write ", path, ": ", ec.message()));
  return absl::OkStatus();
}

// The part of a config that a checkpoint's tensors depend on.
std::string model_identity(const RunConfig& c) {
  return absl::StrCat(model::model_config_to_yaml(c.model),
                      "precision: ", std::string(model::precision_name(c.precision)), "\n");
}

}  // namespace

absl::StatusOr<TrainResult> train(const RunConfig& config, const TrainOptions& options) {
  const TrainConfig& tc = config.train;
  if (tc.threads > 0) set_cpu_threads(static_cast<int>(tc.threads));

  parallel::LocalCommunicator alone;
  parallel::Communicator& world = options.world != nullptr ? *options.world : alone;
  FATHOM_RETURN_IF_ERROR(parallel::validate(config.parallel, world.size(), config.model));
  const parallel::RankGrid grid(config.parallel);
  parallel::ProcessGroups groups = parallel::make_groups(world, grid);
  const int world_rank = world.rank();
  const bool lead = world_rank == 0;
  FILE* log = lead ? options.log : nullptr;

  std::error_code ec;
  if (lead) fs::create_directories(options.run_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create run directory ", options.run_dir, ": ", ec.message()));
  }
  const std::string checkpoints_dir = options.run_dir + "/checkpoints";
  const std::string metrics_path = options.run_dir + "/metrics.jsonl";

  TrainModel model(config, options.device, groups);
  model.init(static_cast<uint64_t>(config.seed));
  AdamWOptions adam;
  adam.beta1 = config.optimizer.beta1;
  adam.beta2 = config.optimizer.beta2;
  adam.eps = config.optimizer.eps;
  adam.weight_decay = config.optimizer.weight_decay;
  adam.grad_clip = config.optimizer.grad_clip;
  adam.moments = config.optimizer.moments;
  ZeroAdamW optimizer(model.parameters(), adam, *groups.dp, *groups.edp);
  if (model.pipeline_group() != nullptr) {
    optimizer.set_pipeline_norm(model.pipeline_group(), [&model](const model::Parameter& p) {
      return model.norm_weight(p);
    });
  }
  const int dp_size = groups.dp->size();
  FATHOM_ASSIGN_OR_RETURN(
      data::TokenLoader loader,
      data::TokenLoader::create(loader_options(config, groups.dp->rank(), dp_size)));
  const int64_t samples_per_step = tc.grad_accum * tc.micro_batch_size * dp_size;

  TrainResult result;
  const int edp_rank = groups.edp->rank();
  const int dp_rank = groups.dp->rank();
  if (options.resume) {
    absl::StatusOr<std::string> latest = latest_checkpoint(checkpoints_dir);
    if (!latest.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--resume: no checkpoint to resume from in ", checkpoints_dir, " (",
          latest.status().message(), ")"));
    }
    CheckpointState state = checkpoint_state(model, optimizer, dp_rank, edp_rank);
    CheckpointMeta meta;
    FATHOM_RETURN_IF_ERROR(read_checkpoint(*latest, absl::MakeSpan(state.read), &meta));
    FATHOM_ASSIGN_OR_RETURN(RunConfig saved, [&]() -> absl::StatusOr<RunConfig> {
      const YAML::Node root = YAML::Load(meta.text[kConfigKey]);
      return parse_run_config(root, *latest + " (saved config)", options.run_dir);
    }());
    if (model_identity(saved) != model_identity(config)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--resume: checkpoint ", *latest,
          " was written for another model or precision; its config is saved in the checkpoint"));
    }
    const std::vector<uint64_t>& consumed = meta.u64[kConsumedKey];
    const std::vector<uint64_t>& opt_steps = meta.u64[kOptimizerStepsKey];
    if (consumed.size() != 1 || opt_steps.size() != 1) {
      return absl::DataLossError(absl::StrCat("--resume: checkpoint ", *latest,
                                              " lacks its data position or optimizer step"));
    }
    loader.skip_to(static_cast<int64_t>(consumed[0]));
    optimizer.set_steps(static_cast<int64_t>(opt_steps[0]));
    for (model::Parameter* p : model.all_copies()) ++p->version;
    result.start_step = meta.step;
    if (lead) FATHOM_RETURN_IF_ERROR(truncate_metrics(metrics_path, meta.step));
    log_line(log, absl::StrCat("resumed from ", *latest, " at step ", meta.step));
  } else {
    if (fs::exists(checkpoints_dir)) {
      return absl::FailedPreconditionError(absl::StrCat(
          options.run_dir, " already holds checkpoints: pass --resume to continue that run, or "
          "choose another --run-dir"));
    }
    if (lead) fs::remove(metrics_path, ec);
    if (!tc.init_from.empty()) {
      const absl::Status loaded = load_v3_weights(tc.init_from, model.all_copies(), model.buffers());
      if (!loaded.ok()) {
        return absl::Status(loaded.code(), absl::StrCat("train.init_from: ", loaded.message()));
      }
      log_line(log, absl::StrCat("initial weights from ", tc.init_from));
    }
  }
  world.barrier();  // nobody writes into the run directory before everyone has looked at it
  std::optional<MetricsWriter> metrics;
  if (lead) {
    FATHOM_RETURN_IF_ERROR(write_text_file(options.run_dir + "/config.yaml",
                                           run_config_to_yaml(config)));
    FATHOM_ASSIGN_OR_RETURN(metrics, MetricsWriter::open(options.run_dir));
  }

  EvalSet eval_set;
  const bool evaluating = tc.eval_samples > 0;
  if (evaluating) {
    FATHOM_ASSIGN_OR_RETURN(eval_set, make_eval_set(loader_options(config), tc.eval_samples));
  }
  const int64_t eval_batch = std::max<int64_t>(tc.micro_batch_size, 16);

  const int64_t tokens_per_step = samples_per_step * tc.seq_len;  // over all DP ranks
  const double flops_per_token = training_flops_per_token(config.model, tc.seq_len);
  PeakFlops peak = peak_flops(options.device, config.precision);
  peak.flops_per_s *= world.size();  // MFU of the whole job
  const model::ParamCount counts = model::count_parameters(config.model);
  log_line(log,
           absl::StrCat("model: ", counts.trained(), " parameters (", counts.activated,
                        " activated per token), precision ",
                        std::string(model::precision_name(config.precision)), ", ",
                        options.device.str(), "; ", world.size(), " rank(s): pp ", grid.pp(),
                        " x dp ", grid.dp(), ", ep ", grid.ep(),
                        grid.pp() > 1 ? absl::StrCat(" (", std::string(
                                            parallel::pipeline::schedule_kind_name(
                                                config.parallel.schedule)), ")")
                                      : std::string(),
                        "; ", tokens_per_step,
                        " tokens per step; peak ", format_si(peak.flops_per_s), "FLOP/s per rank (",
                        peak.source, ")"));
  if (evaluating) {
    result.first_eval = model.evaluate(eval_set, eval_batch);
    log_line(log,
             absl::StrCat("step ", result.start_step, ": held-out loss ",
                          format_number(result.first_eval.loss), ", answer exact match ",
                          format_number(result.first_eval.answer_accuracy), " (",
                          result.first_eval.problems, " problems)"));
  }

  const auto save = [&](int64_t step) -> absl::Status {
    const std::string dir = checkpoint_dir_for_step(checkpoints_dir, step);
    result.checkpoint = dir;
    if (step == result.start_step && options.resume) return absl::OkStatus();  // it exists
    CheckpointMeta meta;
    meta.step = step;
    meta.u64[kConsumedKey] = {static_cast<uint64_t>(step * samples_per_step)};
    meta.u64[kOptimizerStepsKey] = {static_cast<uint64_t>(optimizer.steps())};
    meta.text[kConfigKey] = run_config_to_yaml(config);
    const CheckpointState state = checkpoint_state(model, optimizer, dp_rank, edp_rank);
    FATHOM_RETURN_IF_ERROR(
        write_checkpoint_shard(dir, world_rank, world.size(), state.write, meta));
    world.barrier();  // the checkpoint is complete when every shard is
    return absl::OkStatus();
  };

  std::optional<ProgressPrinter> progress;
  if (log != nullptr) progress.emplace(log, tc.log_every);
  const std::vector<std::string>& moe_names = model.moe_layer_names();
  const auto run_start = Clock::now();
  double compute_seconds = 0;
  std::vector<Tensor> micro_batches(tc.grad_accum);
  for (int64_t step = result.start_step; step < tc.steps; ++step) {
    const auto step_start = Clock::now();
    const double lr = learning_rate(config.optimizer.schedule, step);
    const double lambda = mtp_lambda(config.mtp, step);
    model.set_mtp_lambda(lambda);
    optimizer.zero_grad();
    for (Tensor& batch : micro_batches) batch = loader.next_batch(tc.micro_batch_size);
    model::Losses sum = model.forward_backward(micro_batches, dp_size > 1 ? &optimizer : nullptr);
    const StepResult stepped = optimizer.step(lr);
    model.after_step();
    // Losses: the mean over the DP ranks (each saw the same number of tokens).
    std::vector<double> parts = {sum.total, sum.lm, sum.mtp, sum.balance};
    sum_over(*groups.dp, parts);
    for (double& v : parts) v /= static_cast<double>(dp_size);
    sum.total = parts[0];
    sum.lm = parts[1];
    sum.mtp = parts[2];
    sum.balance = parts[3];
    // Auxiliary-loss-free balancing from this step's load over the global batch, so every rank
    // applies the same update.
    const std::vector<std::vector<double>> expert_load = model.expert_load();
    std::vector<double> load_max_mean;
    for (const std::vector<double>& load : expert_load) {
      double mean = 0, max = 0;
      for (double v : load) {
        mean += v;
        max = std::max(max, v);
      }
      mean /= static_cast<double>(load.size());
      load_max_mean.push_back(mean > 0 ? max / mean : 0.0);
    }
    model.update_biases(expert_load, config.model.bias_update_speed);
    const double step_seconds = seconds_since(step_start);
    compute_seconds += step_seconds;
    result.loss.push_back(sum.total);
    result.lm_loss.push_back(sum.lm);
    const int64_t done = step + 1;
    const double tokens_per_s = static_cast<double>(tokens_per_step) / step_seconds;
    const double mfu = peak.flops_per_s > 0 ? tokens_per_s * flops_per_token / peak.flops_per_s : 0;

    const bool eval_now = evaluating && done < tc.steps && tc.eval_every > 0 &&
                          done % tc.eval_every == 0;
    const bool log_now = done % tc.log_every == 0 || done == tc.steps || done == 1 || eval_now;
    if (log_now) {
      JsonObject record;
      record.add("step", done)
          .add("loss", sum.total)
          .add("lm_loss", sum.lm)
          .add("mtp_loss", sum.mtp)
          .add("balance_loss", sum.balance)
          .add("grad_norm", stepped.grad_norm)
          .add("lr", lr)
          .add("mtp_lambda", lambda)
          .add("tokens_per_s", tokens_per_s)
          .add("mfu", mfu)
          .add("step_ms", step_seconds * 1e3)
          .add("expert_load_max_mean", absl::MakeConstSpan(load_max_mean));
      // Tokens per expert over the global batch, one key per MoE layer (router collapse shows
      // here first).
      for (size_t i = 0; i < expert_load.size(); ++i) {
        record.add(absl::StrCat("expert_load.", moe_names[i]), absl::MakeConstSpan(expert_load[i]));
      }
      if (model.schedule() != nullptr) {
        // Rank 0's pipeline step: its busy and waiting time, and how much of the overlapped
        // forward+backward pairs ran concurrently.
        const parallel::pipeline::ExecutorStats& ps = model.pipeline_stats();
        record.add("pp_forward_ms", ps.forward.seconds * 1e3)
            .add("pp_backward_ms", (ps.backward_full.seconds + ps.backward_input.seconds) * 1e3)
            .add("pp_weight_ms", ps.weight.seconds * 1e3)
            .add("pp_forward_backward_ms", ps.forward_backward.seconds * 1e3)
            .add("pp_overlapped_ms", ps.overlapped_seconds() * 1e3)
            .add("pp_receive_wait_ms", ps.receive_wait_seconds * 1e3);
      }
      if (model.expert_parallel()) {
        // This rank's expert-parallel traffic over the step (rank 0's, as every log line).
        const parallel::ExpertParallelMetrics ep = model.ep_metrics();
        record.add("ep_rows_sent", absl::MakeConstSpan(ep.rows_sent))
            .add("ep_rows_received", absl::MakeConstSpan(ep.rows_received))
            .add("ep_bytes_sent", ep.bytes_sent)
            .add("ep_all_to_all_ms", ep.all_to_all_seconds * 1e3);
      }
      if (stepped.skipped) record.add("skipped", true);
      if (eval_now) {
        const EvalResult e = model.evaluate(eval_set, eval_batch);
        record.add("eval_loss", e.loss)
            .add("eval_answer_accuracy", e.answer_accuracy)
            .add("eval_answer_token_accuracy", e.answer_token_accuracy);
        if (progress) progress->print(absl::StrCat("step ", done, ": held-out loss ", format_number(e.loss),
                                    ", answer exact match ", format_number(e.answer_accuracy)));
      }
      if (metrics) FATHOM_RETURN_IF_ERROR(metrics->write(record));
    }
    model.reset_ep_metrics();
    const double elapsed = seconds_since(run_start);
    const double done_tokens = static_cast<double>((done - result.start_step) * tokens_per_step);
    const double max_load = load_max_mean.empty()
                                ? 0.0
                                : *std::max_element(load_max_mean.begin(), load_max_mean.end());
    std::vector<ProgressItem> items = {ProgressItem::number("loss", sum.total),
                                       ProgressItem::number("lr", lr),
                                       ProgressItem::rate(done_tokens / compute_seconds, "tok/s")};
    if (!moe_names.empty()) items.push_back(ProgressItem::number("load max/mean", max_load));
    if (progress) {
      progress->update(done, tc.steps,
                       format_progress(done, tc.steps, elapsed, items, result.start_step));
    }
    if (tc.checkpoint_every > 0 && done % tc.checkpoint_every == 0 && done < tc.steps) {
      FATHOM_RETURN_IF_ERROR(save(done));
    }
  }
  if (progress) progress->finish();
  result.steps = tc.steps;
  if (compute_seconds > 0) {
    result.tokens_per_s =
        static_cast<double>((tc.steps - result.start_step) * tokens_per_step) / compute_seconds;
    result.mfu = peak.flops_per_s > 0
                     ? result.tokens_per_s * flops_per_token / peak.flops_per_s
                     : 0.0;
  }
  FATHOM_RETURN_IF_ERROR(save(tc.steps));
  if (evaluating) {
    result.last_eval = model.evaluate(eval_set, eval_batch);
    JsonObject record;
    record.add("step", tc.steps)
        .add("eval_loss", result.last_eval.loss)
        .add("eval_answer_accuracy", result.last_eval.answer_accuracy)
        .add("eval_answer_token_accuracy", result.last_eval.answer_token_accuracy);
    if (metrics) FATHOM_RETURN_IF_ERROR(metrics->write(record));
  }
  std::string summary = absl::StrCat("trained steps ", result.start_step, "..", tc.steps);
  if (!result.loss.empty()) {
    absl::StrAppend(&summary, ": loss ", format_number(result.loss.front()), " -> ",
                    format_number(result.loss.back()), ", ", format_si(result.tokens_per_s),
                    " tok/s, MFU ", format_number(result.mfu));
  }
  if (evaluating) {
    absl::StrAppend(&summary, "; held-out answer exact match ",
                    format_number(result.first_eval.answer_accuracy), " -> ",
                    format_number(result.last_eval.answer_accuracy));
  }
  log_line(log, summary);
  log_line(log, absl::StrCat("checkpoint: ", result.checkpoint, "; metrics: ", metrics_path));
  return result;
}

}  // namespace fathom::trainer
