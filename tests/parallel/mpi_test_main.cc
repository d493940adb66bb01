// gtest main of parallel_tests, run under mpirun at several world sizes (tests/CMakeLists.txt).
//
// - Initialises MPI through parallel/mpi_env.h and names the rank in every fathom::Error.
// - Rank 0 prints gtest's usual output; the other ranks print only their failures, prefixed with
//   "[rank N]", so that a failure on any rank is visible once.
// - The exit code is the same on every rank: non-zero when a test failed on any rank (the results
//   are all-reduced), so mpirun and ctest report the failure whichever rank saw it.
// - A watchdog aborts all ranks (MPI_Abort) when one test runs longer than
//   FATHOM_TEST_TIMEOUT_SECONDS (default 120): ranks whose collectives no longer match (one rank
//   threw half-way through a test) must not hang the run until ctest's timeout.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

#include "kernels/check.h"
#include "parallel/mpi_env.h"

namespace {

// Prints failed assertions and failed tests of a rank other than 0.
class RankFailurePrinter : public testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "unknown", result.line_number(),
                 result.message());
  }
  void OnTestEnd(const testing::TestInfo& info) override {
    if (info.result()->Failed()) {
      std::fprintf(stderr, "[rank %d] [  FAILED  ] %s.%s\n", rank_, info.test_suite_name(),
                   info.name());
    }
  }

 private:
  int rank_;
};

// Aborts every rank when the current test (or the final result exchange) runs too long.
class Watchdog : public testing::EmptyTestEventListener {
 public:
  Watchdog(int rank, double timeout_s) : rank_(rank), timeout_s_(timeout_s) {
    thread_ = std::thread([this] { run(); });
  }
  ~Watchdog() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void begin(std::string what) {
    std::lock_guard<std::mutex> lock(mutex_);
    what_ = std::move(what);
    start_ = std::chrono::steady_clock::now();
  }
  void end() {
    std::lock_guard<std::mutex> lock(mutex_);
    what_.clear();
  }
  void OnTestStart(const testing::TestInfo& info) override {
    begin(std::string(info.test_suite_name()) + "." + info.name());
  }
  void OnTestEnd(const testing::TestInfo&) override { end(); }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_) {
      cv_.wait_for(lock, std::chrono::milliseconds(200));
      if (what_.empty()) continue;
      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      if (elapsed > timeout_s_) {
        std::fprintf(stderr,
                     "[rank %d] %s has run for %.0f s (FATHOM_TEST_TIMEOUT_SECONDS=%.0f): a rank "
                     "failed or the ranks' collectives diverged; aborting all ranks\n",
                     rank_, what_.c_str(), elapsed, timeout_s_);
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 2);
      }
    }
  }

  int rank_;
  double timeout_s_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::thread thread_;
  std::string what_;
  std::chrono::steady_clock::time_point start_;
  bool stop_ = false;
};

}  // namespace

int main(int argc, char** argv) {
  fathom::parallel::init_mpi(&argc, &argv);
  testing::InitGoogleTest(&argc, argv);
  const int rank = fathom::parallel::world_rank();
  fathom::set_error_context("rank " + std::to_string(rank));

  double timeout_s = 120;
  if (const char* env = std::getenv("FATHOM_TEST_TIMEOUT_SECONDS")) timeout_s = std::atof(env);
  if (timeout_s <= 0) timeout_s = 120;

  testing::TestEventListeners& listeners = testing::UnitTest::GetInstance()->listeners();
  if (rank != 0) {
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(rank));
  }
  auto* watchdog = new Watchdog(rank, timeout_s);
  listeners.Append(watchdog);  // owned by gtest from here

  const int local_failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  watchdog->begin("the exchange of test results");
  int any_failed = local_failed;
  MPI_Allreduce(&local_failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  watchdog->end();
  if (rank == 0 && any_failed && !local_failed) {
    std::fprintf(stderr, "[rank 0] tests passed here but failed on another rank (see above)\n");
  }
  std::fflush(stdout);
  std::fflush(stderr);
  fathom::parallel::finalize_mpi();
  return any_failed;
}
