#include "parallel/topology.h"

#include <climits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/check.h"

namespace fathom::parallel {
namespace {

constexpr int64_t kMaxDegree = int64_t{1} << 20;

}  // namespace

std::vector<model::ConfigIssue> find_layout_issues(const ParallelConfig& config) {
  std::vector<model::ConfigIssue> issues;
  auto in_range = [&](const char* key, int64_t value, const char* what) {
    if (value < 1) {
      issues.push_back(
          {std::string(key), absl::StrCat("must be at least 1 (", what, "), got ", value)});
      return false;
    }
    if (value > kMaxDegree) {
      issues.push_back({std::string(key), absl::StrCat("must be at most ", kMaxDegree, " (", what,
                                                       "), got ", value)});
      return false;
    }
    return true;
  };
  in_range("pp", config.pp, "pipeline stages");
  const bool dp_ok = in_range("dp", config.dp, "data-parallel ranks per stage");
  const bool ep_ok = in_range("ep", config.ep, "expert-parallel ranks");
  if (dp_ok && ep_ok && config.dp % config.ep != 0) {
    issues.push_back(
        {"ep", absl::StrCat(config.ep, " does not divide dp ", config.dp,
                            " (the expert-parallel groups lie inside the "
                            "data-parallel dimension: expert-data-parallel = dp / ep)")});
  }
  return issues;
}

std::vector<model::ConfigIssue> find_parallel_issues(const ParallelConfig& config,
                                                     int64_t world_size,
                                                     const model::ModelConfig* model) {
  std::vector<model::ConfigIssue> issues = find_layout_issues(config);
  const bool pp_ok = config.pp >= 1 && config.pp <= kMaxDegree;
  const bool dp_ok = config.dp >= 1 && config.dp <= kMaxDegree;
  const bool ep_ok = config.ep >= 1 && config.ep <= kMaxDegree;
  if (world_size > 0 && pp_ok && dp_ok && config.pp * config.dp != world_size) {
    issues.push_back(
        {"", absl::StrCat("pp ", config.pp, " x dp ", config.dp, " = ", config.pp * config.dp,
                          " ranks, but the world has ", world_size)});
  }
  if (model != nullptr) {
    const int64_t experts = model->n_routed_experts;
    if (ep_ok && config.ep > experts) {
      issues.push_back({"ep", absl::StrCat(config.ep,
                                           " expert-parallel ranks, but the model has "
                                           "only ",
                                           experts,
                                           " routed experts "
                                           "(model.n_routed_experts); every EP rank needs at "
                                           "least one")});
    } else if (ep_ok && experts % config.ep != 0) {
      issues.push_back(
          {"ep", absl::StrCat(config.ep, " does not divide model.n_routed_experts ", experts,
                              " (every EP rank holds the same number of "
                              "experts)")});
    }
    // DualPipeV cuts the model into 2 * pp stages.
    const int64_t stages =
        config.pp * (config.schedule == pipeline::ScheduleKind::kDualPipeV ? 2 : 1);
    if (pp_ok && stages > model->n_layers) {
      issues.push_back({"pp", absl::StrCat(config.pp, " pipeline ranks make ", stages,
                                           " stages, but the model has only ", model->n_layers,
                                           " layers (model.n_layers); every stage needs at "
                                           "least one")});
    }
  }
  return issues;
}

absl::Status validate(const ParallelConfig& config, int64_t world_size,
                      const model::ModelConfig& model, std::string_view path) {
  model::ConfigErrors errors;
  for (model::ConfigIssue& issue : find_parallel_issues(config, world_size, &model)) {
    errors.add(issue.key.empty() ? std::string(path) : model::key_path(path, issue.key),
               std::move(issue.message));
  }
  return errors.to_status();
}

void read_parallel_config(const YAML::Node& node, const std::string& path,
                          const model::ModelConfig* model, model::ConfigErrors* errors,
                          ParallelConfig* out) {
  if (!node.IsDefined()) return;
  const size_t errors_before = errors->issues().size();
  ParallelConfig config = *out;
  model::MapReader reader(node, path, errors);
  reader.read("pp", &config.pp);
  reader.read("dp", &config.dp);
  reader.read("ep", &config.ep);
  reader.read("fp8_dispatch", &config.fp8_dispatch);
  std::string schedule(pipeline::schedule_kind_name(config.schedule));
  static const std::vector<std::string> kSchedules = {"1f1b", "zb1p", "dualpipe", "dualpipev"};
  reader.read_choice("schedule", kSchedules, &schedule);
  if (const auto kind = pipeline::parse_schedule_kind(schedule); kind.ok()) config.schedule = *kind;
  reader.read("fb_overlap", &config.fb_overlap);
  reader.finish();
  if (errors->issues().size() != errors_before) return;
  for (model::ConfigIssue& issue : find_parallel_issues(config, 0, model)) {
    // A problem spanning keys is placed at the section.
    const int line = issue.key.empty() ? model::line_of(node) : reader.line(issue.key);
    errors->add(issue.key.empty() ? path : model::key_path(path, issue.key),
                std::move(issue.message), line);
  }
  if (errors->issues().size() == errors_before) *out = config;
}

absl::StatusOr<ParallelConfig> parse_parallel_config(const YAML::Node& node, std::string_view path,
                                                     std::string_view source,
                                                     const model::ModelConfig* model) {
  model::ConfigErrors errors{std::string(source)};
  ParallelConfig config;
  read_parallel_config(node, std::string(path), model, &errors, &config);
  if (!errors.empty()) return errors.to_status();
  return config;
}

std::string_view group_kind_name(GroupKind kind) {
  switch (kind) {
    case GroupKind::kPipeline:
      return "pp";
    case GroupKind::kData:
      return "dp";
    case GroupKind::kExpert:
      return "ep";
    case GroupKind::kExpertData:
      return "edp";
  }
  return "?";
}

RankGrid::RankGrid(const ParallelConfig& config) {
  const std::vector<model::ConfigIssue> issues = find_layout_issues(config);
  FATHOM_CHECK(issues.empty()) << "invalid parallel layout pp " << config.pp << " dp " << config.dp
                               << " ep " << config.ep << ": "
                               << (issues.empty()
                                       ? ""
                                       : issues.front().key + ": " + issues.front().message);
  FATHOM_CHECK(config.pp * config.dp <= INT_MAX)
      << "pp " << config.pp << " x dp " << config.dp << " ranks do not fit an int";
  pp_ = static_cast<int>(config.pp);
  dp_ = static_cast<int>(config.dp);
  ep_ = static_cast<int>(config.ep);
}

RankCoords RankGrid::coords(int rank) const {
  FATHOM_CHECK(rank >= 0 && rank < world_size())
      << "rank " << rank << " is outside the world of " << world_size() << " ranks";
  RankCoords c;
  c.pp = rank / dp_;
  c.dp = rank % dp_;
  c.ep = c.dp % ep_;
  c.edp = c.dp / ep_;
  return c;
}

int RankGrid::rank_of(const RankCoords& c) const {
  FATHOM_CHECK(c.pp >= 0 && c.pp < pp_ && c.dp >= 0 && c.dp < dp_ && c.ep >= 0 && c.ep < ep_ &&
               c.edp >= 0 && c.edp < edp())
      << "coordinates pp " << c.pp << " dp " << c.dp << " ep " << c.ep << " edp " << c.edp
      << " are outside the grid pp " << pp_ << " dp " << dp_ << " ep " << ep_;
  FATHOM_CHECK(c.dp == c.edp * ep_ + c.ep) << "inconsistent coordinates: dp " << c.dp << " != edp "
                                           << c.edp << " x ep " << ep_ << " + ep " << c.ep;
  return c.pp * dp_ + c.dp;
}

int RankGrid::group_size(GroupKind kind) const {
  switch (kind) {
    case GroupKind::kPipeline:
      return pp_;
    case GroupKind::kData:
      return dp_;
    case GroupKind::kExpert:
      return ep_;
    case GroupKind::kExpertData:
      return edp();
  }
  FATHOM_CHECK(false) << "unknown group kind " << static_cast<int>(kind);
}

int RankGrid::num_groups(GroupKind kind) const { return world_size() / group_size(kind); }

int RankGrid::group_index(GroupKind kind, int rank) const {
  const RankCoords c = coords(rank);
  switch (kind) {
    case GroupKind::kPipeline:
      return c.dp;  // the stages of one data-parallel replica
    case GroupKind::kData:
      return c.pp;  // the replicas of one stage
    case GroupKind::kExpert:
      return c.pp * edp() + c.edp;
    case GroupKind::kExpertData:
      return c.pp * ep_ + c.ep;
  }
  FATHOM_CHECK(false) << "unknown group kind " << static_cast<int>(kind);
}

int RankGrid::rank_in_group(GroupKind kind, int rank) const {
  const RankCoords c = coords(rank);
  switch (kind) {
    case GroupKind::kPipeline:
      return c.pp;
    case GroupKind::kData:
      return c.dp;
    case GroupKind::kExpert:
      return c.ep;
    case GroupKind::kExpertData:
      return c.edp;
  }
  FATHOM_CHECK(false) << "unknown group kind " << static_cast<int>(kind);
}

std::vector<int> RankGrid::group(GroupKind kind, int rank) const {
  const RankCoords c = coords(rank);
  std::vector<int> members;
  members.reserve(group_size(kind));
  for (int i = 0; i < group_size(kind); ++i) {
    RankCoords m = c;
    switch (kind) {
      case GroupKind::kPipeline:
        m.pp = i;
        break;
      case GroupKind::kData:
        m.dp = i;
        m.ep = i % ep_;
        m.edp = i / ep_;
        break;
      case GroupKind::kExpert:
        m.ep = i;
        m.dp = c.edp * ep_ + i;
        break;
      case GroupKind::kExpertData:
        m.edp = i;
        m.dp = i * ep_ + c.ep;
        break;
    }
    members.push_back(rank_of(m));
  }
  return members;
}

Communicator& ProcessGroups::get(GroupKind kind) {
  std::unique_ptr<Communicator>* comm = nullptr;
  switch (kind) {
    case GroupKind::kPipeline:
      comm = &pp;
      break;
    case GroupKind::kData:
      comm = &dp;
      break;
    case GroupKind::kExpert:
      comm = &ep;
      break;
    case GroupKind::kExpertData:
      comm = &edp;
      break;
  }
  FATHOM_CHECK(comm != nullptr && *comm != nullptr)
      << "no " << group_kind_name(kind) << " communicator (ProcessGroups not made by make_groups)";
  return **comm;
}

ProcessGroups make_groups(Communicator& world, const RankGrid& grid) {
  FATHOM_CHECK(world.size() == grid.world_size())
      << "the communicator has " << world.size() << " ranks, but the grid pp " << grid.pp()
      << " x dp " << grid.dp() << " needs " << grid.world_size();
  const int rank = world.rank();
  ProcessGroups groups;
  groups.coords = grid.coords(rank);
  for (GroupKind kind : kAllGroupKinds) {
    std::unique_ptr<Communicator> comm =
        world.split(grid.group_index(kind, rank), grid.rank_in_group(kind, rank));
    FATHOM_CHECK(comm != nullptr) << "split for the " << group_kind_name(kind)
                                  << " group returned no communicator";
    FATHOM_CHECK(comm->size() == grid.group_size(kind) &&
                 comm->rank() == grid.rank_in_group(kind, rank))
        << "the " << group_kind_name(kind) << " group of rank " << rank << " has rank "
        << comm->rank() << " of " << comm->size() << ", expected rank "
        << grid.rank_in_group(kind, rank) << " of " << grid.group_size(kind);
    switch (kind) {
      case GroupKind::kPipeline:
        groups.pp = std::move(comm);
        break;
      case GroupKind::kData:
        groups.dp = std::move(comm);
        break;
      case GroupKind::kExpert:
        groups.ep = std::move(comm);
        break;
      case GroupKind::kExpertData:
        groups.edp = std::move(comm);
        break;
    }
  }
  return groups;
}

}  // namespace fathom::parallel
