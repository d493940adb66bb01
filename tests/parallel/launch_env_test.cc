// Tests of launcher detection (parallel/launch_env.h) on fake environments:
// - each launcher's variables give rank, size, local rank and local size (Open MPI, Slurm srun
//   with the tasks-per-node list, MPICH/Intel PMI, PMIx without a size, manual FATHOM_*);
// - precedence: mpirun inside a Slurm allocation is Open MPI; a Slurm batch script (no step id)
//   is a single process whatever SLURM_NTASKS says; no variables: rank 0 of 1;
// - errors name the variables: non-integers, rank >= size, a rank without a size, local rank
//   >= local size, a malformed tasks-per-node list;
// - Slurm's compressed tasks-per-node lists;
// - the real environment of this run (mpirun, or a bare start: an MPI singleton) agrees with
//   MPI's world.
#include "parallel/launch_env.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "parallel/mpi_env.h"

namespace fathom::parallel {
namespace {

using ::testing::HasSubstr;

EnvLookup fake_env(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

TEST(LaunchEnvTest, NoLauncherIsASingleProcess) {
  const absl::StatusOr<LaunchEnv> env = detect_launch_env(fake_env({{"HOME", "/root"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kNone);
  EXPECT_EQ(env->rank, 0);
  EXPECT_EQ(env->world_size, 1);
  EXPECT_EQ(env->local_rank, 0);
  EXPECT_EQ(env->local_size, 1);
  EXPECT_EQ(describe(*env), "no launcher: rank 0 of 1");
}

TEST(LaunchEnvTest, OpenMpi) {
  const absl::StatusOr<LaunchEnv> env =
      detect_launch_env(fake_env({{"OMPI_COMM_WORLD_RANK", "5"},
                                  {"OMPI_COMM_WORLD_SIZE", "8"},
                                  {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                  {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
                                  {"PMIX_RANK", "5"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kOpenMpi);
  EXPECT_EQ(env->rank, 5);
  EXPECT_EQ(env->world_size, 8);
  EXPECT_EQ(env->local_rank, 1);
  EXPECT_EQ(env->local_size, 4);
  EXPECT_EQ(env->rank_variable, "OMPI_COMM_WORLD_RANK");
  EXPECT_EQ(describe(*env), "Open MPI: rank 5 of 8, local rank 1 of 4");
}

TEST(LaunchEnvTest, OpenMpiInsideASlurmAllocationIsOpenMpi) {
  const absl::StatusOr<LaunchEnv> env =
      detect_launch_env(fake_env({{"SLURM_JOB_ID", "42"},
                                  {"SLURM_NTASKS", "16"},
                                  {"SLURM_PROCID", "0"},
                                  {"SLURM_STEP_ID", "0"},
                                  {"OMPI_COMM_WORLD_RANK", "3"},
                                  {"OMPI_COMM_WORLD_SIZE", "4"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kOpenMpi);
  EXPECT_EQ(env->rank, 3);
  EXPECT_EQ(env->world_size, 4);
  EXPECT_FALSE(env->local_rank.has_value());
  EXPECT_FALSE(env->local_size.has_value());
}

TEST(LaunchEnvTest, SlurmStepWithTasksPerNode) {
  // 7 tasks on 3 nodes laid out 3, 3, 1; this task is the only one on the third node.
  const absl::StatusOr<LaunchEnv> env =
      detect_launch_env(fake_env({{"SLURM_JOB_ID", "42"},
                                  {"SLURM_STEP_ID", "1"},
                                  {"SLURM_PROCID", "6"},
                                  {"SLURM_NTASKS", "16"},  // the allocation; the step is smaller
                                  {"SLURM_STEP_NUM_TASKS", "7"},
                                  {"SLURM_LOCALID", "0"},
                                  {"SLURM_NODEID", "2"},
                                  {"SLURM_STEP_TASKS_PER_NODE", "3(x2),1"},
                                  {"SLURM_TASKS_PER_NODE", "8(x2)"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kSlurm);
  EXPECT_EQ(env->rank, 6);
  EXPECT_EQ(env->world_size, 7);
  EXPECT_EQ(env->local_rank, 0);
  EXPECT_EQ(env->local_size, 1);
  EXPECT_EQ(env->rank_variable, "SLURM_PROCID");
}

TEST(LaunchEnvTest, SlurmFallsBackToJobWideVariables) {
  const absl::StatusOr<LaunchEnv> env =
      detect_launch_env(fake_env({{"SLURM_STEPID", "0"},
                                  {"SLURM_PROCID", "2"},
                                  {"SLURM_NPROCS", "4"},
                                  {"SLURM_LOCALID", "0"},
                                  {"SLURM_NODEID", "1"},
                                  {"SLURM_TASKS_PER_NODE", "2(x2)"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kSlurm);
  EXPECT_EQ(env->rank, 2);
  EXPECT_EQ(env->world_size, 4);
  EXPECT_EQ(env->local_rank, 0);
  EXPECT_EQ(env->local_size, 2);
}

TEST(LaunchEnvTest, SlurmBatchScriptIsOneProcess) {
  const absl::StatusOr<LaunchEnv> env =
      detect_launch_env(fake_env({{"SLURM_JOB_ID", "42"},
                                  {"SLURM_NTASKS", "4"},
                                  {"SLURM_PROCID", "0"},
                                  {"SLURM_TASKS_PER_NODE", "4"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kNone);
  EXPECT_EQ(env->world_size, 1);
}

TEST(LaunchEnvTest, PmiFromHydra) {
  const absl::StatusOr<LaunchEnv> env = detect_launch_env(fake_env(
      {{"PMI_RANK", "3"}, {"PMI_SIZE", "4"}, {"MPI_LOCALRANKID", "1"}, {"MPI_LOCALNRANKS", "2"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kPmi);
  EXPECT_EQ(env->rank, 3);
  EXPECT_EQ(env->world_size, 4);
  EXPECT_EQ(env->local_rank, 1);
  EXPECT_EQ(env->local_size, 2);
}

TEST(LaunchEnvTest, PmixGivesOnlyTheRank) {
  const absl::StatusOr<LaunchEnv> env =
      detect_launch_env(fake_env({{"PMIX_RANK", "7"}, {"PMIX_NAMESPACE", "job.1"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kPmix);
  EXPECT_EQ(env->rank, 7);
  EXPECT_FALSE(env->world_size.has_value());
  EXPECT_EQ(describe(*env), "PMIx: rank 7 of ?");
}

TEST(LaunchEnvTest, ManualVariablesWhenNoLauncher) {
  const absl::StatusOr<LaunchEnv> env = detect_launch_env(
      fake_env({{"FATHOM_RANK", "1"}, {"FATHOM_WORLD_SIZE", "2"}, {"FATHOM_LOCAL_RANK", "1"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kManual);
  EXPECT_EQ(env->rank, 1);
  EXPECT_EQ(env->world_size, 2);
  EXPECT_EQ(env->local_rank, 1);
  EXPECT_FALSE(env->local_size.has_value());
}

TEST(LaunchEnvTest, ErrorsNameTheVariables) {
  auto message = [](std::map<std::string, std::string> vars) {
    const absl::StatusOr<LaunchEnv> env = detect_launch_env(fake_env(std::move(vars)));
    EXPECT_FALSE(env.ok());
    return env.ok() ? std::string() : std::string(env.status().message());
  };
  EXPECT_EQ(message({{"OMPI_COMM_WORLD_RANK", "x"}, {"OMPI_COMM_WORLD_SIZE", "4"}}),
            "OMPI_COMM_WORLD_RANK: expected a non-negative integer, got 'x'");
  EXPECT_EQ(message({{"OMPI_COMM_WORLD_RANK", "-1"}, {"OMPI_COMM_WORLD_SIZE", "4"}}),
            "OMPI_COMM_WORLD_RANK: expected a non-negative integer, got '-1'");
  EXPECT_THAT(message({{"OMPI_COMM_WORLD_RANK", "4"}, {"OMPI_COMM_WORLD_SIZE", "4"}}),
              HasSubstr("OMPI_COMM_WORLD_RANK=4 must be less than OMPI_COMM_WORLD_SIZE=4"));
  EXPECT_THAT(message({{"PMI_RANK", "1"}}), HasSubstr("PMI_RANK is set ('1') but PMI_SIZE is not"));
  EXPECT_THAT(message({{"FATHOM_WORLD_SIZE", "2"}}),
              HasSubstr("FATHOM_WORLD_SIZE is set ('2') but FATHOM_RANK is not"));
  EXPECT_THAT(message({{"PMI_RANK", "1"},
                       {"PMI_SIZE", "4"},
                       {"MPI_LOCALRANKID", "2"},
                       {"MPI_LOCALNRANKS", "2"}}),
              HasSubstr("MPI_LOCALRANKID=2 must be less than MPI_LOCALNRANKS=2"));
  EXPECT_THAT(message({{"SLURM_STEP_ID", "0"},
                       {"SLURM_PROCID", "0"},
                       {"SLURM_STEP_NUM_TASKS", "2"},
                       {"SLURM_NODEID", "0"},
                       {"SLURM_STEP_TASKS_PER_NODE", "2(3)"}}),
              HasSubstr("SLURM_STEP_TASKS_PER_NODE with SLURM_NODEID=0: malformed"));
}

TEST(LaunchEnvTest, SlurmTasksPerNodeLists) {
  EXPECT_EQ(*slurm_tasks_on_node("4", 0), 4);
  EXPECT_EQ(*slurm_tasks_on_node("2(x3),1", 0), 2);
  EXPECT_EQ(*slurm_tasks_on_node("2(x3),1", 2), 2);
  EXPECT_EQ(*slurm_tasks_on_node("2(x3),1", 3), 1);
  EXPECT_EQ(*slurm_tasks_on_node("1,5(x2)", 2), 5);
  EXPECT_FALSE(slurm_tasks_on_node("2(x3),1", 4).ok());
  EXPECT_FALSE(slurm_tasks_on_node("", 0).ok());
  EXPECT_FALSE(slurm_tasks_on_node("2(x0)", 0).ok());
  EXPECT_FALSE(slurm_tasks_on_node("2(x3", 0).ok());
  EXPECT_FALSE(slurm_tasks_on_node("a", 0).ok());
}

// The environment this test binary runs in must agree with MPI: under mpirun, Open MPI's
// variables; started bare, Open MPI's singleton init leaves only PMIX_RANK (no size).
TEST(LaunchEnvTest, RealEnvironmentAgreesWithMpi) {
  const absl::StatusOr<LaunchEnv> env = detect_launch_env();
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->rank, world_rank()) << describe(*env);
  if (env->world_size.has_value()) {
    EXPECT_EQ(*env->world_size, world_size()) << describe(*env);
  } else {
    EXPECT_EQ(env->launcher, Launcher::kPmix) << describe(*env);
  }
  if (env->launcher == Launcher::kOpenMpi) {
    // All ranks of a test run share this machine.
    EXPECT_EQ(env->local_rank, world_rank());
    EXPECT_EQ(env->local_size, world_size());
  }
}

}  // namespace
}  // namespace fathom::parallel
