// Fault handling across ranks (DESIGN.md decision 8): when one rank fails, every rank stops within
// seconds with a message that names the failing rank, and nothing waits forever.
//
// Three pieces:
//   run_rank_main()  wraps a rank's main: names the rank in every error (set_error_context), turns
//                    an uncaught exception on any rank into "[rank N] fatal: <message>" on stderr
//                    and MPI_Abort(MPI_COMM_WORLD, 1), which makes the launcher stop all ranks.
//   the watchdog     a thread that aborts all ranks when a registered phase ("collective
//                    all_reduce", "step 12") runs past its timeout: a rank stuck in a collective
//                    whose peer died without MPI noticing, or in a deadlock, is caught too.
//                    Default timeout 300 s, or FATHOM_WATCHDOG_SECONDS; 0 disables it.
//   abort hooks      run just before the abort, e.g. ncclCommAbort, so that GPU collectives in
//                    flight do not keep the process alive.
// And rank-0 logging: rank0_printf() prints on rank 0 only; rank_eprintf() on every rank with a
// "[rank N] " prefix.
//
// Usage, in a rank's main after MPI is initialised:
//   return run_rank_main([&] { ...; return 0; });
//   ...
//   for (int step = 0; ...) { WatchdogPhase phase(absl::StrCat("step ", step)); ... }
//
// Aborting ends the process (MPI_Abort, or _Exit(1) when MPI is not running): this is the one
// place in the library that ends a process, because a rank that has failed must not leave its
// peers waiting in a collective.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/launch_env.h"

namespace fathom::parallel {

inline constexpr double kDefaultWatchdogSeconds = 300.0;
// How long the abort hooks may run before the abort goes ahead without them.
inline constexpr double kAbortHookSeconds = 10.0;

struct RankMainOptions {
  // This rank in messages; -1: the MPI_COMM_WORLD rank when MPI is initialised, else the launch
  // environment's (detect_launch_env), else 0.
  int rank = -1;
  // Timeout of the process watchdog's phases in seconds; 0 disables it; negative: from
  // FATHOM_WATCHDOG_SECONDS, else kDefaultWatchdogSeconds.
  double watchdog_seconds = -1;
};

// Runs `body` as this rank's main and returns its result. Before: set_error_context("rank N"),
// set_log_rank(N), the watchdog timeout, and a std::terminate handler that aborts all ranks (an
// exception escaping another thread). An exception escaping `body` aborts all ranks with
// "[rank N] fatal: <what()>" (a "[rank N] " prefix already in what() is not repeated), never
// returning. A bad FATHOM_WATCHDOG_SECONDS aborts the same way. A non-zero return is returned as
// is: return one only when every rank does (e.g. all found the same bad config); a failure on
// some ranks must throw, so that the others do not wait for them.
int run_rank_main(const std::function<int()>& body, const RankMainOptions& options = {});

// Stops every rank: prints "[rank N] fatal: <message>" to stderr (N: log_rank()), flushes stdio
// and runs the abort hooks (newest first, each in a try; at most kAbortHookSeconds in all), then
// MPI_Abort(MPI_COMM_WORLD, 1) when MPI is initialised and not finalised, else _Exit(1).
// Safe from any thread; when several threads call it, the first one's message is printed and the
// others wait for the process to end.
[[noreturn]] void abort_all_ranks(std::string_view message);

// "[rank 3] fatal: message"; a leading "[rank 3] " of `message` is dropped, and a rank < 0
// leaves the prefix out.
std::string fatal_message(int rank, std::string_view message);

// Abort hooks: called by abort_all_ranks() on the aborting thread, newest first. A hook must not
// block for long (ncclCommAbort is fine); exceptions from it are caught and printed. Returns an id
// for remove_abort_hook(). Thread-safe.
int64_t add_abort_hook(std::function<void()> hook);
// Removes a hook (e.g. when its communicator is destroyed); unknown ids are ignored.
void remove_abort_hook(int64_t id);
// The number of registered hooks.
size_t abort_hook_count();

// FATHOM_WATCHDOG_SECONDS through `env`: a number of seconds >= 0 (0 disables), or
// kDefaultWatchdogSeconds when unset. Errors: InvalidArgument naming the variable and value for
// anything else ("abc", "-1", "inf").
absl::StatusOr<double> watchdog_seconds_from_env(const EnvLookup& env = process_env());

// Watches phases of work and calls `on_timeout` (on its own thread) with a message when one runs
// past its timeout:
//   "watchdog: 'collective all_reduce' did not finish within 2 s (phases in progress, oldest
//    first: step 12 > collective all_reduce)"
// (the list only when more than one phase is in progress). The process watchdog passes it to
// abort_all_ranks(), which adds "[rank N] fatal: ". Each timed-out phase is reported once.
// Phases are registered with WatchdogPhase. All members are thread-safe. The thread starts with
// the first phase; the destructor stops it.
class Watchdog {
 public:
  using Clock = std::chrono::steady_clock;

  // default_seconds: the timeout of phases that do not give one; 0 disables them.
  // on_timeout: called with the message; when it returns, watching goes on.
  Watchdog(double default_seconds, std::function<void(const std::string&)> on_timeout);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  void set_default_seconds(double seconds);  // >= 0; applies to phases begun afterwards
  double default_seconds() const;

  // Registers a phase; timeout_seconds < 0: the default; 0 (or a default of 0): not watched, and
  // -1 is returned. Returns the id for end().
  int64_t begin(std::string name, double timeout_seconds = -1);
  void end(int64_t id);
  // The names of the phases in progress, oldest first.
  std::vector<std::string> active_phases() const;

 private:
  struct Phase {
    std::string name;
    double timeout_seconds;
    Clock::time_point deadline;
    bool reported = false;
  };
  void run();

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  double default_seconds_;
  std::function<void(const std::string&)> on_timeout_;
  std::map<int64_t, Phase> phases_;  // by id: ids grow, so this is oldest first
  int64_t next_id_ = 0;
  // When the thread wakes up next (max: only when notified); begin() notifies it only for an
  // earlier deadline.
  Clock::time_point next_wakeup_ = Clock::time_point::min();
  bool stop_ = false;
  std::thread thread_;
};

// The process watchdog, whose timeouts abort all ranks. Its default timeout is set by
// run_rank_main(); before that it is FATHOM_WATCHDOG_SECONDS (kDefaultWatchdogSeconds when unset
// or invalid). Never destroyed.
Watchdog& process_watchdog();

// Marks a phase of work for a watchdog, for the lifetime of this object:
//   WatchdogPhase phase("collective all_reduce");
// timeout_seconds < 0: the watchdog's default. The watchdog must outlive the phase.
class WatchdogPhase {
 public:
  explicit WatchdogPhase(std::string name, double timeout_seconds = -1,
                         Watchdog& watchdog = process_watchdog());
  ~WatchdogPhase();
  WatchdogPhase(const WatchdogPhase&) = delete;
  WatchdogPhase& operator=(const WatchdogPhase&) = delete;

 private:
  Watchdog& watchdog_;
  int64_t id_;
};

// The rank used by the log helpers and abort messages; set by run_rank_main(). Until it is set:
// the launch environment's rank (0 without a launcher or when it cannot be read).
void set_log_rank(int rank);
int log_rank();

// printf to stdout on rank 0 only, flushed; returns what printf returns (0 on other ranks).
int rank0_printf(const char* format, ...) __attribute__((format(printf, 1, 2)));
// "[rank N] " + printf to stderr on every rank, flushed.
int rank_eprintf(const char* format, ...) __attribute__((format(printf, 1, 2)));

}  // namespace fathom::parallel
