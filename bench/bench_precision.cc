// bench_precision: loss curves of the small model trained in FP32, BF16 and FP8 (SPEC.md
// section 2: FP8 within 0.25% relative of BF16), from the same initialisation on the same data.
//
// Each precision is one trainer::train() run of configs/runs/pretrain-small.yaml with these
// overrides (--set syntax, applied in code): train.steps=300, train.eval_samples=0 (no
// evaluation), train.checkpoint_every=0, a schedule fitted to 300 steps (warmup 30, constant,
// cosine from step 200 to 300), train.threads = --threads, and precision. Everything else (seed,
// data stream, AdamW) is the run file's, so the three runs differ only in the precision mode; FP8
// keeps its default BF16 AdamW moments (the V3 recipe). Batches are 4 x 64 tokens (overrides
// train.micro_batch_size=4, train.grad_accum=1, train.seq_len=64): the CPU's FP8 path simulates
// the GPU recipe and runs 6-10x slower than FP32, so 300 steps of the file's 2 x 8 x 128 would
// take half an hour; at 256 tokens per step the whole benchmark takes about 4 minutes.
//
// Prints the mean loss of each window of `every` steps for the three precisions, then the mean loss
// over the last 50 steps and its relative difference, fp8 against bf16 (the SPEC.md metric) and
// bf16 and fp8 against fp32, with PASS/FAIL against the tolerances below (the exit status is 1
// when one fails, except with --quick). The runs are deterministic: the losses, unlike the
// timings, repeat exactly.
//
// usage: bench_precision [--quick] [--threads N] [--steps N] [--seed N]
//   --quick    60 steps, last-20 window (a smoke test; the tolerances are not meant for it)
//   --steps N  steps per run (default 300); the window is min(50, N / 3) steps
//   --seed N   the run's seed (initialisation and data; default: the run file's, 1)
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "trainer/run_config.h"
#include "trainer/trainer.h"

#ifndef FATHOM_SOURCE_DIR
#error "FATHOM_SOURCE_DIR must name the source tree (set by bench/CMakeLists.txt)"
#endif

namespace fathom::bench {
namespace {

namespace fs = std::filesystem;

// Tolerances on |mean a / mean b - 1| over the last window. SPEC.md's 0.25% (FP8 vs BF16) is a
// target for V3-scale runs; on this 10M-parameter model after 77k tokens the loss of two runs that
// differ only in rounding drifts apart by more than that: bf16 vs fp32, which involves no FP8 at
// all, measured 0.26% (seed 1) and 0.61% (seed 2), and any pair reached 1.11% (fp8 vs fp32, seed
// 2), with 20-step windows up to 5% apart mid-run (docs/performance.md, "Training"). 1.5% sits
// above that noise floor; it is about the loss drop of the last 5-10 steps of the run, so a defect
// passes only if it costs less than that.
constexpr double kFp8VsBf16Tolerance = 0.015;
constexpr double kVsFp32Tolerance = 0.015;

struct Args {
  bool quick = false;
  int threads = 0;  // 0: all cores
  int steps = 0;    // 0: default for the mode
  int seed = 0;     // 0: the run file's seed
};

Args parse_args(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc && std::atoi(argv[i + 1]) > 0;
    if (!std::strcmp(argv[i], "--quick")) {
      args.quick = true;
    } else if (!std::strcmp(argv[i], "--threads") && has_value) {
      args.threads = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--steps") && has_value) {
      args.steps = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--seed") && has_value) {
      args.seed = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr,
                   "usage: bench_precision [--quick] [--threads N] [--steps N] [--seed N]\n");
      std::exit(2);
    }
  }
  return args;
}

double mean(const std::vector<double>& v, size_t begin, size_t end) {
  double sum = 0;
  for (size_t i = begin; i < end; ++i) sum += v[i];
  return sum / static_cast<double>(end - begin);
}

struct Curve {
  std::string precision;
  std::vector<double> loss;  // total loss of every step
  double seconds = 0;
  double tokens_per_s = 0;
};

int run(const Args& args) {
  const int threads = args.threads > 0 ? args.threads : omp_get_num_procs();
  set_cpu_threads(threads);
  print_header("bench_precision");
  const int64_t steps = args.steps > 0 ? args.steps : (args.quick ? 60 : 300);
  const int64_t window = std::max<int64_t>(1, std::min<int64_t>(50, steps / 3));
  const int64_t every = std::max<int64_t>(1, steps / 15);
  const int64_t warmup = std::max<int64_t>(1, steps / 10);
  const int64_t decay_steps = std::max<int64_t>(1, steps / 3);
  std::vector<std::string> common = {
      "train.steps=" + std::to_string(steps),
      "train.micro_batch_size=4",
      "train.grad_accum=1",
      "train.seq_len=64",
      "train.eval_samples=0",
      "train.checkpoint_every=0",
      "train.threads=" + std::to_string(threads),
      "optimizer.schedule.warmup_steps=" + std::to_string(warmup),
      "optimizer.schedule.decay_start=" + std::to_string(steps - decay_steps),
      "optimizer.schedule.decay_steps=" + std::to_string(decay_steps),
  };
  if (args.seed > 0) common.push_back("seed=" + std::to_string(args.seed));
  const std::string run_yaml = std::string(FATHOM_SOURCE_DIR) + "/configs/runs/pretrain-small.yaml";
  std::printf("# %s with", run_yaml.c_str());
  for (const std::string& s : common) std::printf(" --set %s", s.c_str());
  std::printf(" --set precision=P\n");

  std::string tmpl = (fs::temp_directory_path() / "fathom-bench-precision-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) {
    std::fprintf(stderr, "bench_precision: cannot create a directory like %s\n", tmpl.c_str());
    return 1;
  }
  const fs::path tmp_dir = tmpl;

  std::vector<Curve> curves;
  int64_t tokens_per_step = 0;
  for (const char* precision : {"fp32", "bf16", "fp8"}) {
    std::vector<std::string> sets = common;
    sets.push_back(std::string("precision=") + precision);
    absl::StatusOr<trainer::RunConfig> config = trainer::load_run_config(run_yaml, sets);
    if (!config.ok()) {
      std::fprintf(stderr, "bench_precision: %s\n", std::string(config.status().message()).c_str());
      fs::remove_all(tmp_dir);
      return 1;
    }
    tokens_per_step = config->train.grad_accum * config->train.micro_batch_size *
                      config->train.seq_len;
    trainer::TrainOptions options;
    options.run_dir = (tmp_dir / precision).string();
    options.log = nullptr;
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<trainer::TrainResult> result = trainer::train(*config, options);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!result.ok()) {
      std::fprintf(stderr, "bench_precision: %s run: %s\n", precision,
                   std::string(result.status().message()).c_str());
      fs::remove_all(tmp_dir);
      return 1;
    }
    std::printf("# %-4s: %.1f s, %.0f tokens/s\n", precision, seconds, result->tokens_per_s);
    std::fflush(stdout);
    curves.push_back({precision, result->loss, seconds, result->tokens_per_s});
  }
  fs::remove_all(tmp_dir);

  std::printf("\n# %lld tokens per step; mean total loss (lm + MTP + balance) of each window of "
              "%lld steps\n",
              static_cast<long long>(tokens_per_step), static_cast<long long>(every));
  std::printf("%11s %10s %10s %10s %10s %10s\n", "steps", "fp32", "bf16", "fp8", "bf16/fp32-1",
              "fp8/bf16-1");
  const std::vector<double>& f32 = curves[0].loss;
  const std::vector<double>& b16 = curves[1].loss;
  const std::vector<double>& f8 = curves[2].loss;
  for (int64_t end = every; end <= steps; end += every) {
    const size_t b = static_cast<size_t>(end - every), e = static_cast<size_t>(end);
    const double l32 = mean(f32, b, e), l16 = mean(b16, b, e), l8 = mean(f8, b, e);
    std::printf("%5lld-%-5lld %10.4f %10.4f %10.4f %+9.3f%% %+9.3f%%\n",
                static_cast<long long>(b + 1), static_cast<long long>(e), l32, l16, l8,
                100 * (l16 / l32 - 1), 100 * (l8 / l16 - 1));
  }

  const size_t n = static_cast<size_t>(steps), w = static_cast<size_t>(window);
  const double m32 = mean(f32, n - w, n), m16 = mean(b16, n - w, n), m8 = mean(f8, n - w, n);
  std::printf("\n# mean loss over the last %zu steps: fp32 %.5f, bf16 %.5f, fp8 %.5f\n", w, m32,
              m16, m8);
  bool pass = true;
  const auto check = [&](const char* what, double value, double reference, double tolerance) {
    const double rel = std::abs(value / reference - 1);
    const bool ok = std::isfinite(rel) && rel <= tolerance;
    pass = pass && ok;
    std::printf("%-13s relative difference %.3f%% (tolerance %.2f%%): %s\n", what, 100 * rel,
                100 * tolerance, ok ? "PASS" : "FAIL");
  };
  check("fp8 vs bf16", m8, m16, kFp8VsBf16Tolerance);
  check("bf16 vs fp32", m16, m32, kVsFp32Tolerance);
  check("fp8 vs fp32", m8, m32, kVsFp32Tolerance);
  if (args.quick) std::printf("# --quick: a smoke test; the tolerances are set for 300 steps\n");
  return pass || args.quick ? 0 : 1;
}

}  // namespace
}  // namespace fathom::bench

int main(int argc, char** argv) {
  return fathom::bench::run(fathom::bench::parse_args(argc, argv));
}
