// Rank topology: how the world of ranks is cut into pipeline, data, expert and expert-data
// parallel groups (DESIGN.md decision 3, SPEC.md section 2), and the `parallel:` YAML section
// that sets it.
//
//   parallel:
//     pp: 2   # pipeline stages
//     dp: 4   # data-parallel replicas of each stage
//     ep: 2   # expert-parallel ranks; the EP groups lie inside the DP dimension
//     schedule: dualpipe   # pipeline schedule with pp > 1: 1f1b | zb1p | dualpipe | dualpipev
//     fb_overlap: true     # run overlapped forward+backward pairs concurrently
//
// world = PP x DP. Inside each DP group of DP ranks, consecutive blocks of EP ranks form the
// expert-parallel groups (they split the routed experts between them), and the ranks that hold the
// same experts form the expert-data-parallel groups of EDP = DP / EP ranks (expert gradients are
// reduced over these only), as in DeepSeek-V3.
//
// Rank order (pp outermost, ep innermost):
//   rank     = pp_rank * DP + dp_rank
//   dp_rank  = edp_rank * EP + ep_rank
// Example, pp 2 x dp 4 with ep 2 (8 ranks):
//   pp groups  {0,4} {1,5} {2,6} {3,7}      dp groups  {0,1,2,3} {4,5,6,7}
//   ep groups  {0,1} {2,3} {4,5} {6,7}      edp groups {0,2} {1,3} {4,6} {5,7}
// Why this order: launchers number ranks node by node, so consecutive ranks share a node and its
// fastest links (NVLink). The expert all-to-all is the heaviest and most latency-bound traffic of
// a step (it sits on the critical path twice per MoE layer, forward and backward), so EP groups
// are kept on consecutive ranks, then the DP group's gradient reduce-scatter / all-gather. The
// pipeline sends one activation tensor per micro-batch between neighbouring stages, point to point,
// which tolerates the slower links between nodes: pp is outermost. (Megatron-LM orders its groups
// the same way: tensor/expert innermost, pipeline outermost.)
//
// Errors: a bad `parallel:` section or a layout that does not fit the world or the model is a user
// error (absl::Status, every problem at once, in the style of model/config.h). A RankGrid built
// from an invalid config, or a rank outside the world, is a programmer error (FATHOM_CHECK).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/yaml_util.h"
#include "parallel/communicator.h"
#include "parallel/pipeline/schedule.h"
#include "yaml-cpp/yaml.h"

namespace fathom::parallel {

struct ParallelConfig {
  int64_t pp = 1;  // pipeline stages, >= 1, at most model.n_layers
  int64_t dp = 1;  // data-parallel ranks per stage, >= 1
  int64_t ep = 1;  // expert-parallel ranks, >= 1, dividing dp and model.n_routed_experts
  // Send MoE dispatch activations as E4M3 with 1x128 scales (combine stays full precision), as
  // V3 does; only with ep > 1.
  bool fp8_dispatch = false;
  // Pipeline schedule (parallel/pipeline/schedule.h), used when pp > 1; its conditions on pp and
  // the micro-batches per step are checked where both are known (the run config).
  pipeline::ScheduleKind schedule = pipeline::ScheduleKind::k1F1B;
  // kForwardBackward halves run concurrently, so one's all-to-all hides behind the other's compute
  // (on the CPU only with ep > 1: without an all-to-all there is nothing to hide).
  bool fb_overlap = true;

  int64_t world_size() const { return pp * dp; }
  int64_t edp() const { return dp / ep; }  // expert-data-parallel ranks (valid configs only)

  bool operator==(const ParallelConfig&) const = default;
};

// The problems of `config` that can be seen without the world size and model: each of pp, dp, ep
// at least 1 and at most 2^20, and ep dividing dp. Keys are relative to the section ("ep"); empty
// for a problem that spans keys. Used by the parsers below.
std::vector<model::ConfigIssue> find_layout_issues(const ParallelConfig& config);

// Every problem of `config` for a world of `world_size` ranks (<= 0: not checked) and `model`
// (nullptr: not checked), keys relative to the section as above:
//   - everything find_layout_issues() reports;
//   - pp * dp == world_size ("pp 2 x dp 3 = 6 ranks, but the world has 4");
//   - ep <= model.n_routed_experts, else ep divides n_routed_experts (every EP rank holds the
//     same number of experts);
//   - pp <= model.n_layers (every stage holds at least one layer).
std::vector<model::ConfigIssue> find_parallel_issues(const ParallelConfig& config,
                                                     int64_t world_size,
                                                     const model::ModelConfig* model);

// OK, or InvalidArgument with one line per problem of find_parallel_issues(), each prefixed with
// the key path under `path`: "parallel: pp 2 x dp 3 = 6 ranks, but the world has 4",
// "parallel.ep: 3 does not divide dp 4 ...".
absl::Status validate(const ParallelConfig& config, int64_t world_size,
                      const model::ModelConfig& model, std::string_view path = "parallel");

// Reads the `parallel:` mapping into `*out` for a larger config parser: type errors, unknown keys
// (with a "did you mean"), duplicates, and find_parallel_issues(config, 0, model) go to `errors`
// with the lines of the keys they name. An undefined node (no section) leaves the defaults and
// records nothing. `model` may be nullptr (its checks are then left to validate()).
void read_parallel_config(const YAML::Node& node, const std::string& path,
                          const model::ModelConfig* model, model::ConfigErrors* errors,
                          ParallelConfig* out);

// The same as a standalone parser: the config (defaults 1/1/1 for an undefined node), or
// InvalidArgument with every problem, "source:line: parallel.ep: ..." (source "" for none).
absl::StatusOr<ParallelConfig> parse_parallel_config(const YAML::Node& node,
                                                     std::string_view path = "parallel",
                                                     std::string_view source = "",
                                                     const model::ModelConfig* model = nullptr);

// The four kinds of process groups of the grid.
enum class GroupKind : uint8_t { kPipeline, kData, kExpert, kExpertData };
inline constexpr std::array<GroupKind, 4> kAllGroupKinds = {
    GroupKind::kPipeline, GroupKind::kData, GroupKind::kExpert, GroupKind::kExpertData};
std::string_view group_kind_name(GroupKind kind);  // "pp", "dp", "ep", "edp"

// A rank's coordinates in the grid.
struct RankCoords {
  int pp = 0;   // pipeline stage, [0, PP)
  int dp = 0;   // data-parallel rank within the stage, [0, DP)
  int ep = 0;   // expert-parallel rank, [0, EP): which slice of the experts it holds
  int edp = 0;  // expert-data-parallel rank, [0, EDP)

  bool operator==(const RankCoords&) const = default;
};

// The layout of the world as pure arithmetic (no communication); see the rank order at the top.
class RankGrid {
 public:
  // Throws fathom::Error when find_layout_issues(config) is not empty or the world has more than
  // 2^31 - 1 ranks.
  explicit RankGrid(const ParallelConfig& config);

  int pp() const { return pp_; }
  int dp() const { return dp_; }
  int ep() const { return ep_; }
  int edp() const { return dp_ / ep_; }
  int world_size() const { return pp_ * dp_; }

  // rank in [0, world_size()), else throws.
  RankCoords coords(int rank) const;
  // The inverse of coords(): uses c.pp, c.dp when consistent with c.ep, c.edp; throws when a
  // coordinate is out of range or dp != edp * EP + ep.
  int rank_of(const RankCoords& c) const;

  // Ranks per group of `kind`: PP, DP, EP or EDP.
  int group_size(GroupKind kind) const;
  // How many groups of `kind` partition the world: world_size() / group_size(kind).
  int num_groups(GroupKind kind) const;
  // Which group of `kind` `rank` is in, in [0, num_groups(kind)); used as the split color.
  int group_index(GroupKind kind, int rank) const;
  // `rank`'s position in its group of `kind`: its pp, dp, ep or edp coordinate.
  int rank_in_group(GroupKind kind, int rank) const;
  // The world ranks of `rank`'s group of `kind`, ordered by rank_in_group (so element
  // rank_in_group(kind, rank) is `rank`); group_size(kind) entries.
  std::vector<int> group(GroupKind kind, int rank) const;

 private:
  int pp_;
  int dp_;
  int ep_;
};

// One communicator per group kind for this rank; member ranks and order as RankGrid::group(), so
// that communicator rank == RankGrid::rank_in_group().
struct ProcessGroups {
  RankCoords coords;
  std::unique_ptr<Communicator> pp;
  std::unique_ptr<Communicator> dp;
  std::unique_ptr<Communicator> ep;
  std::unique_ptr<Communicator> edp;

  Communicator& get(GroupKind kind);
};

// Splits `world` into this rank's pp, dp, ep and edp communicators (in that order; collective over
// `world`: every rank must call it with the same grid). Throws fathom::Error when world.size() !=
// grid.world_size() or a split does not give the expected size and rank.
ProcessGroups make_groups(Communicator& world, const RankGrid& grid);

}  // namespace fathom::parallel
