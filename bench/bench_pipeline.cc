// bench_pipeline: measured step time and bubble of the pipeline schedules with real model chunks,
// next to the simulator's prediction from the measured per-op costs, and the share of the expert
// all-to-all time that FB overlap hides (issue 5 "Benchmarks", docs/pipeline.md "Measured on
// CPU").
//
// The model is a preset (configs/models/small.yaml or tiny.yaml) with n_layers = 8, so that
// DualPipeV's 2P = 8 stages on 4 ranks hold one block each; the run settings come from
// configs/runs/pretrain-tiny.yaml with the layout, schedule and batch overridden (the same
// validation as `fathom train`). Micro-batches are random token ids (seeded by data-parallel
// rank): the step's work does not depend on the data. No optimizer step runs: a step is
// TrainModel::forward_backward, i.e. the pipeline program plus the summing of parameter copies.
//
// Section 1, schedules (pp 4 x dp 1): 1F1B, ZB1P, DualPipe, DualPipeV, N micro-batches, with
// fb_overlap off: without expert parallelism there is no all-to-all to hide, a second thread per
// pair would only compete for the cores, and the executor then runs one compute at a time, as the
// simulator assumes. One warm-up step, then K timed steps, each after a barrier. Per step, from
// each rank's ExecutorStats:
//   step time   max over ranks of total_seconds (the makespan of the program)
//   compute     F + B (full and input-only) + W + F&B pair wall time (receive waits excluded)
//   bubble      1 - compute / step time, per rank (the simulator's bubble / makespan)
// Each figure is the median over the K steps; bubbles are reported as the mean and the worst
// rank. Per-op costs are pooled means over every op of every rank and timed step.
// The prediction runs simulate() on the same schedule with costs chosen so that the simulated
// busy time of the mean rank equals the measured compute time:
//   F    the measured F mean
//   W    the measured W mean (0 where the schedule defers nothing)
//   B    (sum of full B + sum of input-only B + n_input_only * W) / (n_full + n_input_only): the
//        simulator charges an input-only B as B - W, so this is the measured full B for 1F1B and
//        input-only B + W for ZB1P, and their weighted mix for DualPipe(V)
//   F&B  (sum of F&B pair wall times + n_deferred_pairs * W) / n_pairs, for the same reason
//   p2p  one-way time of a boundary-sized message, measured by ping-pong between ranks (0, 1)
//        and (2, 3) at once before the schedules run (median of round trips / 2)
// The measured receive waits are printed too; they are dependency waits (bubbles), not transfer
// times, so they do not give p2p.
//
// Section 2, FB overlap (pp 2 x dp 2 x ep 2, DualPipe, N micro-batches), with
// parallel.fb_overlap off, then on: step time, the all-to-all time of the step (ep_metrics(),
// reset before each step), the F&B pairs' wall time and ExecutorStats::overlapped_seconds(). The
// fraction of all-to-all time hidden = (step_off - step_on) / all_to_all_off, clamped to [0, 1]
// (negative: overlap made the step slower), and the direct measure overlapped_on / all_to_all_on.
//
// With 4 ranks on a 2-core machine the ranks share cores: measured compute times include waiting
// for a core, which changes with how many ranks are computing at once. The header says so.
//
// usage: mpirun -np 4 bench_pipeline [--steps K] [--model small|tiny] [--micro-batches N]
//                                    [--seq-len S] [--micro-batch-size B] [--threads T]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/device.h"
#include "kernels/tensor.h"
#include "kernels/threads.h"
#include "parallel/communicator.h"
#include "parallel/fault.h"
#include "parallel/mpi_env.h"
#include "parallel/pipeline/executor.h"
#include "parallel/pipeline/schedule.h"
#include "parallel/pipeline/simulator.h"
#include "parallel/topology.h"
#include "trainer/run_config.h"
#include "trainer/train_model.h"

#ifndef FATHOM_SOURCE_DIR
#error "FATHOM_SOURCE_DIR must name the source tree (set by bench/CMakeLists.txt)"
#endif

namespace fathom::bench {
namespace {

using Clock = std::chrono::steady_clock;
using parallel::pipeline::Costs;
using parallel::pipeline::ExecutorStats;
using parallel::pipeline::Schedule;
using parallel::pipeline::ScheduleKind;

constexpr int kRanks = 4;
constexpr int kLayers = 8;  // DualPipeV on 4 ranks: 8 stages of one block

struct Args {
  int steps = 3;
  std::string model = "small";
  int micro_batches = 8;
  int64_t seq_len = 64;
  int64_t micro_batch_size = 1;
  int threads = 1;
};

bool parse_int(const char* text, int64_t& out) {
  char* end = nullptr;
  const long long v = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || v < 1) return false;
  out = v;
  return true;
}

// The same arguments on every rank, so every rank returns the same result.
bool parse_args(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) return false;
    int64_t v = 0;
    if (arg == "--model") {
      a.model = argv[++i];
      if (a.model != "small" && a.model != "tiny") return false;
      continue;
    }
    if (!parse_int(argv[++i], v)) return false;
    if (arg == "--steps") {
      a.steps = static_cast<int>(v);
    } else if (arg == "--micro-batches") {
      a.micro_batches = static_cast<int>(v);
    } else if (arg == "--seq-len") {
      a.seq_len = v;
    } else if (arg == "--micro-batch-size") {
      a.micro_batch_size = v;
    } else if (arg == "--threads") {
      a.threads = static_cast<int>(v);
    } else {
      return false;
    }
  }
  return true;
}

void print_usage() {
  std::fprintf(stderr,
               "usage: mpirun -np 4 bench_pipeline [--steps K] [--model small|tiny] "
               "[--micro-batches N] [--seq-len S] [--micro-batch-size B] [--threads T]\n"
               "  defaults: K 3, small, N 8, S 64, B 1, T 1 (threads per rank); every value >= 1;\n"
               "  N must suit every schedule on pp 4 and pp 2 (even, >= 8)\n");
}

// The run config of one measured layout: configs/runs/pretrain-tiny.yaml with the model preset,
// 8 layers, the batch, the layout and the schedule overridden.
absl::StatusOr<trainer::RunConfig> layout_config(const Args& a, int pp, int dp, int ep,
                                                 ScheduleKind kind, bool fb_overlap) {
  const std::string source = FATHOM_SOURCE_DIR;
  return trainer::load_run_config(
      source + "/configs/runs/pretrain-tiny.yaml",
      {"model=../models/" + a.model + ".yaml", "model.n_layers=" + std::to_string(kLayers),
       "train.seq_len=" + std::to_string(a.seq_len),
       "train.micro_batch_size=" + std::to_string(a.micro_batch_size),
       "train.grad_accum=" + std::to_string(a.micro_batches),
       "train.threads=" + std::to_string(a.threads), "parallel.pp=" + std::to_string(pp),
       "parallel.dp=" + std::to_string(dp), "parallel.ep=" + std::to_string(ep),
       "parallel.schedule=" + std::string(parallel::pipeline::schedule_kind_name(kind)),
       std::string("parallel.fb_overlap=") + (fb_overlap ? "true" : "false")});
}

// What each rank records per step; gathered to every rank as int64 (times in ns).
enum Field : int {
  kTotal,
  kForward,
  kForwardCount,
  kBackwardFull,
  kBackwardFullCount,
  kBackwardInput,
  kBackwardInputCount,
  kWeight,
  kWeightCount,
  kPair,  // F&B pairs, wall time
  kPairCount,
  kPairForward,   // the pairs' forward halves, each timed on its thread
  kPairBackward,  // the pairs' backward halves
  kReceiveWait,
  kAllToAll,
  kAllToAllCount,
  kAllToAllBytes,  // sent to other ranks
  kNumFields
};

int64_t to_ns(double seconds) { return std::llround(seconds * 1e9); }

// One measured layout: per timed step, kRanks x kNumFields values.
struct Measurement {
  Schedule schedule;
  int64_t tokens_per_step = 0;  // over the whole world (every data-parallel replica)
  std::vector<std::vector<int64_t>> steps;

  double at(size_t step, int rank, int field) const {
    return static_cast<double>(steps[step][static_cast<size_t>(rank) * kNumFields + field]);
  }
  // Seconds of computing on `rank` in `step` (receive waits excluded).
  double compute(size_t step, int rank) const {
    return 1e-9 * (at(step, rank, kForward) + at(step, rank, kBackwardFull) +
                   at(step, rank, kBackwardInput) + at(step, rank, kWeight) +
                   at(step, rank, kPair));
  }
  double step_seconds(size_t step) const {
    double m = 0;
    for (int r = 0; r < kRanks; ++r) m = std::max(m, 1e-9 * at(step, r, kTotal));
    return m;
  }
  // Sum of a field over every rank and step.
  double sum(int field) const {
    double s = 0;
    for (size_t i = 0; i < steps.size(); ++i) {
      for (int r = 0; r < kRanks; ++r) s += at(i, r, field);
    }
    return s;
  }
};

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

// Median over the steps of f(step).
template <typename F>
double median_over_steps(const Measurement& m, F&& f) {
  std::vector<double> v;
  for (size_t i = 0; i < m.steps.size(); ++i) v.push_back(f(i));
  return median(v);
}

// Random token ids, (B, S + mtp_depth + 1) i32 per micro-batch.
std::vector<Tensor> random_micro_batches(const trainer::RunConfig& c, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t b = c.train.micro_batch_size;
  const int64_t width = c.train.seq_len + c.model.mtp_depth + 1;
  std::vector<Tensor> out;
  for (int64_t m = 0; m < c.train.grad_accum; ++m) {
    std::vector<int32_t> ids(static_cast<size_t>(b * width));
    for (int32_t& id : ids) id = static_cast<int32_t>(rng() % c.model.vocab_size);
    out.push_back(Tensor::from_vector(ids, {b, width}));
  }
  return out;
}

// Collective over the world: builds the layout's TrainModel, runs one warm-up step and `steps`
// timed ones.
Measurement measure(const trainer::RunConfig& c, int steps) {
  parallel::Communicator& world = parallel::world_communicator();
  parallel::ProcessGroups groups = parallel::make_groups(world, parallel::RankGrid(c.parallel));
  trainer::TrainModel model(c, Device::cpu(), groups);
  model.init(static_cast<uint64_t>(c.seed));
  const std::vector<Tensor> batches =
      random_micro_batches(c, 1000u + static_cast<uint32_t>(groups.coords.dp));
  Measurement out;
  out.schedule = *model.schedule();
  out.tokens_per_step =
      c.parallel.dp * c.train.grad_accum * c.train.micro_batch_size * c.train.seq_len;
  for (int step = -1; step < steps; ++step) {
    world.barrier();
    model.reset_ep_metrics();
    model.forward_backward(batches, nullptr);
    if (step < 0) continue;
    const ExecutorStats& s = model.pipeline_stats();
    const parallel::ExpertParallelMetrics ep = model.ep_metrics();
    std::vector<int64_t> mine(kNumFields);
    mine[kTotal] = to_ns(s.total_seconds);
    mine[kForward] = to_ns(s.forward.seconds);
    mine[kForwardCount] = s.forward.count;
    mine[kBackwardFull] = to_ns(s.backward_full.seconds);
    mine[kBackwardFullCount] = s.backward_full.count;
    mine[kBackwardInput] = to_ns(s.backward_input.seconds);
    mine[kBackwardInputCount] = s.backward_input.count;
    mine[kWeight] = to_ns(s.weight.seconds);
    mine[kWeightCount] = s.weight.count;
    mine[kPair] = to_ns(s.forward_backward.seconds);
    mine[kPairCount] = s.forward_backward.count;
    mine[kPairForward] = to_ns(s.fb_forward_seconds);
    mine[kPairBackward] = to_ns(s.fb_backward_seconds);
    mine[kReceiveWait] = to_ns(s.receive_wait_seconds);
    mine[kAllToAll] = to_ns(ep.all_to_all_seconds);
    mine[kAllToAllCount] = ep.n_all_to_all;
    mine[kAllToAllBytes] = ep.bytes_sent;
    const Tensor mine_t = Tensor::from_vector<int64_t>(mine, {kNumFields});
    Tensor all_t = Tensor::empty({int64_t{kRanks} * kNumFields}, DType::kI64, Device::cpu());
    parallel::all_gather_sync(world, mine_t, all_t);
    out.steps.push_back(all_t.to_vector<int64_t>());
  }
  return out;
}

// Collective: one-way seconds of a (rows, dim) f32 message between ranks (0, 1) and (2, 3),
// both pairs at once: the median round trip / 2 on the even ranks, averaged over them.
double ping_pong_seconds(parallel::Communicator& world, int64_t rows, int64_t dim) {
  constexpr int kWarmup = 5, kRepeats = 50;
  const int rank = world.rank();
  const int peer = rank ^ 1;
  Tensor buffer = Tensor::zeros({rows, dim}, DType::kF32);
  std::vector<double> one_way;
  world.barrier();
  for (int i = 0; i < kWarmup + kRepeats; ++i) {
    const Clock::time_point start = Clock::now();
    if (rank % 2 == 0) {
      world.send(buffer, peer, 0)->wait();
      world.recv(buffer, peer, 0)->wait();
    } else {
      world.recv(buffer, peer, 0)->wait();
      world.send(buffer, peer, 0)->wait();
    }
    if (i >= kWarmup) {
      one_way.push_back(0.5 * std::chrono::duration<double>(Clock::now() - start).count());
    }
  }
  const Tensor mine = Tensor::from_vector<int64_t>({to_ns(median(one_way))}, {1});
  Tensor all = Tensor::empty({kRanks}, DType::kI64, Device::cpu());
  parallel::all_gather_sync(world, mine, all);
  const std::vector<int64_t> v = all.to_vector<int64_t>();
  return 1e-9 * 0.5 * static_cast<double>(v[0] + v[2]);
}

// Costs for simulate() whose busy time on the mean rank equals the measured compute time (see the
// top of the file). p2p: seconds.
Costs measured_costs(const Measurement& m, double p2p) {
  const double f_n = m.sum(kForwardCount), bf_n = m.sum(kBackwardFullCount),
               bi_n = m.sum(kBackwardInputCount), w_n = m.sum(kWeightCount),
               pair_n = m.sum(kPairCount);
  Costs c;
  c.forward = f_n > 0 ? 1e-9 * m.sum(kForward) / f_n : 0;
  c.weight = w_n > 0 ? 1e-9 * m.sum(kWeight) / w_n : 0;
  c.backward =
      (1e-9 * (m.sum(kBackwardFull) + m.sum(kBackwardInput)) + bi_n * c.weight) / (bf_n + bi_n);
  // Pairs whose backward half defers its weight gradient, over the whole schedule and the steps.
  int deferred_pairs = 0;
  for (const auto& program : m.schedule.program) {
    for (const auto& in : program) {
      if (in.op == parallel::pipeline::Op::kForwardBackward && in.defer_weight) ++deferred_pairs;
    }
  }
  const double deferred_n =
      static_cast<double>(deferred_pairs) * static_cast<double>(m.steps.size());
  c.forward_backward =
      pair_n > 0 ? (1e-9 * m.sum(kPair) + deferred_n * c.weight) / pair_n : c.forward + c.backward;
  c.p2p = p2p;
  return c;
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  if (!(in >> one >> five >> fifteen)) return "unknown";
  return one + " " + five + " " + fifteen;
}

double mean_ms(const Measurement& m, int field, int count_field) {
  const double n = m.sum(count_field);
  return n > 0 ? 1e-6 * m.sum(field) / n : 0;
}

std::string ms_or_dash(double ms, double count) {
  if (count <= 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f", ms);
  return buf;
}

// Section 1 on rank 0: the tables of the four schedules.
void report_schedules(const std::vector<Measurement>& runs, double p2p) {
  struct Row {
    std::string name;
    double step = 0, step_min = 0, step_max = 0, tokens = 0;
    double bubble_mean = 0, bubble_worst = 0, imbalance = 0, cores_busy = 0;
    double sim_makespan = 0, sim_bubble_mean = 0, sim_bubble_worst = 0;
    std::vector<double> rank_compute, rank_wait, rank_bubble, rank_sim_bubble;
    Costs costs;
    std::string sim_error;
  };
  std::vector<Row> rows;
  for (const Measurement& m : runs) {
    Row row;
    row.name = std::string(parallel::pipeline::schedule_kind_name(m.schedule.kind));
    std::vector<double> step_times;
    for (size_t i = 0; i < m.steps.size(); ++i) step_times.push_back(m.step_seconds(i));
    row.step = median(step_times);
    row.step_min = *std::min_element(step_times.begin(), step_times.end());
    row.step_max = *std::max_element(step_times.begin(), step_times.end());
    row.tokens = static_cast<double>(m.tokens_per_step) / row.step;
    for (int r = 0; r < kRanks; ++r) {
      const double bubble = median_over_steps(
          m, [&](size_t i) { return 1.0 - m.compute(i, r) / m.step_seconds(i); });
      row.rank_bubble.push_back(bubble);
      row.rank_compute.push_back(median_over_steps(m, [&](size_t i) { return m.compute(i, r); }));
      row.rank_wait.push_back(
          median_over_steps(m, [&](size_t i) { return 1e-9 * m.at(i, r, kReceiveWait); }));
      row.bubble_mean += bubble / kRanks;
      row.bubble_worst = std::max(row.bubble_worst, bubble);
    }
    const double most = *std::max_element(row.rank_compute.begin(), row.rank_compute.end());
    double mean = 0;
    for (double c : row.rank_compute) mean += c / kRanks;
    row.imbalance = most / mean;
    row.cores_busy = mean * kRanks / (cpu_features().logical_cores * row.step);
    row.costs = measured_costs(m, p2p);
    const absl::Status valid = parallel::pipeline::validate_costs(row.costs);
    absl::StatusOr<parallel::pipeline::Simulation> sim =
        valid.ok() ? parallel::pipeline::simulate(m.schedule, row.costs)
                   : absl::StatusOr<parallel::pipeline::Simulation>(valid);
    if (sim.ok()) {
      row.sim_makespan = sim->makespan;
      for (const parallel::pipeline::RankTimeline& t : sim->ranks) {
        const double b = t.bubble / sim->makespan;
        row.rank_sim_bubble.push_back(b);
        row.sim_bubble_mean += b / kRanks;
        row.sim_bubble_worst = std::max(row.sim_bubble_worst, b);
      }
    } else {
      row.sim_error = std::string(sim.status().message());
    }
    rows.push_back(std::move(row));
  }

  std::printf(
      "\n## 1. Schedules: pp 4 x dp 1 (fb_overlap off), measured vs simulated from the measured "
      "per-op costs\n"
      "# step: max over ranks of the executor's total time, median [min..max] over the steps;\n"
      "# bubble: per rank 1 - compute / step (median over steps), mean and worst rank;\n"
      "# simulated: simulate() with the costs of the second table (busy time of the mean rank =\n"
      "# measured compute), equal on every rank, so per-rank imbalance is not in the prediction;\n"
      "# imbalance: compute of the busiest rank / mean compute of the ranks; cores busy: sum of\n"
      "# the ranks' compute / (logical cores x step), near 100%% when the ranks' bubbles are\n"
      "# filled by other ranks' compute\n");
  std::printf("%-10s %22s %10s %12s %13s %10s %7s | %11s %10s %10s\n", "schedule", "step ms",
              "tokens/s", "bubble mean%", "bubble worst%", "imbalance", "cores%", "sim step ms",
              "sim mean%", "sim worst%");
  for (const Row& r : rows) {
    char step[64];
    std::snprintf(step, sizeof(step), "%.1f [%.1f..%.1f]", 1e3 * r.step, 1e3 * r.step_min,
                  1e3 * r.step_max);
    std::printf("%-10s %22s %10.0f %12.1f %13.1f %10.2f %7.0f | ", r.name.c_str(), step, r.tokens,
                100 * r.bubble_mean, 100 * r.bubble_worst, r.imbalance, 100 * r.cores_busy);
    if (r.sim_error.empty()) {
      std::printf("%11.1f %10.1f %10.1f\n", 1e3 * r.sim_makespan, 100 * r.sim_bubble_mean,
                  100 * r.sim_bubble_worst);
    } else {
      std::printf("simulation failed: %s\n", r.sim_error.c_str());
    }
  }

  std::printf(
      "\n# measured per-op costs, ms: mean over every op of every rank and timed step (count per "
      "step and rank in parentheses); the simulator's B and F&B as defined at the top of "
      "bench_pipeline.cc\n");
  std::printf("%-10s %12s %12s %12s %12s %12s | %9s %9s %9s %9s %9s\n", "schedule", "F", "B full",
              "B input", "W", "F&B pair", "sim F", "sim B", "sim W", "sim F&B", "p2p");
  for (size_t i = 0; i < runs.size(); ++i) {
    const Measurement& m = runs[i];
    const double per = 1.0 / (static_cast<double>(m.steps.size()) * kRanks);
    auto cell = [&](int field, int count) {
      const double n = m.sum(count);
      std::string s = ms_or_dash(mean_ms(m, field, count), n);
      if (n > 0) {
        char buf[16];
        std::snprintf(buf, sizeof(buf), " (%.3g)", n * per);
        s += buf;
      }
      return s;
    };
    const Costs& c = rows[i].costs;
    std::printf("%-10s %12s %12s %12s %12s %12s | %9.2f %9.2f %9.2f %9.2f %9.3f\n",
                rows[i].name.c_str(), cell(kForward, kForwardCount).c_str(),
                cell(kBackwardFull, kBackwardFullCount).c_str(),
                cell(kBackwardInput, kBackwardInputCount).c_str(),
                cell(kWeight, kWeightCount).c_str(), cell(kPair, kPairCount).c_str(),
                1e3 * c.forward, 1e3 * c.backward, 1e3 * c.weight, 1e3 * c.forward_backward,
                1e3 * c.p2p);
  }

  std::printf(
      "\n# per rank (median over steps): compute ms, receive wait ms, measured and simulated "
      "bubble %%\n");
  std::printf("%-10s %4s %12s %12s %11s %11s\n", "schedule", "rank", "compute ms", "wait ms",
              "bubble%", "sim bubble%");
  for (const Row& r : rows) {
    for (int k = 0; k < kRanks; ++k) {
      std::printf("%-10s %4d %12.1f %12.1f %11.1f ", r.name.c_str(), k, 1e3 * r.rank_compute[k],
                  1e3 * r.rank_wait[k], 100 * r.rank_bubble[k]);
      if (r.rank_sim_bubble.empty()) {
        std::printf("%11s\n", "-");
      } else {
        std::printf("%11.1f\n", 100 * r.rank_sim_bubble[k]);
      }
    }
  }
  for (const Row& r : rows) {
    if (r.name != "dualpipe") continue;
    // Costs in ms, as `fathom schedule` takes them (the unit does not matter to the simulator).
    std::printf(
        "\n# timeline of the measured DualPipe costs (ms):\n# fathom schedule --kind dualpipe "
        "--pp 4 --microbatches %d --cost-f %.3g --cost-b %.3g --cost-w %.3g --cost-fb %.3g "
        "--cost-p2p %.3g\n",
        runs.front().schedule.micro_batches, 1e3 * r.costs.forward, 1e3 * r.costs.backward,
        1e3 * r.costs.weight, 1e3 * r.costs.forward_backward, 1e3 * r.costs.p2p);
  }
}

// Section 2 on rank 0: FB overlap off and on. p2p_bandwidth: bytes/s of the ping-pong.
void report_overlap(const Measurement& off, const Measurement& on, double p2p_bandwidth) {
  struct Figures {
    double step = 0, step_min = 0, step_max = 0, a2a = 0, a2a_calls = 0, a2a_bytes = 0, pairs = 0,
           pair_wall = 0, halves = 0, overlapped = 0, compute = 0, wait = 0;
  };
  auto figures = [](const Measurement& m) {
    Figures f;
    std::vector<double> steps;
    for (size_t i = 0; i < m.steps.size(); ++i) steps.push_back(m.step_seconds(i));
    f.step = median(steps);
    f.step_min = *std::min_element(steps.begin(), steps.end());
    f.step_max = *std::max_element(steps.begin(), steps.end());
    // Mean over ranks of a per-rank quantity, median over steps.
    auto per_rank = [&](auto&& value) {
      return median_over_steps(m, [&](size_t i) {
        double s = 0;
        for (int r = 0; r < kRanks; ++r) s += value(i, r) / kRanks;
        return s;
      });
    };
    f.a2a = per_rank([&](size_t i, int r) { return 1e-9 * m.at(i, r, kAllToAll); });
    f.a2a_calls = per_rank([&](size_t i, int r) { return m.at(i, r, kAllToAllCount); });
    f.a2a_bytes = per_rank([&](size_t i, int r) { return m.at(i, r, kAllToAllBytes); });
    f.pairs = per_rank([&](size_t i, int r) { return m.at(i, r, kPairCount); });
    f.pair_wall = per_rank([&](size_t i, int r) { return 1e-9 * m.at(i, r, kPair); });
    f.halves = per_rank([&](size_t i, int r) {
      return 1e-9 * (m.at(i, r, kPairForward) + m.at(i, r, kPairBackward));
    });
    f.overlapped = per_rank([&](size_t i, int r) {
      return 1e-9 * (m.at(i, r, kPairForward) + m.at(i, r, kPairBackward) - m.at(i, r, kPair));
    });
    f.compute = per_rank([&](size_t i, int r) { return m.compute(i, r); });
    f.wait = per_rank([&](size_t i, int r) { return 1e-9 * m.at(i, r, kReceiveWait); });
    return f;
  };
  const Figures f_off = figures(off), f_on = figures(on);
  std::printf(
      "\n## 2. FB overlap: pp 2 x dp 2 x ep 2, DualPipe, %d micro-batches per step\n"
      "# per rank figures: mean over ranks, median over steps; all-to-all: ep_metrics() of the "
      "step (posting + waiting, all chunks)\n",
      off.schedule.micro_batches);
  std::printf("%-10s %22s %10s %9s %7s %7s %6s %10s %10s %10s %10s %8s\n", "fb_overlap",
              "step ms", "tokens/s", "a2a ms", "a2a n", "a2a MB", "pairs", "pair wall",
              "halves sum", "overlapped", "compute ms", "wait ms");
  auto row = [&](const char* name, const Figures& f, const Measurement& m) {
    char step[64];
    std::snprintf(step, sizeof(step), "%.1f [%.1f..%.1f]", 1e3 * f.step, 1e3 * f.step_min,
                  1e3 * f.step_max);
    std::printf("%-10s %22s %10.0f %9.1f %7.0f %7.2f %6.0f %10.1f %10.1f %10.1f %10.1f %8.1f\n",
                name, step, static_cast<double>(m.tokens_per_step) / f.step, 1e3 * f.a2a,
                f.a2a_calls, 1e-6 * f.a2a_bytes, f.pairs, 1e3 * f.pair_wall, 1e3 * f.halves,
                1e3 * f.overlapped, 1e3 * f.compute, 1e3 * f.wait);
  };
  row("off", f_off, off);
  row("on", f_on, on);
  std::printf(
      "a2a bytes / ping-pong bandwidth (%.2f GB/s) = %.2f ms of the %.1f ms a2a time (off): the "
      "rest is waiting for the EP peer to enter the exchange\n",
      1e-9 * p2p_bandwidth, 1e3 * f_off.a2a_bytes / p2p_bandwidth, 1e3 * f_off.a2a);
  const double saved = f_off.step - f_on.step;
  const double hidden = f_off.a2a > 0 ? saved / f_off.a2a : 0;
  std::printf(
      "all-to-all hidden, from step times: (step_off - step_on) / a2a_off = (%.1f - %.1f) / %.1f "
      "ms = %.1f%% -> %.1f%% clamped to [0, 100]%s\n",
      1e3 * f_off.step, 1e3 * f_on.step, 1e3 * f_off.a2a, 100 * hidden,
      100 * std::clamp(hidden, 0.0, 1.0),
      saved < 0 ? " (overlap on made the step slower)" : "");
  std::printf(
      "all-to-all hidden, direct: overlapped_seconds / a2a_on = %.1f / %.1f ms = %.1f%% (time the "
      "two halves of a pair ran at once, whatever they did: an upper bound on the hidden "
      "all-to-all)\n",
      1e3 * f_on.overlapped, 1e3 * f_on.a2a, f_on.a2a > 0 ? 100 * f_on.overlapped / f_on.a2a : 0);
}

int run(int argc, char** argv) {
  Args args;
  parallel::Communicator& world = parallel::world_communicator();
  const int rank = world.rank();
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      if (rank == 0) print_usage();
      return 0;
    }
  }
  if (!parse_args(argc, argv, args)) {
    if (rank == 0) print_usage();
    return 2;
  }
  if (world.size() != kRanks) {
    if (rank == 0) {
      std::fprintf(stderr,
                   "bench_pipeline: needs exactly %d ranks (pp 4; pp 2 x dp 2 x ep 2), got %d\n",
                   kRanks, world.size());
    }
    return 2;
  }
  set_cpu_threads(args.threads);

  // Every config first, so that a bad argument stops every rank before any collective.
  const ScheduleKind kinds[] = {ScheduleKind::k1F1B, ScheduleKind::kZB1P, ScheduleKind::kDualPipe,
                                ScheduleKind::kDualPipeV};
  std::vector<trainer::RunConfig> schedule_configs;
  std::vector<trainer::RunConfig> overlap_configs;
  std::vector<absl::Status> errors;
  for (ScheduleKind kind : kinds) {
    absl::StatusOr<trainer::RunConfig> c = layout_config(args, 4, 1, 1, kind, false);
    if (c.ok()) {
      schedule_configs.push_back(*c);
    } else {
      errors.push_back(c.status());
    }
  }
  for (bool overlap : {false, true}) {
    absl::StatusOr<trainer::RunConfig> c =
        layout_config(args, 2, 2, 2, ScheduleKind::kDualPipe, overlap);
    if (c.ok()) {
      overlap_configs.push_back(*c);
    } else {
      errors.push_back(c.status());
    }
  }
  if (!errors.empty()) {
    if (rank == 0) {
      for (const absl::Status& e : errors) {
        std::fprintf(stderr, "bench_pipeline: %s\n", std::string(e.message()).c_str());
      }
    }
    return 1;
  }

  const trainer::RunConfig& first = schedule_configs.front();
  if (rank == 0) {
    print_header("bench_pipeline");
    std::printf("# load average (1 5 15 min) at start: %s\n", load_average().c_str());
    std::printf(
        "# model: configs/models/%s.yaml with n_layers %d: dim %lld, %lld dense + %lld MoE "
        "blocks, %lld routed experts top-%lld, MTP depth %lld; fp32\n",
        args.model.c_str(), kLayers, static_cast<long long>(first.model.dim),
        static_cast<long long>(first.model.n_dense_layers),
        static_cast<long long>(kLayers - first.model.n_dense_layers),
        static_cast<long long>(first.model.n_routed_experts),
        static_cast<long long>(first.model.n_activated_experts),
        static_cast<long long>(first.model.mtp_depth));
    std::printf(
        "# step: N = %d micro-batches of %lld x %lld tokens per data-parallel rank; 1 warm-up + "
        "%d timed steps per layout; forward_backward only (no optimizer step)\n",
        args.micro_batches, static_cast<long long>(args.micro_batch_size),
        static_cast<long long>(args.seq_len), args.steps);
    std::printf(
        "# %d ranks x %d thread(s) on %d logical cores: %s\n", kRanks, args.threads,
        cpu_features().logical_cores,
        kRanks * args.threads > cpu_features().logical_cores
            ? "ranks share cores, so measured compute times include waiting for a core, and an "
              "op runs faster while other ranks idle in a bubble"
            : "one core or more per thread");
    std::fflush(stdout);
  }

  const double p2p = ping_pong_seconds(world, first.train.micro_batch_size * first.train.seq_len,
                                       first.model.dim);
  if (rank == 0) {
    std::printf("# p2p: one-way time of a (%lld, %lld) f32 boundary tensor, ping-pong (0,1) and "
                "(2,3) at once: %.3f ms\n",
                static_cast<long long>(first.train.micro_batch_size * first.train.seq_len),
                static_cast<long long>(first.model.dim), 1e3 * p2p);
    std::fflush(stdout);
  }
  std::vector<Measurement> runs;
  for (const trainer::RunConfig& c : schedule_configs) runs.push_back(measure(c, args.steps));
  if (rank == 0) {
    report_schedules(runs, p2p);
    std::fflush(stdout);
  }
  const Measurement off = measure(overlap_configs[0], args.steps);
  const Measurement on = measure(overlap_configs[1], args.steps);
  const double boundary_bytes = 4.0 * static_cast<double>(first.train.micro_batch_size *
                                                          first.train.seq_len * first.model.dim);
  if (rank == 0) report_overlap(off, on, boundary_bytes / p2p);
  return 0;
}

}  // namespace
}  // namespace fathom::bench

int main(int argc, char** argv) {
  fathom::parallel::init_mpi(&argc, &argv);
  return fathom::parallel::run_rank_main([&] { return fathom::bench::run(argc, argv); });
}
