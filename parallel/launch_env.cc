#include "parallel/launch_env.h"

#include <climits>
#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace fathom::parallel {
namespace {

// A variable and its value, when set.
struct Var {
  std::string name;
  std::optional<std::string> value;
};

// The first of `names` that is set (the last name when none is).
Var first_set(const EnvLookup& env, std::initializer_list<const char*> names) {
  Var var;
  for (const char* name : names) {
    var.name = name;
    var.value = env(name);
    if (var.value.has_value()) break;
  }
  return var;
}

// The launcher's name for messages.
std::string name_of(Launcher launcher) { return std::string(launcher_name(launcher)); }

// Whether `text` is a non-empty run of decimal digits.
bool all_digits(absl::string_view text) {
  return !text.empty() && text.find_first_not_of("0123456789") == absl::string_view::npos;
}

absl::StatusOr<int> parse_count(const Var& var) {
  int value = 0;
  const absl::string_view text = absl::StripAsciiWhitespace(*var.value);
  const bool digits_only = all_digits(text);
  if (!digits_only || !absl::SimpleAtoi(text, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat(var.name, ": expected a non-negative integer, got '", *var.value, "'"));
  }
  return value;
}

// The launcher's variables, resolved to one name each.
struct LauncherVars {
  Launcher launcher;
  Var rank, size, local_rank, local_size;
};

absl::StatusOr<LaunchEnv> read_launcher(const LauncherVars& vars, const EnvLookup& env) {
  LaunchEnv launch;
  launch.launcher = vars.launcher;
  launch.rank_variable = vars.rank.name;
  if (!vars.rank.value.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat(name_of(vars.launcher), " launch: ", vars.size.name, " is set ('",
                     *vars.size.value, "') but ", vars.rank.name, " is not"));
  }
  auto rank = parse_count(vars.rank);
  if (!rank.ok()) return rank.status();
  launch.rank = *rank;
  if (vars.size.value.has_value()) {
    auto size = parse_count(vars.size);
    if (!size.ok()) return size.status();
    if (*size < 1 || launch.rank >= *size) {
      return absl::InvalidArgumentError(absl::StrCat(
          name_of(vars.launcher), " launch: ", vars.rank.name, "=", launch.rank,
          " must be less than ", vars.size.name, "=", *size, " (and the size at least 1)"));
    }
    launch.world_size = *size;
  } else if (vars.launcher != Launcher::kPmix) {
    return absl::InvalidArgumentError(
        absl::StrCat(name_of(vars.launcher), " launch: ", vars.rank.name, " is set ('",
                     *vars.rank.value, "') but ", vars.size.name, " is not"));
  }
  if (vars.local_rank.value.has_value()) {
    auto local_rank = parse_count(vars.local_rank);
    if (!local_rank.ok()) return local_rank.status();
    launch.local_rank = *local_rank;
  }
  if (vars.local_size.value.has_value()) {
    auto local_size = parse_count(vars.local_size);
    if (!local_size.ok()) return local_size.status();
    launch.local_size = *local_size;
  } else if (vars.launcher == Launcher::kSlurm) {
    // The step's tasks per node, indexed by this node's position in the step.
    const Var per_node = first_set(env, {"SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"});
    const Var node = first_set(env, {"SLURM_NODEID"});
    if (per_node.value.has_value() && node.value.has_value()) {
      auto node_index = parse_count(node);
      if (!node_index.ok()) return node_index.status();
      auto tasks = slurm_tasks_on_node(*per_node.value, *node_index);
      if (!tasks.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            per_node.name, " with SLURM_NODEID=", *node_index, ": ", tasks.status().message()));
      }
      launch.local_size = *tasks;
    }
  }
  if (launch.local_size.has_value()) {
    const std::string size_name = vars.local_size.value.has_value()
                                      ? vars.local_size.name
                                      : std::string("the Slurm tasks on this node");
    if (*launch.local_size < 1 ||
        (launch.world_size.has_value() && *launch.local_size > *launch.world_size)) {
      return absl::InvalidArgumentError(absl::StrCat(
          name_of(vars.launcher), " launch: ", size_name, "=", *launch.local_size,
          " must be in [1, world size ", launch.world_size.value_or(0), "]"));
    }
    if (launch.local_rank.has_value() && *launch.local_rank >= *launch.local_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          name_of(vars.launcher), " launch: ", vars.local_rank.name, "=", *launch.local_rank,
          " must be less than ", size_name, "=", *launch.local_size));
    }
  }
  return launch;
}

bool any_set(const LauncherVars& vars) {
  return vars.rank.value.has_value() || vars.size.value.has_value();
}

}  // namespace

std::string_view launcher_name(Launcher launcher) {
  switch (launcher) {
    case Launcher::kNone:
      return "none";
    case Launcher::kOpenMpi:
      return "Open MPI";
    case Launcher::kSlurm:
      return "Slurm";
    case Launcher::kPmi:
      return "PMI";
    case Launcher::kPmix:
      return "PMIx";
    case Launcher::kManual:
      return "manual (FATHOM_RANK)";
  }
  return "?";
}

EnvLookup process_env() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  };
}

absl::StatusOr<int> slurm_tasks_on_node(std::string_view tasks_per_node_in, int node) {
  const absl::string_view tasks_per_node(tasks_per_node_in.data(), tasks_per_node_in.size());
  // Entries "N" or "N(xR)": N tasks on each of R nodes.
  int first_node = 0;
  for (absl::string_view entry : absl::StrSplit(tasks_per_node, ',')) {
    entry = absl::StripAsciiWhitespace(entry);
    int tasks = 0;
    int repeat = 1;
    const size_t paren = entry.find('(');
    absl::string_view count = entry.substr(0, paren);
    bool ok = all_digits(count) && absl::SimpleAtoi(count, &tasks);
    if (ok && paren != absl::string_view::npos) {
      absl::string_view times = entry.substr(paren);
      ok = absl::ConsumePrefix(&times, "(x") && absl::ConsumeSuffix(&times, ")") &&
           all_digits(times) && absl::SimpleAtoi(times, &repeat) && repeat >= 1;
    }
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "malformed tasks-per-node list '", tasks_per_node, "' (expected e.g. '2(x3),1')"));
    }
    if (node - first_node < repeat) return tasks;
    first_node += repeat;
  }
  return absl::InvalidArgumentError(absl::StrCat("node ", node, " is past the end of '",
                                                 tasks_per_node, "' (", first_node, " nodes)"));
}

absl::StatusOr<LaunchEnv> detect_launch_env(const EnvLookup& env) {
  const std::vector<LauncherVars> launchers = {
      {Launcher::kOpenMpi, first_set(env, {"OMPI_COMM_WORLD_RANK"}),
       first_set(env, {"OMPI_COMM_WORLD_SIZE"}), first_set(env, {"OMPI_COMM_WORLD_LOCAL_RANK"}),
       first_set(env, {"OMPI_COMM_WORLD_LOCAL_SIZE"})},
      {Launcher::kSlurm, first_set(env, {"SLURM_PROCID"}),
       first_set(env, {"SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"}),
       first_set(env, {"SLURM_LOCALID"}), Var{"SLURM_STEP_TASKS_PER_NODE", std::nullopt}},
      {Launcher::kPmi, first_set(env, {"PMI_RANK"}), first_set(env, {"PMI_SIZE"}),
       first_set(env, {"MPI_LOCALRANKID"}), first_set(env, {"MPI_LOCALNRANKS"})},
      {Launcher::kPmix, first_set(env, {"PMIX_RANK"}), Var{"PMIX_SIZE", std::nullopt},
       Var{"", std::nullopt}, Var{"", std::nullopt}},
      {Launcher::kManual, first_set(env, {"FATHOM_RANK"}), first_set(env, {"FATHOM_WORLD_SIZE"}),
       first_set(env, {"FATHOM_LOCAL_RANK"}), first_set(env, {"FATHOM_LOCAL_SIZE"})},
  };
  for (const LauncherVars& vars : launchers) {
    if (!any_set(vars)) continue;
    if (vars.launcher == Launcher::kSlurm && !env("SLURM_STEP_ID").has_value() &&
        !env("SLURM_STEPID").has_value()) {
      continue;  // a batch script or an salloc shell: not one of the step's tasks
    }
    return read_launcher(vars, env);
  }
  LaunchEnv single;
  single.world_size = 1;
  single.local_rank = 0;
  single.local_size = 1;
  return single;
}

std::string describe(const LaunchEnv& launch) {
  if (launch.launcher == Launcher::kNone) return "no launcher: rank 0 of 1";
  std::string text = absl::StrCat(
      name_of(launch.launcher), ": rank ", launch.rank, " of ",
      launch.world_size.has_value() ? absl::StrCat(*launch.world_size) : std::string("?"));
  if (launch.local_rank.has_value() || launch.local_size.has_value()) {
    absl::StrAppend(&text, ", local rank ",
                    launch.local_rank.has_value() ? absl::StrCat(*launch.local_rank) : "?", " of ",
                    launch.local_size.has_value() ? absl::StrCat(*launch.local_size) : "?");
  }
  return text;
}

}  // namespace fathom::parallel
