#include "launch/train_command.h"

#include <cstdio>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "kernels/cpu_info.h"
#include "parallel/fault.h"
#include "parallel/launch_env.h"
#include "parallel/mpi_env.h"
#include "trainer/run_config.h"
#include "trainer/trainer.h"

namespace fathom::launch {
namespace {

constexpr char kUsage[] =
    "usage: fathom train RUN.yaml [--set key.path=value ...] [--run-dir DIR] [--resume]\n"
    "                    [--device cpu|cuda|cuda:N]\n"
    "Trains the model the run config describes (configs/runs/*.yaml). Writes DIR/config.yaml,\n"
    "DIR/metrics.jsonl (one JSON object per logged step) and HDF5 checkpoints under\n"
    "DIR/checkpoints/ (default DIR: runs/<config name>). --set overrides a config value, e.g.\n"
    "--set train.steps=50 --set optimizer.lr=1e-3. --resume continues the run in DIR from its\n"
    "newest checkpoint, bit-identically, under any parallel layout.\n"
    "Many ranks: mpirun -np N fathom train RUN.yaml --set parallel.dp=N [--set parallel.ep=E]\n"
    "[--set parallel.pp=P --set parallel.schedule=dualpipe] (or srun --mpi=pmix); world =\n"
    "pp x dp; with pp > 1, train.grad_accum is the schedule's micro-batches per step. Rank 0\n"
    "logs. Example: configs/runs/pretrain-tiny-4ranks.yaml (DualPipe x EP x DP).\n";

int usage_error(const std::string& message) {
  std::fprintf(stderr, "fathom train: %s\n%s", message.c_str(), kUsage);
  return 2;
}

bool parse_device(const std::string& text, Device* device) {
  if (text == "cpu") {
    *device = Device::cpu();
    return true;
  }
  if (text == "cuda") {
    *device = Device::cuda(0);
    return true;
  }
  int index = 0;
  if (text.rfind("cuda:", 0) == 0 && absl::SimpleAtoi(text.substr(5), &index) && index >= 0) {
    *device = Device::cuda(index);
    return true;
  }
  return false;
}

}  // namespace

int train_main(const std::vector<std::string>& args) {
  std::string config_path;
  std::vector<std::string> sets;
  trainer::TrainOptions options;
  options.run_dir.clear();
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const bool has_value = i + 1 < args.size();
    if (a == "--help" || a == "-h") {
      std::printf("%s", kUsage);
      return 0;
    } else if (a == "--set") {
      if (!has_value) return usage_error("--set needs key.path=value");
      sets.push_back(args[++i]);
    } else if (a == "--run-dir") {
      if (!has_value) return usage_error("--run-dir needs a directory");
      options.run_dir = args[++i];
    } else if (a == "--resume") {
      options.resume = true;
    } else if (a == "--device") {
      if (!has_value || !parse_device(args[i + 1], &options.device)) {
        return usage_error("--device needs cpu, cuda or cuda:N");
      }
      ++i;
    } else if (a.rfind("--", 0) == 0) {
      return usage_error("unknown option '" + a + "'");
    } else if (config_path.empty()) {
      config_path = a;
    } else {
      return usage_error("more than one run config ('" + config_path + "' and '" + a + "')");
    }
  }
  if (config_path.empty()) return usage_error("missing RUN.yaml");
  if (options.run_dir.empty()) {
    options.run_dir = "runs/" + std::filesystem::path(config_path).stem().string();
  }
  // Under mpirun or srun every rank runs this; a world of one runs without MPI.
  const absl::StatusOr<parallel::LaunchEnv> launch = parallel::detect_launch_env();
  if (!launch.ok()) {
    std::fprintf(stderr, "fathom train: %s\n", std::string(launch.status().message()).c_str());
    return 1;
  }
  const bool distributed = launch->launcher != parallel::Launcher::kNone &&
                           launch->world_size.value_or(2) > 1;
  const int rank = distributed ? launch->rank : 0;
  const absl::StatusOr<trainer::RunConfig> config = trainer::load_run_config(config_path, sets);
  if (!config.ok()) {
    // Every rank reads the same file and fails the same way: only rank 0 reports it.
    if (rank == 0) {
      std::fprintf(stderr, "fathom train: %s\n", std::string(config.status().message()).c_str());
    }
    return 1;
  }
  const std::string blas_warning = blas_core_warning();
  if (!blas_warning.empty() && rank == 0) {
    std::fprintf(stderr, "warning: %s\n", blas_warning.c_str());
  }
  if (!distributed) {
    const absl::StatusOr<trainer::TrainResult> result = trainer::train(*config, options);
    if (!result.ok()) {
      std::fprintf(stderr, "fathom train: %s\n", std::string(result.status().message()).c_str());
      return 1;
    }
    return 0;
  }
  parallel::init_mpi();
  options.world = &parallel::world_communicator();
  const int code = parallel::run_rank_main([&]() -> int {
    const absl::StatusOr<trainer::TrainResult> result = trainer::train(*config, options);
    // A failure may hit some ranks only: throwing makes run_rank_main stop them all.
    if (!result.ok()) throw Error(std::string(result.status().message()));
    return 0;
  });
  parallel::finalize_mpi();
  return code;
}

}  // namespace fathom::launch
