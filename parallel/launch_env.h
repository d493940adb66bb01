// Which launcher started this process, and this process's place in the job, read from the
// environment before MPI (or anything else) is initialised: to pick the GPU from the local rank,
// to name the rank in messages from the first line on, and to bootstrap NCCL without MPI.
//
// Launchers, in the order they are tried (the first whose variables are present wins):
//   Open MPI (mpirun)   OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE
//   Slurm (srun)        SLURM_PROCID, SLURM_STEP_NUM_TASKS (or SLURM_NTASKS / SLURM_NPROCS),
//                       SLURM_LOCALID, SLURM_STEP_TASKS_PER_NODE (or SLURM_TASKS_PER_NODE) with
//                       SLURM_NODEID; only inside a job step (SLURM_STEP_ID or SLURM_STEPID set):
//                       a batch script or salloc shell is one process, whatever SLURM_NTASKS says
//   PMI (MPICH Hydra, Intel MPI, srun --mpi=pmi2)  PMI_RANK, PMI_SIZE, MPI_LOCALRANKID,
//                       MPI_LOCALNRANKS
//   PMIx                PMIX_RANK (PMIx does not put the job size in the environment)
//   manual              FATHOM_RANK, FATHOM_WORLD_SIZE, FATHOM_LOCAL_RANK, FATHOM_LOCAL_SIZE,
//                       for processes started by hand or by a script
// Open MPI is tried first because mpirun inside a Slurm allocation leaves the allocation's SLURM_*
// variables in place; its own describe the processes it started.
// No launcher: a single process, rank 0 of 1.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace fathom::parallel {

enum class Launcher : uint8_t { kNone, kOpenMpi, kSlurm, kPmi, kPmix, kManual };
// "none", "Open MPI", "Slurm", "PMI", "PMIx", "manual (FATHOM_RANK)".
std::string_view launcher_name(Launcher launcher);

struct LaunchEnv {
  Launcher launcher = Launcher::kNone;
  int rank = 0;                   // in [0, world_size)
  std::optional<int> world_size;  // unset only when the launcher does not say (PMIx)
  std::optional<int> local_rank;  // rank among this job's processes on this node
  std::optional<int> local_size;  // this job's processes on this node
  // The variable the rank was read from ("OMPI_COMM_WORLD_RANK"); empty for kNone.
  std::string rank_variable;

  bool operator==(const LaunchEnv&) const = default;
};

// Looks up one environment variable: its value, or nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;

// The process environment (getenv).
EnvLookup process_env();

// Reads the launcher's variables through `env`. Values must be decimal integers with
// 0 <= rank < world_size, 0 <= local_rank < local_size <= world_size. Errors (InvalidArgument,
// naming the variables and values): a value that is not such an integer ("OMPI_COMM_WORLD_RANK:
// expected a non-negative integer, got 'x'"), ranks out of range, a launcher whose rank variable is
// set without its size or the reverse, and a malformed SLURM_STEP_TASKS_PER_NODE. A launcher's
// optional local variables that are missing leave local_rank / local_size unset.
absl::StatusOr<LaunchEnv> detect_launch_env(const EnvLookup& env = process_env());

// "Open MPI: rank 1 of 4, local rank 1 of 2", "no launcher: rank 0 of 1", "PMIx: rank 3 of ?".
std::string describe(const LaunchEnv& launch);

// Parses Slurm's compressed tasks-per-node list ("2(x3),1" = 2,2,2,1) and returns the count of
// node `node` (0-based); errors for a malformed list or a node past its end.
absl::StatusOr<int> slurm_tasks_on_node(std::string_view tasks_per_node, int node);

}  // namespace fathom::parallel
