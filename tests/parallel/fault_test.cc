// In-process tests of the fault handling pieces (parallel/fault.h) that do not end the process;
// the aborts themselves (an exception on one rank, a stuck rank caught by the watchdog, the abort
// hooks) are tested end to end by tests/parallel/fault_main.cc under mpirun (ctest
// parallel.fault_*):
// - fatal_message(): the rank prefix, not repeated when the message already has it;
// - FATHOM_WATCHDOG_SECONDS: default, numbers, 0, and errors naming the variable;
// - a Watchdog reports a phase that runs past its timeout once, naming it and the phases around
//   it; phases that end in time, and disabled timeouts, are never reported;
// - abort hooks are added and removed;
// - rank0_printf prints on rank 0 only; rank_eprintf prefixes the rank;
// - run_rank_main() returns the body's result and names the rank in errors.
#include "parallel/fault.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kernels/check.h"
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

// Collects a Watchdog's reports.
class Reports {
 public:
  std::function<void(const std::string&)> callback() {
    return [this](const std::string& message) {
      std::lock_guard<std::mutex> lock(mutex_);
      messages_.push_back(message);
      cv_.notify_all();
    };
  }
  // Waits until at least n reports arrived (at most `limit`); returns all of them.
  std::vector<std::string> wait_for(size_t n, std::chrono::milliseconds limit) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait_for(lock, limit, [&] { return messages_.size() >= n; });
    return messages_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::string> messages_;
};

TEST(FaultTest, FatalMessageNamesTheRankOnce) {
  EXPECT_EQ(fatal_message(3, "boom"), "[rank 3] fatal: boom");
  EXPECT_EQ(fatal_message(3, "[rank 3] x.cc:1: check failed: a"),
            "[rank 3] fatal: x.cc:1: check failed: a");
  EXPECT_EQ(fatal_message(1, "[rank 3] elsewhere"), "[rank 1] fatal: [rank 3] elsewhere");
  EXPECT_EQ(fatal_message(-1, "boom"), "fatal: boom");
}

TEST(FaultTest, WatchdogSecondsFromTheEnvironment) {
  EXPECT_EQ(*watchdog_seconds_from_env(fake_env({})), kDefaultWatchdogSeconds);
  EXPECT_EQ(*watchdog_seconds_from_env(fake_env({{"FATHOM_WATCHDOG_SECONDS", "2"}})), 2.0);
  EXPECT_EQ(*watchdog_seconds_from_env(fake_env({{"FATHOM_WATCHDOG_SECONDS", "0.5"}})), 0.5);
  EXPECT_EQ(*watchdog_seconds_from_env(fake_env({{"FATHOM_WATCHDOG_SECONDS", "0"}})), 0.0);
  for (const char* bad : {"abc", "-1", "inf", "nan", ""}) {
    const absl::StatusOr<double> seconds =
        watchdog_seconds_from_env(fake_env({{"FATHOM_WATCHDOG_SECONDS", bad}}));
    ASSERT_FALSE(seconds.ok()) << "'" << bad << "'";
    EXPECT_THAT(std::string(seconds.status().message()),
                HasSubstr(std::string("FATHOM_WATCHDOG_SECONDS: expected a number of seconds >= 0 "
                                      "(0 disables the watchdog), got '") +
                          bad + "'"));
  }
}

TEST(FaultTest, WatchdogReportsAPhasePastItsTimeoutOnce) {
  Reports reports;
  Watchdog watchdog(30.0, reports.callback());
  {
    WatchdogPhase step("step 12", -1, watchdog);
    WatchdogPhase collective("collective all_reduce", 0.1, watchdog);
    EXPECT_EQ(watchdog.active_phases(),
              (std::vector<std::string>{"step 12", "collective all_reduce"}));
    const std::vector<std::string> got = reports.wait_for(1, std::chrono::seconds(20));
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0],
              "watchdog: 'collective all_reduce' did not finish within 0.1 s (phases in "
              "progress, oldest first: step 12 > collective all_reduce)");
    // Still stuck: not reported again.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_EQ(reports.wait_for(2, std::chrono::milliseconds(0)).size(), 1u);
  }
  EXPECT_TRUE(watchdog.active_phases().empty());
}

TEST(FaultTest, WatchdogIgnoresPhasesThatEndInTimeAndDisabledTimeouts) {
  Reports reports;
  Watchdog watchdog(2.0, reports.callback());  // long enough for a loaded machine
  for (int i = 0; i < 3; ++i) {
    WatchdogPhase phase("quick " + std::to_string(i), -1, watchdog);
  }
  {
    WatchdogPhase disabled("unwatched", 0, watchdog);
    EXPECT_TRUE(watchdog.active_phases().empty());
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
  }
  watchdog.set_default_seconds(0);
  EXPECT_EQ(watchdog.default_seconds(), 0.0);
  {
    WatchdogPhase off("default off", -1, watchdog);
    EXPECT_TRUE(watchdog.active_phases().empty());
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  EXPECT_TRUE(reports.wait_for(1, std::chrono::milliseconds(0)).empty());
  // A phase of its own timeout is still watched, and only that phase is named.
  {
    WatchdogPhase slow("slow", 0.05, watchdog);
    const std::vector<std::string> got = reports.wait_for(1, std::chrono::seconds(20));
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0], "watchdog: 'slow' did not finish within 0.05 s");
  }
}

TEST(FaultTest, AbortHooksAreAddedAndRemoved) {
  const size_t before = abort_hook_count();
  const int64_t a = add_abort_hook([] {});
  const int64_t b = add_abort_hook([] {});
  EXPECT_NE(a, b);
  EXPECT_EQ(abort_hook_count(), before + 2);
  remove_abort_hook(a);
  remove_abort_hook(a);  // unknown now: ignored
  EXPECT_EQ(abort_hook_count(), before + 1);
  remove_abort_hook(b);
  EXPECT_EQ(abort_hook_count(), before);
  EXPECT_THROW(add_abort_hook(nullptr), Error);
}

TEST(FaultTest, Rank0PrintfPrintsOnRankZeroOnly) {
  const int saved = log_rank();
  set_log_rank(0);
  testing::internal::CaptureStdout();
  EXPECT_EQ(rank0_printf("loss %.2f\n", 1.5), 10);
  EXPECT_EQ(testing::internal::GetCapturedStdout(), "loss 1.50\n");
  set_log_rank(2);
  testing::internal::CaptureStdout();
  EXPECT_EQ(rank0_printf("loss %.2f\n", 1.5), 0);
  EXPECT_EQ(testing::internal::GetCapturedStdout(), "");
  testing::internal::CaptureStderr();
  rank_eprintf("slow step %d\n", 7);
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "[rank 2] slow step 7\n");
  set_log_rank(saved);
}

TEST(FaultTest, RunRankMainReturnsTheResultAndNamesTheRank) {
  const int rank = world_rank();
  const double saved_seconds = process_watchdog().default_seconds();
  RankMainOptions options;
  options.rank = rank;
  options.watchdog_seconds = 123;
  std::string error;
  const int result = run_rank_main(
      [&] {
        try {
          FATHOM_CHECK(1 + 1 == 3) << "arithmetic";
        } catch (const Error& e) {
          error = e.what();
        }
        return 7;
      },
      options);
  EXPECT_EQ(result, 7);
  EXPECT_EQ(error_context(), "rank " + std::to_string(rank));
  EXPECT_THAT(error, HasSubstr("[rank " + std::to_string(rank) + "] "));
  EXPECT_THAT(error, HasSubstr("arithmetic"));
  EXPECT_EQ(log_rank(), rank);
  EXPECT_EQ(process_watchdog().default_seconds(), 123.0);
  process_watchdog().set_default_seconds(saved_seconds);
}

}  // namespace
}  // namespace fathom::parallel
