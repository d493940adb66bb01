// bench_train: training throughput of the tiny and small DeepSeek-V3 models on the CPU, next to
// PyTorch eager on the same model, shapes and thread count, measured in the same run.
//
// One step is what the trainer does per optimizer step with one micro-batch: zero the gradients,
// forward and backward (main model, MTP, balance loss), AdamW with global-norm clipping, and the
// auxiliary-loss-free router-bias update. Fathom trains in FP32 (PyTorch's precision here). Both
// sides train on uniform random tokens (B, S + mtp_depth + 1) and time steps after a warm-up; the
// median step gives tokens/s = B * S / step. MFU = tokens/s x training_flops_per_token
// (trainer/flops.h) / the sgemm 2048^3 ceiling, measured in this run before and after the cases
// (the higher value). The table also splits the Fathom step into forward + backward and the rest
// (zero_grad, AdamW, bias update); per-round numbers go to stderr.
//
// Each model runs in two variants: as configured (MoE blocks after the first n_dense_layers) and
// dense (n_dense_layers = n_layers, the MTP block too), which bench/torch_train.py builds with
// --dense. The PyTorch column runs `/usr/bin/python3 bench/torch_train.py` as a child process
// after the Fathom measurement of the same row (never both at once); it is left out with a note
// when that interpreter has no torch.
//
// usage: bench_train [--quick] [--threads N] [--steps N] [--rounds N] [--model tiny|small]
//                    [--no-torch]
//   --threads N  CPU threads for both sides (default: all cores)
//   --steps N    timed steps per case (default 20; --quick: 4), after 3 (--quick: 1) warm-up steps
//   --rounds N   measure each row N times, Fathom and PyTorch alternating, and keep the fastest
//                of each side (default 1): on a shared host this discards rounds slowed down by
//                other work
//   --model M    only model M (tiny or small)
//   --no-torch   skip the PyTorch column
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "model/deepseek_v3.h"
#include "model/moe.h"
#include "trainer/flops.h"
#include "trainer/optimizer.h"
#include "trainer/run_config.h"

#ifndef FATHOM_SOURCE_DIR
#error "FATHOM_SOURCE_DIR must name the source tree (set by bench/CMakeLists.txt)"
#endif

namespace fathom::bench {
namespace {

constexpr char kPython[] = "/usr/bin/python3";

struct Args {
  bool quick = false;
  bool torch = true;
  int threads = 0;  // 0: all cores
  int steps = 0;    // 0: default for the mode
  int rounds = 1;
  std::string model;  // empty: every model
};

Args parse_args(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc && std::atoi(argv[i + 1]) > 0;
    if (!std::strcmp(argv[i], "--quick")) {
      args.quick = true;
    } else if (!std::strcmp(argv[i], "--no-torch")) {
      args.torch = false;
    } else if (!std::strcmp(argv[i], "--threads") && has_value) {
      args.threads = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--steps") && has_value) {
      args.steps = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--rounds") && has_value) {
      args.rounds = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--model") && i + 1 < argc &&
               (!std::strcmp(argv[i + 1], "tiny") || !std::strcmp(argv[i + 1], "small"))) {
      args.model = argv[++i];
    } else {
      std::fprintf(stderr, "usage: bench_train [--quick] [--threads N] [--steps N] [--rounds N] "
                   "[--model tiny|small] [--no-torch]\n");
      std::exit(2);
    }
  }
  return args;
}

struct ModelCase {
  const char* name;
  const char* run_yaml;    // batch and sequence length come from its train section
  const char* model_yaml;  // the same model, for torch_train.py
};

struct Timing {
  double step_s = 0;     // median full step
  double fwd_bwd_s = 0;  // median forward + backward
  double update_s = 0;   // median zero_grad + AdamW + bias update
};

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

// Times full FP32 training steps of `config` on random tokens (batch, seq + mtp_depth + 1).
Timing time_fathom(const model::ModelConfig& config, int64_t batch, int64_t seq, int warmup,
                   int steps) {
  model::DeepSeekV3 model(config, model::TrainingPrecision::kFp32, Device::cpu());
  model.init(1);
  trainer::AdamW optimizer(model.parameters(), trainer::AdamWOptions{});
  const std::vector<model::Moe*> moes = model.moe_layers();
  const int64_t width = seq + config.mtp_depth + 1;
  std::mt19937 rng(0);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(config.vocab_size) - 1);
  std::vector<Tensor> batches;
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> ids(static_cast<size_t>(batch * width));
    for (int32_t& id : ids) id = token(rng);
    batches.push_back(Tensor::from_vector(ids, {batch, width}));
  }
  std::vector<double> step_s, fwd_bwd_s, update_s;
  for (int i = 0; i < warmup + steps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    optimizer.zero_grad();
    const auto fb_start = std::chrono::steady_clock::now();
    model.forward_backward(batches[i % batches.size()], 1.0);
    const auto fb_end = std::chrono::steady_clock::now();
    optimizer.step(1e-3);
    for (model::Moe* moe : moes) {
      const std::vector<int64_t>& load = moe->expert_load();
      const std::vector<double> load_d(load.begin(), load.end());
      moe->update_bias(load_d, config.bias_update_speed);
      moe->reset_load();
    }
    const auto end = std::chrono::steady_clock::now();
    if (i < warmup) continue;
    const auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
    step_s.push_back(secs(start, end));
    fwd_bwd_s.push_back(secs(fb_start, fb_end));
    update_s.push_back(secs(start, fb_start) + secs(fb_end, end));
  }
  return {median(step_s), median(fwd_bwd_s), median(update_s)};
}

bool python_has_torch() {
  const std::string cmd = std::string(kPython) + " -c 'import torch' >/dev/null 2>&1";
  return std::system(cmd.c_str()) == 0;
}

// Runs torch_train.py and returns its tokens/s, or 0 with `note` set to what went wrong.
double time_torch(const ModelCase& c, bool dense, int64_t batch, int64_t seq, int warmup,
                  int steps, int threads, std::string* note) {
  const std::string root = FATHOM_SOURCE_DIR;
  const std::string cmd = std::string(kPython) + " " + root + "/bench/torch_train.py --config " +
                          root + "/" + c.model_yaml + " --batch " + std::to_string(batch) +
                          " --seq " + std::to_string(seq) + " --steps " + std::to_string(steps) +
                          " --warmup " + std::to_string(warmup) + " --threads " +
                          std::to_string(threads) + (dense ? " --dense" : "") + " 2>&1";
  std::fflush(stdout);
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) {
    *note = "cannot start " + cmd;
    return 0;
  }
  std::string output;
  char buf[512];
  while (std::fgets(buf, sizeof(buf), pipe) != nullptr) output += buf;
  const int status = pclose(pipe);
  const std::string key = "torch tokens_per_s=";
  const size_t at = output.find(key);
  if (status != 0 || at == std::string::npos) {
    *note = "torch_train.py failed (status " + std::to_string(status) + "): " + output;
    return 0;
  }
  return std::atof(output.c_str() + at + key.size());
}

struct Row {
  std::string model, variant;
  int64_t batch = 0, seq = 0;
  Timing fathom;
  double fathom_tokens_per_s = 0;
  double flops_per_token = 0;
  double torch_tokens_per_s = 0;  // 0: not measured
};

int run(const Args& args) {
  const int threads = args.threads > 0 ? args.threads : omp_get_num_procs();
  set_cpu_threads(threads);
  print_header("bench_train");
  const int warmup = args.quick ? 1 : 3;
  const int steps = args.steps > 0 ? args.steps : (args.quick ? 4 : 20);
  std::printf("# %d warm-up + %d timed steps per case (median), best of %d round(s); FP32; "
              "random tokens\n", warmup, steps, args.rounds);
  bool torch = args.torch;
  if (torch && !python_has_torch()) {
    std::printf("# note: %s cannot import torch (Debian: apt-get install python3-torch); "
                "PyTorch column skipped\n", kPython);
    torch = false;
  } else if (!torch) {
    std::printf("# note: --no-torch: PyTorch column skipped\n");
  }
  std::fflush(stdout);

  // The ceiling is measured before and after the cases and the higher value taken: on a shared
  // host a dip during one probe would otherwise inflate every MFU.
  const double ceiling_budget_s = args.quick ? 0.5 : 2.0;
  const double ceiling_before = sgemm_ceiling_gflops(ceiling_budget_s);

  const ModelCase cases[] = {
      {"tiny", "configs/runs/pretrain-tiny.yaml", "configs/models/tiny.yaml"},
      {"small", "configs/runs/pretrain-small.yaml", "configs/models/small.yaml"},
  };
  std::vector<Row> rows;
  std::vector<std::string> notes;
  for (const ModelCase& c : cases) {
    if (!args.model.empty() && args.model != c.name) continue;
    absl::StatusOr<trainer::RunConfig> run_config =
        trainer::load_run_config(std::string(FATHOM_SOURCE_DIR) + "/" + c.run_yaml);
    if (!run_config.ok()) {
      std::fprintf(stderr, "bench_train: %s\n",
                   std::string(run_config.status().message()).c_str());
      return 1;
    }
    for (const bool dense : {false, true}) {
      Row row;
      row.model = c.name;
      row.variant = dense ? "dense" : "moe";
      row.batch = run_config->train.micro_batch_size;
      row.seq = run_config->train.seq_len;
      model::ModelConfig config = run_config->model;
      if (dense) config.n_dense_layers = config.n_layers;
      row.flops_per_token = trainer::training_flops_per_token(config, row.seq);
      std::string note;
      for (int round = 0; round < args.rounds; ++round) {
        const Timing t = time_fathom(config, row.batch, row.seq, warmup, steps);
        const double tokens_per_s = static_cast<double>(row.batch * row.seq) / t.step_s;
        std::fprintf(stderr, "bench_train: %s %s round %d: Fathom %.0f tokens/s", c.name,
                     row.variant.c_str(), round + 1, tokens_per_s);
        if (tokens_per_s > row.fathom_tokens_per_s) {
          row.fathom = t;
          row.fathom_tokens_per_s = tokens_per_s;
        }
        if (torch) {
          const double torch_tps =
              time_torch(c, dense, row.batch, row.seq, warmup, steps, threads, &note);
          std::fprintf(stderr, ", PyTorch %.0f tokens/s", torch_tps);
          row.torch_tokens_per_s = std::max(row.torch_tokens_per_s, torch_tps);
        }
        std::fprintf(stderr, "\n");
      }
      if (torch && row.torch_tokens_per_s <= 0) {
        notes.push_back(row.model + " " + row.variant + ": " + note);
      }
      rows.push_back(row);
    }
  }

  const double ceiling_after = sgemm_ceiling_gflops(ceiling_budget_s);
  const double ceiling = std::max(ceiling_before, ceiling_after);
  std::printf("# machine ceiling: OpenBLAS sgemm 2048^3 = %.1f / %.1f GFLOP/s on %d threads "
              "(before / after the cases); MFU uses %.1f\n",
              ceiling_before, ceiling_after, threads, ceiling);
  std::printf("\n%-6s %-7s %9s | %9s %8s %8s %8s %6s | %9s %8s\n", "", "", "", "Fathom",
              "step", "fwd+bwd", "optim", "", "PyTorch", "Fathom/");
  std::printf("%-6s %-7s %9s | %9s %8s %8s %8s %6s | %9s %8s\n", "model", "variant", "B x S",
              "tokens/s", "ms", "ms", "ms", "MFU", "tokens/s", "PyTorch");
  double min_ratio = 0;
  bool have_ratio = false;
  for (const Row& r : rows) {
    const double mfu = r.fathom_tokens_per_s * r.flops_per_token / (ceiling * 1e9);
    std::printf("%-6s %-7s %3lld x %-3lld | %9.0f %8.2f %8.2f %8.2f %5.1f%% | ",
                r.model.c_str(), r.variant.c_str(), static_cast<long long>(r.batch),
                static_cast<long long>(r.seq), r.fathom_tokens_per_s, r.fathom.step_s * 1e3,
                r.fathom.fwd_bwd_s * 1e3, r.fathom.update_s * 1e3, 100 * mfu);
    if (r.torch_tokens_per_s <= 0) {
      std::printf("%9s %8s\n", torch ? "failed" : "-", "-");
      continue;
    }
    const double ratio = r.fathom_tokens_per_s / r.torch_tokens_per_s;
    std::printf("%9.0f %7.2fx\n", r.torch_tokens_per_s, ratio);
    min_ratio = have_ratio ? std::min(min_ratio, ratio) : ratio;
    have_ratio = true;
  }
  for (const std::string& n : notes) std::printf("# note: %s\n", n.c_str());
  if (have_ratio) {
    std::printf("\n# Fathom / PyTorch tokens/s: min %.2fx over the rows (target >= 2x): %s\n",
                min_ratio, min_ratio >= 2 ? "met" : "NOT met");
  }
  return 0;
}

}  // namespace
}  // namespace fathom::bench

int main(int argc, char** argv) {
  return fathom::bench::run(fathom::bench::parse_args(argc, argv));
}
