#include "launch/cli.h"

#include <cstdio>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/check.h"
#include "launch/convert_command.h"
#include "launch/schedule_command.h"
#include "launch/train_command.h"
#include "model/config.h"
#include "model/param_count.h"
#include "trainer/run_config.h"
#include "launch/version.h"

namespace fathom::launch {
namespace {

struct Subcommand {
  std::string_view name;
  std::string_view summary;
  int (*run)(const std::vector<std::string>& args);
};

int run_version(const std::vector<std::string>& args) {
  if (!args.empty()) {
    std::fprintf(stderr, "fathom version: unexpected argument '%s'\n", args[0].c_str());
    return 2;
  }
  for (const auto& [component, version] : version_report()) {
    std::printf("%-14s %s\n", component.c_str(), version.c_str());
  }
  return 0;
}

int run_info(const std::vector<std::string>& args) {
  if (args.size() != 1 || args[0] == "--help") {
    std::fprintf(args.size() == 1 ? stdout : stderr,
                 "usage: fathom info MODEL_OR_RUN.yaml\n"
                 "Prints parameter counts (total, activated, embedding, head, MTP) and the memory\n"
                 "per parameter of each precision mode for the model the file describes.\n");
    return args.size() == 1 ? 0 : 2;
  }
  // A model YAML has a `model:` mapping; a run YAML may name its model file instead.
  absl::StatusOr<model::ModelConfig> config = model::load_model_config(args[0]);
  if (!config.ok()) {
    const absl::StatusOr<trainer::RunConfig> run = trainer::load_run_config(args[0]);
    if (run.ok()) config = run->model;
  }
  if (!config.ok()) {
    std::fprintf(stderr, "fathom info: %s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  std::printf("%s", model::describe_parameters(*config).c_str());
  return 0;
}

const std::vector<Subcommand>& subcommands() {
  static const std::vector<Subcommand> kSubcommands = {
      {"train", "train a DeepSeek-V3 model from a run YAML (metrics, checkpoints, --resume)",
       train_main},
      {"schedule",
       "simulate a pipeline schedule (1f1b, zb1p, dualpipe, dualpipev): timeline, bubble, "
       "activations",
       schedule_main},
      {"convert",
       "convert checkpoints: Hugging Face safetensors (DeepSeek-V3, Llama, Qwen2) <-> fathom HDF5",
       convert_main},
      {"info", "parameter counts and memory per parameter of a model or run YAML", run_info},
      {"version", "print library versions and whether a GPU is visible", run_version},
  };
  return kSubcommands;
}

void print_help(std::FILE* out) {
  std::fprintf(out,
               "fathom: train DeepSeek-V3-style MoE models, GRPO, distillation.\n\n"
               "usage: fathom <command> [args]   (fathom <command> --help for details)\n\n"
               "commands:\n");
  for (const Subcommand& s : subcommands()) {
    std::fprintf(out, "  %-10s %.*s\n", std::string(s.name).c_str(),
                 static_cast<int>(s.summary.size()), s.summary.data());
  }
}

}  // namespace

int run_cli(int argc, char** argv) {
  if (argc < 2) {
    print_help(stderr);
    return 2;
  }
  const std::string_view name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    print_help(stdout);
    return 0;
  }
  for (const Subcommand& s : subcommands()) {
    if (s.name != name) continue;
    std::vector<std::string> args(argv + 2, argv + argc);
    try {
      return s.run(args);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "fathom %s: %s\n", argv[1], e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "fathom: unknown command '%s' (see fathom --help)\n", argv[1]);
  return 2;
}

}  // namespace fathom::launch
