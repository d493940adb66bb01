// A small MPI program that fails on purpose, for the ctest fault tests (parallel/fault.h): run it
// under mpirun and check that every rank exits non-zero within seconds and that the output names
// the failing rank.
//
//   fault_main throw   every rank runs steps of an all_reduce over the world; in step 2, rank 1
//                      (rank 0 in a world of one) throws instead, while the others already wait
//                      in that step's all_reduce. Expected on stderr:
//                        [rank 1] abort hook ran
//                        [rank 1] fatal: ... injected failure in step 2
//   fault_main thread  as throw, but the exception escapes a worker thread of rank 1
//   (std::terminate
//                      goes through run_rank_main's handler):
//                        [rank 1] fatal: uncaught exception: ... injected failure in a thread
//   fault_main hang    in step 1, rank 1 sleeps inside its "step 1" phase while the others wait in
//                      a barrier; with FATHOM_WATCHDOG_SECONDS=2 the watchdog aborts all ranks:
//                        [rank 1] fatal: watchdog: 'step 1' did not finish within 2 s
//                      The other ranks' phases get a 60 s timeout, so that the report comes from
//                      the stuck rank and not from a peer waiting for it.
// Exit status: non-zero (MPI_Abort) in every mode when fault handling works; 0 means it did not;
// 2 for a bad command line.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/check.h"
#include "kernels/tensor.h"
#include "parallel/communicator.h"
#include "parallel/fault.h"
#include "parallel/mpi_env.h"

namespace fathom::parallel {
namespace {

constexpr int kSteps = 4;

int run_throw(Communicator& world, int failing_rank) {
  add_abort_hook([rank = world.rank()] {
    const std::string line = absl::StrCat("[rank ", rank, "] abort hook ran\n");
    std::fputs(line.c_str(), stderr);
    std::fflush(stderr);
  });
  for (int step = 0; step < kSteps; ++step) {
    WatchdogPhase phase(absl::StrCat("step ", step));
    FATHOM_CHECK(!(world.rank() == failing_rank && step == 2))
        << "injected failure in step " << step;
    Tensor t = Tensor::from_vector(std::vector<float>{1.0f}, {1});
    {
      WatchdogPhase collective("collective all_reduce");
      all_reduce_sync(world, t);
    }
    FATHOM_CHECK_EQ(t.to_vector<float>()[0], static_cast<float>(world.size()));
  }
  rank0_printf("all %d steps finished: the injected failure did not stop the run\n", kSteps);
  return 0;
}

int run_thread(Communicator& world, int failing_rank) {
  for (int step = 0; step < kSteps; ++step) {
    WatchdogPhase phase(absl::StrCat("step ", step));
    if (world.rank() == failing_rank && step == 2) {
      std::thread worker([] { throw Error("injected failure in a thread"); });
      worker.join();
    }
    Tensor t = Tensor::from_vector(std::vector<float>{1.0f}, {1});
    all_reduce_sync(world, t);
  }
  rank0_printf("all %d steps finished: the failed thread did not stop the run\n", kSteps);
  return 0;
}

int run_hang(Communicator& world, int stuck_rank) {
  const bool stuck = world.rank() == stuck_rank;
  const double timeout = stuck ? -1 : 60.0;  // -1: the watchdog's default (FATHOM_WATCHDOG_SECONDS)
  for (int step = 0; step < kSteps; ++step) {
    WatchdogPhase phase(absl::StrCat("step ", step), timeout);
    if (stuck && step == 1) std::this_thread::sleep_for(std::chrono::seconds(120));
    WatchdogPhase collective("collective barrier", timeout);
    world.barrier();
  }
  rank0_printf("all %d steps finished: the watchdog did not fire\n", kSteps);
  return 0;
}

}  // namespace
}  // namespace fathom::parallel

int main(int argc, char** argv) {
  using namespace fathom::parallel;
  const std::string mode = argc == 2 ? argv[1] : "";
  if (mode != "throw" && mode != "thread" && mode != "hang") {
    std::fprintf(stderr,
                 "usage: fault_main throw|thread|hang  (under mpirun; see the file's comment)\n");
    return 2;
  }
  init_mpi(&argc, &argv);
  return run_rank_main([&] {
    Communicator& world = world_communicator();
    const int target = world.size() > 1 ? 1 : 0;
    const int status = mode == "throw"    ? run_throw(world, target)
                       : mode == "thread" ? run_thread(world, target)
                                          : run_hang(world, target);
    finalize_mpi();
    return status;
  });
}
