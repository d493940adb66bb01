// bench_moe_layer: one MoE layer's forward and backward under expert parallelism (EP group = the
// MPI world), split into phases (CONVENTIONS.md 11, docs/parallelism.md "Measured: MoE layer and
// training scaling").
//
// The layer is model::Moe of a model preset (default configs/models/small.yaml: dim 256, 16
// routed experts, top-4, moe_inter 128, one shared expert) over an ExpertParallelDispatcher of
// the world, each rank owning E / P experts and routing its own T tokens (random inputs, seeded
// by rank). The dispatcher is wrapped in TimingDispatcher, a
// model::TokenDispatcher that forwards every call to it and records when each call started and
// ended; with the start and end of Moe::forward / Moe::backward these timestamps cut each pass
// into consecutive phases:
//   forward:  routing (gate GEMM, top-k, balance loss, load count) | dispatch | expert compute
//             (w1, w3 grouped GEMMs, SwiGLU, w2 grouped GEMM) | combine | shared expert and the
//             gate-weighted sum
//   backward: gate-weight gradient and the weighted gather of dy | combine backward | expert
//             backward (input and weight gradients of w1, w2, w3) | dispatch backward | router
//             backward (gate GEMMs) and shared-expert backward
// Each pass starts after a barrier. Per rank: the median of each phase and of the pass's wall time
// over the repeats after warm-up; the table shows their mean, min and max over ranks.
// overlap = sum of the phases - wall time, per repeat (median). The dispatcher's exchanges are
// synchronous on the calling thread and Moe runs the phases one after another, so nothing
// overlaps, the phases tile the pass and overlap is 0; the row states that. (Phases cut on one
// thread always tile it: measuring the overlap of an asynchronous dispatcher would need the
// decorator to time the posting and the completion of each exchange apart.)
// When every rank runs on one host, each exchange phase is also split by the start times of all
// ranks (steady_clock is one clock there): the part spent waiting for the last rank to enter the
// call (compute imbalance, time slices of oversubscribed ranks), the rest being the exchange.
// Also: GFLOP/s of the expert compute (6 N dim inter forward, 12 N dim inter backward for the N
// rows a rank's experts receive) against the sgemm ceiling measured on all ranks at once, the
// shared expert alone, and the dispatcher metrics (rows sent per rank, bytes, all-to-all calls
// and time).
//
// usage: mpirun -np P bench_moe_layer [--config FILE] [--tokens T] [--seq-len S]
//                                     [--precision fp32|bf16|fp8] [--threads N] [--warmup W]
//                                     [--repeats R] [--quick] [--local | --fp8-dispatch]
//   --local (one rank only): model::LocalDispatcher instead of the EP dispatcher, for comparison.
//   --fp8-dispatch: the forward dispatch sends E4M3 rows with 1x128 scales (ExpertParallelOptions).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/device.h"
#include "kernels/tensor.h"
#include "kernels/threads.h"
#include "model/config.h"
#include "model/moe.h"
#include "model/precision.h"
#include "model/token_dispatcher.h"
#include "parallel/communicator.h"
#include "parallel/expert_parallel.h"
#include "parallel/fault.h"
#include "parallel/mpi_env.h"

#ifndef FATHOM_SOURCE_DIR
#error "FATHOM_SOURCE_DIR must name the source tree (set by bench/CMakeLists.txt)"
#endif

namespace fathom::bench {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// A TokenDispatcher that forwards every call to `inner` and records the start and end of the
// latest call of each kind. Adds no work besides two clock reads per call.
class TimingDispatcher final : public model::TokenDispatcher {
 public:
  struct Interval {
    Clock::time_point start, end;
    double seconds() const { return seconds_between(start, end); }
  };

  explicit TimingDispatcher(model::TokenDispatcher& inner) : inner_(inner) {}

  int64_t n_local_experts() const override { return inner_.n_local_experts(); }
  int64_t first_local_expert() const override { return inner_.first_local_expert(); }

  void dispatch(const Tensor& x, const Tensor& topk_idx, model::DispatchPlan& plan,
                Tensor& expert_tokens, std::vector<int64_t>& counts) override {
    timed(dispatch_, [&] { inner_.dispatch(x, topk_idx, plan, expert_tokens, counts); });
  }
  void combine(const Tensor& expert_out, const model::DispatchPlan& plan,
               Tensor& selection_out) override {
    timed(combine_, [&] { inner_.combine(expert_out, plan, selection_out); });
  }
  void combine_backward(const Tensor& d_selection_out, const model::DispatchPlan& plan,
                        Tensor& d_expert_out) override {
    timed(combine_backward_, [&] { inner_.combine_backward(d_selection_out, plan, d_expert_out); });
  }
  void dispatch_backward(const Tensor& d_expert_tokens, const model::DispatchPlan& plan,
                         Tensor& dx) override {
    timed(dispatch_backward_, [&] { inner_.dispatch_backward(d_expert_tokens, plan, dx); });
  }

  const Interval& last_dispatch() const { return dispatch_; }
  const Interval& last_combine() const { return combine_; }
  const Interval& last_combine_backward() const { return combine_backward_; }
  const Interval& last_dispatch_backward() const { return dispatch_backward_; }

 private:
  template <typename F>
  static void timed(Interval& interval, F&& call) {
    interval.start = Clock::now();
    call();
    interval.end = Clock::now();
  }

  model::TokenDispatcher& inner_;
  Interval dispatch_, combine_, combine_backward_, dispatch_backward_;
};

struct Args {
  std::string config = std::string(FATHOM_SOURCE_DIR) + "/configs/models/small.yaml";
  int64_t tokens = 2048;
  int64_t seq_len = 128;
  model::TrainingPrecision precision = model::TrainingPrecision::kFp32;
  int threads = 0;  // 0: leave the OpenMP default (OMP_NUM_THREADS)
  int warmup = 3;
  int repeats = 20;
  bool quick = false;
  bool local = false;
  bool fp8_dispatch = false;
};

// The same arguments on every rank, so every rank returns the same status.
bool parse_args(int argc, char** argv, Args& a) {
  bool repeats_set = false, warmup_set = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--config" && has_value) {
      a.config = argv[++i];
    } else if (arg == "--tokens" && has_value) {
      a.tokens = std::atoll(argv[++i]);
    } else if (arg == "--seq-len" && has_value) {
      a.seq_len = std::atoll(argv[++i]);
    } else if (arg == "--precision" && has_value) {
      absl::StatusOr<model::TrainingPrecision> p = model::parse_precision(argv[++i]);
      if (!p.ok()) return false;
      a.precision = *p;
    } else if (arg == "--threads" && has_value) {
      a.threads = std::atoi(argv[++i]);
      if (a.threads < 1) return false;
    } else if (arg == "--warmup" && has_value) {
      a.warmup = std::atoi(argv[++i]);
      warmup_set = true;
    } else if (arg == "--repeats" && has_value) {
      a.repeats = std::atoi(argv[++i]);
      repeats_set = true;
    } else if (arg == "--quick") {
      a.quick = true;
    } else if (arg == "--local") {
      a.local = true;
    } else if (arg == "--fp8-dispatch") {
      a.fp8_dispatch = true;
    } else {
      return false;
    }
  }
  if (a.quick) {
    if (!warmup_set) a.warmup = 1;
    if (!repeats_set) a.repeats = 5;
  }
  if (a.seq_len > a.tokens) a.seq_len = a.tokens;
  if (a.local && a.fp8_dispatch) return false;
  return a.tokens >= 1 && a.seq_len >= 1 && a.tokens % a.seq_len == 0 && a.warmup >= 0 &&
         a.repeats >= 1;
}

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

// What each rank measured; gathered to rank 0 as int64 (times in ns).
enum Field : int {
  kFwdRouting,
  kFwdDispatch,
  kFwdExperts,
  kFwdCombine,
  kFwdShared,
  kFwdWall,
  kBwdWeighting,
  kBwdCombine,
  kBwdExperts,
  kBwdDispatch,
  kBwdRouterShared,
  kBwdWall,
  kFwdOverlap,  // median over repeats of (sum of the forward phases - forward wall)
  kBwdOverlap,
  // Of each exchange phase: waiting for the last rank to enter the call (medians over repeats).
  kFwdDispatchWait,
  kFwdCombineWait,
  kBwdCombineWait,
  kBwdDispatchWait,
  kSharedFwd,  // shared expert alone
  kSharedBwd,
  kRowsReceived,    // N: rows this rank's experts compute per forward
  kRowsSentOthers,  // per forward dispatch, to other ranks
  kRowsSentTotal,   // per forward dispatch, this rank included (= T * K)
  kBytesSent,       // per iteration (forward + backward), to other ranks
  kAllToAllCalls,   // per iteration
  kAllToAllNs,      // per iteration, mean over the timed repeats
  kCeilingMflops,   // sgemm n=2048 on this rank with every rank running it at once
  kThreads,         // OpenMP / OpenBLAS threads of this rank
  kNumFields
};

constexpr int kFwdPhases[] = {kFwdRouting, kFwdDispatch, kFwdExperts, kFwdCombine, kFwdShared};
constexpr int kBwdPhases[] = {kBwdWeighting, kBwdCombine, kBwdExperts, kBwdDispatch,
                              kBwdRouterShared};

int64_t to_ns(double seconds) { return std::llround(seconds * 1e9); }

int64_t ns_since_epoch(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

// Whether every rank runs on this host (then steady_clock, CLOCK_MONOTONIC, is one clock for all
// of them and call start times can be compared across ranks).
bool same_host(parallel::Communicator& world) {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  const int64_t h = static_cast<int64_t>(std::hash<std::string>()(name) >> 1);
  Tensor hi = Tensor::from_vector<int64_t>({h}, {1});
  Tensor lo = Tensor::from_vector<int64_t>({-h}, {1});
  parallel::all_reduce_sync(world, hi, parallel::ReduceOp::kMax);
  parallel::all_reduce_sync(world, lo, parallel::ReduceOp::kMax);
  return hi.to_vector<int64_t>()[0] == -lo.to_vector<int64_t>()[0];
}

// Mean, min and max of one field over the ranks (rows of `all`).
struct Spread {
  double mean = 0, min = 0, max = 0;
};
Spread spread(const std::vector<int64_t>& all, int ranks, int field, double scale) {
  Spread s{0, 1e300, -1e300};
  for (int r = 0; r < ranks; ++r) {
    const double v = static_cast<double>(all[static_cast<size_t>(r) * kNumFields + field]) * scale;
    s.mean += v / ranks;
    s.min = std::min(s.min, v);
    s.max = std::max(s.max, v);
  }
  return s;
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  if (!(in >> one >> five >> fifteen)) return "unknown";
  return one + " " + five + " " + fifteen;
}

int run(int argc, char** argv) {
  Args args;
  parallel::Communicator& world = parallel::world_communicator();
  const int rank = world.rank();
  const int ranks = world.size();
  if (!parse_args(argc, argv, args) || (args.local && ranks != 1)) {
    if (rank == 0) {
      std::fprintf(stderr,
                   "usage: mpirun -np P bench_moe_layer [--config FILE] [--tokens T] "
                   "[--seq-len S] [--precision fp32|bf16|fp8] [--threads N] [--warmup W] "
                   "[--repeats R] [--quick] [--local | --fp8-dispatch]\n"
                   "  T >= 1, S divides T (default 2048, 128); --local only with one rank\n");
    }
    return 2;
  }
  if (args.threads > 0) set_cpu_threads(args.threads);
  absl::StatusOr<model::ModelConfig> loaded = model::load_model_config(args.config);
  if (!loaded.ok()) {
    if (rank == 0) {
      std::fprintf(stderr, "bench_moe_layer: %s\n", loaded.status().ToString().c_str());
    }
    return 1;  // every rank reads the same file
  }
  const model::ModelConfig& config = *loaded;
  if (config.n_routed_experts % ranks != 0) {
    if (rank == 0) {
      std::fprintf(stderr, "bench_moe_layer: %lld routed experts do not split over %d ranks\n",
                   static_cast<long long>(config.n_routed_experts), ranks);
    }
    return 1;
  }

  // The layer over the EP group (or over the model's own LocalDispatcher with --local).
  std::unique_ptr<parallel::ExpertParallelDispatcher> ep;
  std::unique_ptr<model::LocalDispatcher> local;
  model::TokenDispatcher* inner = nullptr;
  if (args.local) {
    local = std::make_unique<model::LocalDispatcher>(config.n_routed_experts);
    inner = local.get();
  } else {
    parallel::ExpertParallelOptions options;
    options.fp8_dispatch = args.fp8_dispatch;
    ep = std::make_unique<parallel::ExpertParallelDispatcher>(world, config.n_routed_experts,
                                                              options);
    inner = ep.get();
  }
  TimingDispatcher timing(*inner);
  const Device cpu = Device::cpu();
  model::Moe moe("layers.1.ffn", config, args.precision, cpu, &timing);
  moe.init(/*seed=*/1, config.init_std);

  const int64_t t = args.tokens;
  const int64_t dim = config.dim;
  const Tensor x = random_tensor({t, dim}, DType::kF32, 1000u + static_cast<uint32_t>(rank));
  const Tensor dy = random_tensor({t, dim}, DType::kF32, 2000u + static_cast<uint32_t>(rank));
  Tensor y = Tensor::empty({t, dim}, DType::kF32, cpu);
  Tensor dx = Tensor::empty({t, dim}, DType::kF32, cpu);

  if (rank == 0) {
    print_header("bench_moe_layer");
    std::printf("# load average (1 5 15 min) at start: %s\n", load_average().c_str());
    std::printf(
        "# layer: %s: dim %lld, %lld routed experts, top-%lld, moe_inter %lld, "
        "%lld shared; precision %s\n",
        args.config.c_str(), static_cast<long long>(dim),
        static_cast<long long>(config.n_routed_experts),
        static_cast<long long>(config.n_activated_experts),
        static_cast<long long>(config.moe_inter_dim),
        static_cast<long long>(config.n_shared_experts),
        std::string(model::precision_name(args.precision)).c_str());
    std::printf(
        "# %d rank(s), %s, %lld experts per rank; T = %lld tokens per rank (seq_len "
        "%lld); %d warm-up + %d timed repeats\n",
        ranks,
        args.local ? "LocalDispatcher"
                   : (args.fp8_dispatch ? "EP group = world, FP8 dispatch" : "EP group = world"),
        static_cast<long long>(inner->n_local_experts()), static_cast<long long>(t),
        static_cast<long long>(args.seq_len), args.warmup, args.repeats);
    std::fflush(stdout);
  }

  const bool one_host = same_host(world);
  std::vector<std::vector<double>> samples(kNumFields);
  model::Moe::Saved saved;
  auto iteration = [&](bool record) {
    saved = model::Moe::Saved();
    world.barrier();
    const Clock::time_point f0 = Clock::now();
    moe.forward(x, args.seq_len, y, saved);
    const Clock::time_point f1 = Clock::now();
    world.barrier();
    const Clock::time_point b0 = Clock::now();
    moe.backward(dy, 1.0, saved, dx, nullptr);
    const Clock::time_point b1 = Clock::now();
    if (!record) return;
    const auto& d = timing.last_dispatch();
    const auto& c = timing.last_combine();
    const auto& cb = timing.last_combine_backward();
    const auto& db = timing.last_dispatch_backward();
    samples[kFwdRouting].push_back(seconds_between(f0, d.start));
    samples[kFwdDispatch].push_back(d.seconds());
    samples[kFwdExperts].push_back(seconds_between(d.end, c.start));
    samples[kFwdCombine].push_back(c.seconds());
    samples[kFwdShared].push_back(seconds_between(c.end, f1));
    samples[kFwdWall].push_back(seconds_between(f0, f1));
    samples[kBwdWeighting].push_back(seconds_between(b0, cb.start));
    samples[kBwdCombine].push_back(cb.seconds());
    samples[kBwdExperts].push_back(seconds_between(cb.end, db.start));
    samples[kBwdDispatch].push_back(db.seconds());
    samples[kBwdRouterShared].push_back(seconds_between(db.end, b1));
    samples[kBwdWall].push_back(seconds_between(b0, b1));
    double fwd_sum = 0, bwd_sum = 0;
    for (int f : kFwdPhases) fwd_sum += samples[f].back();
    for (int f : kBwdPhases) bwd_sum += samples[f].back();
    samples[kFwdOverlap].push_back(fwd_sum - samples[kFwdWall].back());
    samples[kBwdOverlap].push_back(bwd_sum - samples[kBwdWall].back());
    // When the last rank entered each exchange (after the timed passes; the next repeat starts
    // after a barrier).
    if (!one_host) return;
    const std::vector<int64_t> starts = {ns_since_epoch(d.start), ns_since_epoch(c.start),
                                         ns_since_epoch(cb.start), ns_since_epoch(db.start)};
    Tensor all_starts = Tensor::empty({static_cast<int64_t>(ranks) * 4}, DType::kI64, cpu);
    parallel::all_gather_sync(world, Tensor::from_vector<int64_t>(starts, {4}), all_starts);
    const std::vector<int64_t> v = all_starts.to_vector<int64_t>();
    const int wait_fields[] = {kFwdDispatchWait, kFwdCombineWait, kBwdCombineWait,
                               kBwdDispatchWait};
    for (int k = 0; k < 4; ++k) {
      int64_t last = 0;
      for (int r = 0; r < ranks; ++r) last = std::max(last, v[static_cast<size_t>(r) * 4 + k]);
      samples[wait_fields[k]].push_back((last - starts[k]) * 1e-9);
    }
  };
  for (int i = 0; i < args.warmup; ++i) iteration(false);
  if (ep) ep->reset_metrics();
  for (int i = 0; i < args.repeats; ++i) iteration(true);

  std::vector<int64_t> mine(kNumFields, 0);
  for (int f : kFwdPhases) mine[f] = to_ns(median(samples[f]));
  for (int f : kBwdPhases) mine[f] = to_ns(median(samples[f]));
  mine[kFwdWall] = to_ns(median(samples[kFwdWall]));
  mine[kBwdWall] = to_ns(median(samples[kBwdWall]));
  mine[kFwdOverlap] = to_ns(median(samples[kFwdOverlap]));
  mine[kBwdOverlap] = to_ns(median(samples[kBwdOverlap]));
  if (one_host) {
    for (int f : {kFwdDispatchWait, kFwdCombineWait, kBwdCombineWait, kBwdDispatchWait}) {
      mine[f] = to_ns(median(samples[f]));
    }
  }
  mine[kThreads] = cpu_threads();
  int64_t rows = 0;
  for (int64_t c : saved.counts) rows += c;
  mine[kRowsReceived] = rows;
  mine[kRowsSentTotal] = t * config.n_activated_experts;
  if (ep) {
    const parallel::ExpertParallelMetrics& m = ep->metrics();
    const int64_t n_dispatch = std::max<int64_t>(m.n_dispatch, 1);
    int64_t others = 0;
    for (int r = 0; r < ranks; ++r) {
      if (r != rank) others += m.rows_sent[static_cast<size_t>(r)];
    }
    mine[kRowsSentOthers] = others / n_dispatch;
    mine[kBytesSent] = m.bytes_sent / args.repeats;
    mine[kAllToAllCalls] = m.n_all_to_all / args.repeats;
    mine[kAllToAllNs] = to_ns(m.all_to_all_seconds / args.repeats);
  }

  // The shared expert alone, and the machine's sgemm ceiling, on every rank at once (so that
  // ranks sharing cores see the same contention as in the layer).
  const double budget = args.quick ? 0.3 : 1.0;
  if (moe.shared_experts) {
    Tensor ys = Tensor::empty({t, dim}, DType::kF32, cpu);
    Tensor dxs = Tensor::empty({t, dim}, DType::kF32, cpu);
    model::Mlp::Saved shared_saved;
    world.barrier();
    mine[kSharedFwd] = to_ns(
        median_seconds([&] { moe.shared_experts->forward(x, ys, shared_saved); }, 1, args.repeats));
    world.barrier();
    mine[kSharedBwd] = to_ns(median_seconds(
        [&] { moe.shared_experts->backward(dy, shared_saved, dxs, nullptr); }, 1, args.repeats));
  }
  world.barrier();
  mine[kCeilingMflops] = static_cast<int64_t>(sgemm_ceiling_gflops(budget) * 1e3);

  const Tensor mine_t = Tensor::from_vector<int64_t>(mine, {kNumFields});
  Tensor all_t = Tensor::empty({static_cast<int64_t>(ranks) * kNumFields}, DType::kI64, cpu);
  parallel::all_gather_sync(world, mine_t, all_t);
  if (rank != 0) return 0;
  const std::vector<int64_t> all = all_t.to_vector<int64_t>();

  constexpr double kMs = 1e-6;  // ns -> ms
  const Spread fwd_wall = spread(all, ranks, kFwdWall, kMs);
  const Spread bwd_wall = spread(all, ranks, kBwdWall, kMs);
  std::printf(
      "# time: per rank the median over repeats (each pass starts after a barrier); "
      "columns: mean, min, max over ranks; %% of the mean wall time\n");
  std::printf("%-44s %9s %9s %9s %7s\n", "phase", "mean(ms)", "min(ms)", "max(ms)", "%wall");
  auto row = [&](const char* name, int field, double wall) {
    const Spread s = spread(all, ranks, field, kMs);
    std::printf("%-44s %9.3f %9.3f %9.3f %6.1f%%\n", name, s.mean, s.min, s.max,
                100.0 * s.mean / wall);
  };
  const bool waits = one_host && ranks > 1;
  auto wait_row = [&](int field, double wall) {
    if (waits) row("    of which waiting for the last rank", field, wall);
  };
  std::printf("forward\n");
  row("  routing (gate GEMM + top-k + balance loss)", kFwdRouting, fwd_wall.mean);
  row("  dispatch", kFwdDispatch, fwd_wall.mean);
  wait_row(kFwdDispatchWait, fwd_wall.mean);
  row("  expert compute (grouped GEMMs + SwiGLU)", kFwdExperts, fwd_wall.mean);
  row("  combine", kFwdCombine, fwd_wall.mean);
  wait_row(kFwdCombineWait, fwd_wall.mean);
  row("  shared expert + gate-weighted sum", kFwdShared, fwd_wall.mean);
  row("  wall", kFwdWall, fwd_wall.mean);
  row("  overlap = sum of phases - wall", kFwdOverlap, fwd_wall.mean);
  std::printf("backward\n");
  row("  gate-weight grad + weighted gather of dy", kBwdWeighting, bwd_wall.mean);
  row("  combine backward", kBwdCombine, bwd_wall.mean);
  wait_row(kBwdCombineWait, bwd_wall.mean);
  row("  expert compute backward (grouped GEMMs)", kBwdExperts, bwd_wall.mean);
  row("  dispatch backward", kBwdDispatch, bwd_wall.mean);
  wait_row(kBwdDispatchWait, bwd_wall.mean);
  row("  router backward + shared expert backward", kBwdRouterShared, bwd_wall.mean);
  row("  wall", kBwdWall, bwd_wall.mean);
  row("  overlap = sum of phases - wall", kBwdOverlap, bwd_wall.mean);
  std::printf(
      "# overlap (median over repeats of the sum of the phases - the wall time): 0, as nothing "
      "overlaps: the exchanges are synchronous on the calling thread and Moe runs the phases in "
      "sequence, so they tile the pass; the phase medians come from different repeats and need "
      "not add up to the median wall time exactly\n");
  if (waits) {
    std::printf(
        "# waiting for the last rank: from this rank's entry into the exchange to the latest "
        "entry of any rank (one host, one clock): compute imbalance and, with more ranks than "
        "cores, the time slices of the other ranks\n");
  }
  std::printf("forward + backward wall (mean over ranks): %.3f ms, %.0f tokens/s per rank\n",
              fwd_wall.mean + bwd_wall.mean,
              static_cast<double>(t) / ((fwd_wall.mean + bwd_wall.mean) * 1e-3));

  // Expert compute throughput, per rank from its own rows and times.
  const double inter = static_cast<double>(config.moe_inter_dim);
  double fwd_gflops = 0, bwd_gflops = 0, ceiling = 0;
  double fwd_min = 1e300, fwd_max = 0, bwd_min = 1e300, bwd_max = 0;
  for (int r = 0; r < ranks; ++r) {
    const int64_t* v = &all[static_cast<size_t>(r) * kNumFields];
    const double n = static_cast<double>(v[kRowsReceived]);
    const double f = 6.0 * n * static_cast<double>(dim) * inter / (v[kFwdExperts] * 1e-9) / 1e9;
    const double b = 12.0 * n * static_cast<double>(dim) * inter / (v[kBwdExperts] * 1e-9) / 1e9;
    fwd_gflops += f / ranks;
    bwd_gflops += b / ranks;
    fwd_min = std::min(fwd_min, f);
    fwd_max = std::max(fwd_max, f);
    bwd_min = std::min(bwd_min, b);
    bwd_max = std::max(bwd_max, b);
    ceiling += static_cast<double>(v[kCeilingMflops]) * 1e-3 / ranks;
  }
  const Spread received = spread(all, ranks, kRowsReceived, 1.0);
  std::printf(
      "expert compute: rows per rank N = %.0f (min %.0f, max %.0f; T*K = %lld); "
      "GFLOP/s per rank forward %.1f (%.1f..%.1f), backward %.1f (%.1f..%.1f)\n",
      received.mean, received.min, received.max,
      static_cast<long long>(t * config.n_activated_experts), fwd_gflops, fwd_min, fwd_max,
      bwd_gflops, bwd_min, bwd_max);
  std::printf(
      "  sgemm ceiling per rank (n = 2048, all ranks at once): %.1f GFLOP/s -> forward "
      "%.0f%%, backward %.0f%% of it\n",
      ceiling, 100.0 * fwd_gflops / ceiling, 100.0 * bwd_gflops / ceiling);
  const Spread threads = spread(all, ranks, kThreads, 1.0);
  if (static_cast<double>(ranks) * threads.max > cpu_features().logical_cores) {
    std::printf(
        "  (oversubscribed: %d ranks x %.0f threads > %d cores; the ceiling, measured with every "
        "rank computing at once, is below what a rank gets while others wait in an exchange)\n",
        ranks, threads.max, cpu_features().logical_cores);
  }
  if (moe.shared_experts) {
    const Spread sf = spread(all, ranks, kSharedFwd, kMs);
    const Spread sb = spread(all, ranks, kSharedBwd, kMs);
    std::printf("shared expert alone (mean over ranks): forward %.3f ms, backward %.3f ms\n",
                sf.mean, sb.mean);
  }
  if (ep) {
    const Spread others = spread(all, ranks, kRowsSentOthers, 1.0);
    const Spread bytes = spread(all, ranks, kBytesSent, 1e-6);
    const Spread calls = spread(all, ranks, kAllToAllCalls, 1.0);
    const Spread a2a = spread(all, ranks, kAllToAllNs, kMs);
    const double exchange =
        spread(all, ranks, kFwdDispatch, kMs).mean + spread(all, ranks, kFwdCombine, kMs).mean +
        spread(all, ranks, kBwdCombine, kMs).mean + spread(all, ranks, kBwdDispatch, kMs).mean;
    std::printf("dispatcher metrics (per rank, mean over ranks [min..max]):\n");
    std::printf("  rows sent to other ranks per forward dispatch: %.0f of %lld [%.0f..%.0f]\n",
                others.mean, static_cast<long long>(t * config.n_activated_experts), others.min,
                others.max);
    std::printf("  bytes sent to other ranks per forward + backward: %.3f MB [%.3f..%.3f]\n",
                bytes.mean, bytes.min, bytes.max);
    std::printf(
        "  all_to_all_v per forward + backward: %.0f calls, %.3f ms [%.3f..%.3f] "
        "(%.0f%% of the four exchange phases, %.3f ms)\n",
        calls.mean, a2a.mean, a2a.min, a2a.max, exchange > 0 ? 100.0 * a2a.mean / exchange : 0.0,
        exchange);
  }
  return 0;
}

}  // namespace
}  // namespace fathom::bench

int main(int argc, char** argv) {
  fathom::parallel::init_mpi(&argc, &argv);
  return fathom::parallel::run_rank_main([&] { return fathom::bench::run(argc, argv); });
}
