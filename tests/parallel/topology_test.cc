// Tests of the rank topology (parallel/topology.h):
// - the documented rank order, on the pp 2 x dp 4, ep 2 example of the header;
// - every layout of up to 8 ranks: coordinates round-trip, each kind of group partitions the
//   world (every rank in exactly one group of each kind, groups of the right size, members in
//   rank_in_group order, one group_index per group), pp groups share the data coordinates, ep and
//   edp groups nest inside the rank's dp group and cross it in exactly the rank;
// - the `parallel:` section: defaults, values, and every error at once with file:line (type
//   errors, unknown keys with a "did you mean", zero sizes, ep not dividing dp, model checks);
// - validate(): the world-size message, more EP ranks than experts, ep not dividing the experts,
//   more stages than layers, all reported together;
// - make_groups() over the world communicator, for every layout that fits the world size of the
//   run: each communicator has the grid's size and rank, and an all_reduce of a one-hot vector of
//   world ranks over it gives exactly the grid's members; a grid that does not fit the world
//   throws on every rank.
#include "parallel/topology.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "kernels/tensor.h"
#include "parallel/mpi_env.h"
#include "yaml-cpp/yaml.h"

namespace fathom::parallel {
namespace {

using ::testing::HasSubstr;

ParallelConfig layout(int64_t pp, int64_t dp, int64_t ep) {
  ParallelConfig config;
  config.pp = pp;
  config.dp = dp;
  config.ep = ep;
  return config;
}

// Every (pp, dp, ep) with pp * dp == world and ep dividing dp.
std::vector<ParallelConfig> layouts_of(int world) {
  std::vector<ParallelConfig> out;
  for (int pp = 1; pp <= world; ++pp) {
    if (world % pp != 0) continue;
    const int dp = world / pp;
    for (int ep = 1; ep <= dp; ++ep) {
      if (dp % ep == 0) out.push_back(layout(pp, dp, ep));
    }
  }
  return out;
}

std::string name_of(const ParallelConfig& c) {
  return "pp " + std::to_string(c.pp) + " dp " + std::to_string(c.dp) + " ep " +
         std::to_string(c.ep);
}

model::ModelConfig small_model(int64_t experts, int64_t layers) {
  model::ModelConfig m;
  m.n_routed_experts = experts;
  m.n_activated_experts = 2;
  m.n_layers = layers;
  return m;
}

TEST(RankGridTest, DocumentedRankOrder) {
  const RankGrid grid(layout(2, 4, 2));
  EXPECT_EQ(grid.world_size(), 8);
  EXPECT_EQ(grid.edp(), 2);
  const RankCoords c5 = grid.coords(5);
  EXPECT_EQ(c5, (RankCoords{.pp = 1, .dp = 1, .ep = 1, .edp = 0}));
  const RankCoords c6 = grid.coords(6);
  EXPECT_EQ(c6, (RankCoords{.pp = 1, .dp = 2, .ep = 0, .edp = 1}));
  using V = std::vector<int>;
  EXPECT_EQ(grid.group(GroupKind::kPipeline, 5), (V{1, 5}));
  EXPECT_EQ(grid.group(GroupKind::kData, 5), (V{4, 5, 6, 7}));
  EXPECT_EQ(grid.group(GroupKind::kExpert, 5), (V{4, 5}));
  EXPECT_EQ(grid.group(GroupKind::kExpertData, 5), (V{5, 7}));
  EXPECT_EQ(grid.group(GroupKind::kPipeline, 2), (V{2, 6}));
  EXPECT_EQ(grid.group(GroupKind::kData, 2), (V{0, 1, 2, 3}));
  EXPECT_EQ(grid.group(GroupKind::kExpert, 2), (V{2, 3}));
  EXPECT_EQ(grid.group(GroupKind::kExpertData, 2), (V{0, 2}));
  EXPECT_EQ(grid.rank_of(c6), 6);
}

TEST(RankGridTest, EveryLayoutUpTo8RanksIsConsistent) {
  int layouts = 0;
  for (int world = 1; world <= 8; ++world) {
    for (const ParallelConfig& config : layouts_of(world)) {
      ++layouts;
      SCOPED_TRACE(name_of(config));
      const RankGrid grid(config);
      ASSERT_EQ(grid.world_size(), world);
      EXPECT_EQ(grid.edp() * grid.ep(), grid.dp());

      // Coordinates: in range, unique, and inverted by rank_of.
      std::set<std::vector<int>> seen;
      for (int r = 0; r < world; ++r) {
        const RankCoords c = grid.coords(r);
        EXPECT_TRUE(c.pp >= 0 && c.pp < grid.pp() && c.dp >= 0 && c.dp < grid.dp() && c.ep >= 0 &&
                    c.ep < grid.ep() && c.edp >= 0 && c.edp < grid.edp())
            << "rank " << r;
        EXPECT_EQ(c.dp, c.edp * grid.ep() + c.ep) << "rank " << r;
        EXPECT_EQ(grid.rank_of(c), r);
        seen.insert({c.pp, c.dp});
      }
      EXPECT_EQ(static_cast<int>(seen.size()), world);

      for (GroupKind kind : kAllGroupKinds) {
        SCOPED_TRACE(std::string(group_kind_name(kind)));
        const int size = grid.group_size(kind);
        EXPECT_EQ(grid.num_groups(kind) * size, world);
        // Which group each rank lands in, by the group's member list.
        std::map<std::vector<int>, int> index_of_group;
        std::vector<int> times_seen(world, 0);
        for (int r = 0; r < world; ++r) {
          const std::vector<int> members = grid.group(kind, r);
          ASSERT_EQ(static_cast<int>(members.size()), size) << "rank " << r;
          const int pos = grid.rank_in_group(kind, r);
          ASSERT_TRUE(pos >= 0 && pos < size);
          EXPECT_EQ(members[pos], r) << "rank " << r << " is not at its rank_in_group";
          EXPECT_EQ(std::set<int>(members.begin(), members.end()).size(), members.size());
          for (int i = 0; i < size; ++i) {
            const int m = members[i];
            ASSERT_TRUE(m >= 0 && m < world);
            // Every member sees the same group, in the same order, at its own position.
            EXPECT_EQ(grid.group(kind, m), members) << "member " << m << " of rank " << r;
            EXPECT_EQ(grid.rank_in_group(kind, m), i);
            EXPECT_EQ(grid.group_index(kind, m), grid.group_index(kind, r));
          }
          const int index = grid.group_index(kind, r);
          EXPECT_TRUE(index >= 0 && index < grid.num_groups(kind));
          auto [it, inserted] = index_of_group.emplace(members, index);
          if (inserted) {
            for (int m : members) ++times_seen[m];
          } else {
            EXPECT_EQ(it->second, index);
          }
        }
        // The distinct groups partition the world, one index each.
        EXPECT_EQ(static_cast<int>(index_of_group.size()), grid.num_groups(kind));
        std::set<int> indices;
        for (const auto& [members, index] : index_of_group) indices.insert(index);
        EXPECT_EQ(static_cast<int>(indices.size()), grid.num_groups(kind));
        for (int r = 0; r < world; ++r) EXPECT_EQ(times_seen[r], 1) << "rank " << r;
      }

      for (int r = 0; r < world; ++r) {
        const RankCoords c = grid.coords(r);
        const std::vector<int> dp = grid.group(GroupKind::kData, r);
        const std::set<int> dp_set(dp.begin(), dp.end());
        for (int m : dp) EXPECT_EQ(grid.coords(m).pp, c.pp);
        for (int m : grid.group(GroupKind::kPipeline, r)) {
          const RankCoords mc = grid.coords(m);
          EXPECT_TRUE(mc.dp == c.dp && mc.ep == c.ep && mc.edp == c.edp) << "pp member " << m;
        }
        const std::vector<int> ep = grid.group(GroupKind::kExpert, r);
        const std::vector<int> edp = grid.group(GroupKind::kExpertData, r);
        for (int m : ep) {
          EXPECT_TRUE(dp_set.count(m)) << "ep member " << m << " outside dp group of " << r;
          EXPECT_EQ(grid.coords(m).edp, c.edp);
        }
        for (int m : edp) {
          EXPECT_TRUE(dp_set.count(m)) << "edp member " << m << " outside dp group of " << r;
          EXPECT_EQ(grid.coords(m).ep, c.ep);
        }
        // The ep and edp groups cross in this rank only; together they span the dp group.
        std::vector<int> both;
        std::set_intersection(ep.begin(), ep.end(), edp.begin(), edp.end(),
                              std::back_inserter(both));
        EXPECT_EQ(both, std::vector<int>{r});
        // EP groups are consecutive ranks.
        for (size_t i = 1; i < ep.size(); ++i) EXPECT_EQ(ep[i], ep[i - 1] + 1);
      }
    }
  }
  EXPECT_EQ(layouts, 38);  // sum over worlds 1..8 of sum over pp | world of d(world / pp)
}

TEST(RankGridTest, RejectsBadLayoutsAndRanks) {
  EXPECT_THROW(RankGrid(layout(1, 4, 3)), Error);
  EXPECT_THROW(RankGrid(layout(0, 4, 1)), Error);
  const RankGrid grid(layout(2, 2, 1));
  EXPECT_THROW(grid.coords(4), Error);
  EXPECT_THROW(grid.coords(-1), Error);
  EXPECT_THROW(grid.rank_of(RankCoords{.pp = 0, .dp = 1, .ep = 0, .edp = 0}), Error);
  EXPECT_THROW(grid.rank_of(RankCoords{.pp = 2, .dp = 0, .ep = 0, .edp = 0}), Error);
}

TEST(ParallelConfigTest, DefaultsWhenTheSectionIsAbsent) {
  const YAML::Node root = YAML::Load("model: {}\n");
  const absl::StatusOr<ParallelConfig> config = parse_parallel_config(root["parallel"]);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(*config, layout(1, 1, 1));
}

TEST(ParallelConfigTest, ReadsValues) {
  const YAML::Node root = YAML::Load("parallel:\n  pp: 2\n  dp: 4\n  ep: 2\n");
  const model::ModelConfig model = small_model(8, 4);
  const absl::StatusOr<ParallelConfig> config =
      parse_parallel_config(root["parallel"], "parallel", "run.yaml", &model);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(*config, layout(2, 4, 2));
  EXPECT_EQ(config->world_size(), 8);
  EXPECT_EQ(config->edp(), 2);
}

TEST(ParallelConfigTest, ReportsEveryParseErrorWithItsLine) {
  const YAML::Node root = YAML::Load(
      "parallel:\n"    // 1
      "  pp: two\n"    // 2
      "  dp: 4\n"      // 3
      "  EP: 2\n"      // 4
      "  ep: [1]\n");  // 5
  const absl::StatusOr<ParallelConfig> config =
      parse_parallel_config(root["parallel"], "parallel", "run.yaml");
  ASSERT_FALSE(config.ok());
  const std::string message(config.status().message());
  EXPECT_THAT(message, HasSubstr("run.yaml:2: parallel.pp: expected an integer, got 'two'"));
  EXPECT_THAT(message, HasSubstr("run.yaml:4: parallel.EP: unknown key (did you mean 'ep'?)"));
  EXPECT_THAT(message, HasSubstr("run.yaml:5: parallel.ep: expected an integer, got a list"));
}

TEST(ParallelConfigTest, ReportsLayoutAndModelProblemsWithTheirLines) {
  const YAML::Node root = YAML::Load(
      "parallel:\n"  // 1
      "  pp: 6\n"    // 2
      "  dp: 0\n"    // 3
      "  ep: 3\n");  // 4
  const model::ModelConfig model = small_model(8, 4);
  const absl::StatusOr<ParallelConfig> config =
      parse_parallel_config(root["parallel"], "parallel", "run.yaml", &model);
  ASSERT_FALSE(config.ok());
  const std::string message(config.status().message());
  EXPECT_THAT(message,
              HasSubstr("run.yaml:2: parallel.pp: 6 pipeline ranks make 6 stages, but the model "
                        "has only 4 layers (model.n_layers)"));
  EXPECT_THAT(message, HasSubstr("run.yaml:3: parallel.dp: must be at least 1"));
  EXPECT_THAT(message, HasSubstr("run.yaml:4: parallel.ep: 3 does not divide "
                                 "model.n_routed_experts 8"));

  const YAML::Node uneven = YAML::Load("parallel: {dp: 4, ep: 3}\n");
  const absl::StatusOr<ParallelConfig> config2 =
      parse_parallel_config(uneven["parallel"], "parallel", "run.yaml");
  ASSERT_FALSE(config2.ok());
  EXPECT_THAT(std::string(config2.status().message()),
              HasSubstr("run.yaml:1: parallel.ep: 3 does not divide dp 4"));
}

TEST(ParallelConfigTest, ReadIntoALargerParserKeepsDefaultsOnError) {
  model::ConfigErrors errors("run.yaml");
  ParallelConfig config = layout(1, 2, 1);
  const YAML::Node root = YAML::Load("parallel: {pp: 0}\n");
  read_parallel_config(root["parallel"], "parallel", nullptr, &errors, &config);
  EXPECT_EQ(config, layout(1, 2, 1));
  ASSERT_EQ(errors.issues().size(), 1u);
  EXPECT_EQ(errors.issues()[0].key, "parallel.pp");
  EXPECT_EQ(errors.issues()[0].line, 1);
}

TEST(ValidateTest, WorldSizeMismatch) {
  const absl::Status status = validate(layout(2, 3, 1), 4, small_model(8, 4));
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.message(), "parallel: pp 2 x dp 3 = 6 ranks, but the world has 4");
}

TEST(ValidateTest, MoreExpertParallelRanksThanExperts) {
  const absl::Status status = validate(layout(1, 16, 16), 16, small_model(8, 4));
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.message(),
            "parallel.ep: 16 expert-parallel ranks, but the model has only 8 routed experts "
            "(model.n_routed_experts); every EP rank needs at least one");
}

TEST(ValidateTest, ReportsEveryProblemAtOnce) {
  // ep 3 divides neither dp 4 nor the 8 experts; 5 stages for 4 layers; 20 ranks for a world of 8.
  const absl::Status status = validate(layout(5, 4, 3), 8, small_model(8, 4));
  ASSERT_FALSE(status.ok());
  const std::string message(status.message());
  EXPECT_THAT(message, HasSubstr("parallel.ep: 3 does not divide dp 4"));
  EXPECT_THAT(message, HasSubstr("parallel: pp 5 x dp 4 = 20 ranks, but the world has 8"));
  EXPECT_THAT(message, HasSubstr("parallel.ep: 3 does not divide model.n_routed_experts 8"));
  EXPECT_THAT(message, HasSubstr("parallel.pp: 5 pipeline ranks make 5 stages, but the model has only 4"));
  EXPECT_EQ(std::count(message.begin(), message.end(), '\n'), 3) << message;
}

TEST(ValidateTest, AcceptsLayoutsThatFit) {
  EXPECT_TRUE(validate(layout(1, 1, 1), 1, small_model(8, 4)).ok());
  EXPECT_TRUE(validate(layout(2, 4, 4), 8, small_model(8, 4)).ok());
  EXPECT_TRUE(validate(layout(4, 2, 2), 8, small_model(2, 4)).ok());
}

// Sum over the group's communicator of a one-hot vector of world ranks: the group's members.
std::vector<int> members_by_all_reduce(Communicator& group, int world_rank, int world_size) {
  std::vector<int32_t> one_hot(world_size, 0);
  one_hot[world_rank] = 1;
  Tensor t = Tensor::from_vector(one_hot, {world_size});
  all_reduce_sync(group, t);
  std::vector<int> members;
  const std::vector<int32_t> sum = t.to_vector<int32_t>();
  for (int r = 0; r < world_size; ++r) {
    EXPECT_TRUE(sum[r] == 0 || sum[r] == 1) << "world rank " << r << " counted " << sum[r];
    if (sum[r] != 0) members.push_back(r);
  }
  return members;
}

TEST(MakeGroupsTest, CommunicatorsMatchTheGridForEveryLayoutOfTheWorld) {
  Communicator& world = world_communicator();
  const int rank = world.rank();
  for (const ParallelConfig& config : layouts_of(world.size())) {
    SCOPED_TRACE(name_of(config));
    const RankGrid grid(config);
    ProcessGroups groups = make_groups(world, grid);
    EXPECT_EQ(groups.coords, grid.coords(rank));
    for (GroupKind kind : kAllGroupKinds) {
      SCOPED_TRACE(std::string(group_kind_name(kind)));
      Communicator& comm = groups.get(kind);
      EXPECT_EQ(comm.size(), grid.group_size(kind));
      EXPECT_EQ(comm.rank(), grid.rank_in_group(kind, rank));
      // Members of the communicator, then their order: an all_gather of world ranks.
      std::vector<int> expected = grid.group(kind, rank);
      EXPECT_EQ(members_by_all_reduce(comm, rank, world.size()), [&] {
        std::vector<int> sorted = expected;
        std::sort(sorted.begin(), sorted.end());
        return sorted;
      }());
      Tensor mine = Tensor::from_vector(std::vector<int32_t>{rank}, {1});
      Tensor all = Tensor::empty({comm.size()}, DType::kI32);
      all_gather_sync(comm, mine, all);
      const std::vector<int32_t> order = all.to_vector<int32_t>();
      EXPECT_EQ(std::vector<int>(order.begin(), order.end()), expected);
    }
  }
}

TEST(MakeGroupsTest, GridThatDoesNotFitTheWorldThrowsOnEveryRank) {
  Communicator& world = world_communicator();
  const RankGrid grid(layout(1, world.size() + 1, 1));
  EXPECT_THROW(make_groups(world, grid), Error);
}

}  // namespace
}  // namespace fathom::parallel
