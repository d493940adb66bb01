#include "parallel/fault.h"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "kernels/check.h"

namespace fathom::parallel {
namespace {

// Longest timeout a phase can have; larger values are clamped so that deadlines do not overflow.
constexpr double kMaxWatchdogSeconds = 1e8;

std::atomic<int> g_log_rank{-1};

struct AbortHooks {
  std::mutex mutex;
  std::map<int64_t, std::function<void()>> hooks;  // by id: newest last
  int64_t next_id = 0;
};

AbortHooks& abort_hooks() {
  static AbortHooks* hooks = new AbortHooks();
  return *hooks;
}

// Writes all of `text` to stderr with write(2): no stdio lock, so a thread blocked in printf
// cannot hold it up.
void write_stderr(const std::string& text) {
  const char* data = text.data();
  size_t left = text.size();
  while (left > 0) {
    const ssize_t n = ::write(STDERR_FILENO, data, left);
    if (n <= 0) return;
    data += n;
    left -= static_cast<size_t>(n);
  }
}

// Flushes stdio and runs the abort hooks on a helper thread, waiting at most kAbortHookSeconds:
// a hook (or a flush into a full pipe) that blocks must not stop the abort.
void run_abort_hooks_with_limit() {
  std::vector<std::function<void()>> hooks;
  {
    AbortHooks& registry = abort_hooks();
    std::lock_guard<std::mutex> lock(registry.mutex);
    for (auto it = registry.hooks.rbegin(); it != registry.hooks.rend(); ++it) {
      hooks.push_back(it->second);
    }
  }
  struct Done {
    std::mutex mutex;
    std::condition_variable cv;
    bool done = false;
  };
  auto done = std::make_shared<Done>();
  std::thread helper([hooks = std::move(hooks), done] {
    std::fflush(nullptr);
    for (const std::function<void()>& hook : hooks) {
      try {
        hook();
      } catch (const std::exception& e) {
        write_stderr(absl::StrCat("abort hook failed: ", e.what(), "\n"));
      } catch (...) {
        write_stderr("abort hook failed with an unknown exception\n");
      }
    }
    std::lock_guard<std::mutex> lock(done->mutex);
    done->done = true;
    done->cv.notify_all();
  });
  std::unique_lock<std::mutex> lock(done->mutex);
  const bool finished = done->cv.wait_for(lock, std::chrono::duration<double>(kAbortHookSeconds),
                                          [&] { return done->done; });
  lock.unlock();
  if (finished) {
    helper.join();
  } else {
    write_stderr(absl::StrCat("abort hooks did not finish within ", kAbortHookSeconds,
                              " s; aborting without them\n"));
    helper.detach();
  }
}

void terminate_handler() {
  std::string what = "std::terminate called";
  if (std::exception_ptr e = std::current_exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      what = absl::StrCat("uncaught exception: ", x.what());
    } catch (...) {
      what = "uncaught exception of unknown type";
    }
  }
  abort_all_ranks(what);
}

int mpi_world_rank_or(int fallback) {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return fallback;
  int rank = 0;
  if (MPI_Comm_rank(MPI_COMM_WORLD, &rank) != MPI_SUCCESS) return fallback;
  return rank;
}

std::string format_seconds(double seconds) { return absl::StrFormat("%g s", seconds); }

}  // namespace

std::string fatal_message(int rank, std::string_view message_in) {
  absl::string_view message(message_in.data(), message_in.size());
  if (rank < 0) return absl::StrCat("fatal: ", message);
  const std::string prefix = absl::StrCat("[rank ", rank, "] ");
  absl::ConsumePrefix(&message, prefix);
  return absl::StrCat(prefix, "fatal: ", message);
}

[[noreturn]] void abort_all_ranks(std::string_view message) {
  static std::atomic<bool> aborting{false};
  if (aborting.exchange(true)) {
    // Another thread is aborting; it ends the process.
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  write_stderr(fatal_message(log_rank(), message) + "\n");
  run_abort_hooks_with_limit();
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);
}

int64_t add_abort_hook(std::function<void()> hook) {
  FATHOM_CHECK(hook != nullptr) << "add_abort_hook: empty hook";
  AbortHooks& registry = abort_hooks();
  std::lock_guard<std::mutex> lock(registry.mutex);
  const int64_t id = registry.next_id++;
  registry.hooks.emplace(id, std::move(hook));
  return id;
}

void remove_abort_hook(int64_t id) {
  AbortHooks& registry = abort_hooks();
  std::lock_guard<std::mutex> lock(registry.mutex);
  registry.hooks.erase(id);
}

size_t abort_hook_count() {
  AbortHooks& registry = abort_hooks();
  std::lock_guard<std::mutex> lock(registry.mutex);
  return registry.hooks.size();
}

absl::StatusOr<double> watchdog_seconds_from_env(const EnvLookup& env) {
  const std::optional<std::string> value = env("FATHOM_WATCHDOG_SECONDS");
  if (!value.has_value()) return kDefaultWatchdogSeconds;
  double seconds = 0;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(*value), &seconds) || !std::isfinite(seconds) ||
      seconds < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("FATHOM_WATCHDOG_SECONDS: expected a number of seconds >= 0 (0 disables the "
                     "watchdog), got '",
                     *value, "'"));
  }
  return seconds;
}

Watchdog::Watchdog(double default_seconds, std::function<void(const std::string&)> on_timeout)
    : default_seconds_(default_seconds), on_timeout_(std::move(on_timeout)) {
  FATHOM_CHECK(default_seconds >= 0) << "watchdog timeout must be >= 0, got " << default_seconds;
  FATHOM_CHECK(on_timeout_ != nullptr) << "Watchdog needs an on_timeout callback";
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::set_default_seconds(double seconds) {
  FATHOM_CHECK(seconds >= 0 && !std::isnan(seconds))
      << "watchdog timeout must be >= 0, got " << seconds;
  std::lock_guard<std::mutex> lock(mutex_);
  default_seconds_ = seconds;
}

double Watchdog::default_seconds() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return default_seconds_;
}

int64_t Watchdog::begin(std::string name, double timeout_seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  const double seconds =
      std::min(timeout_seconds < 0 ? default_seconds_ : timeout_seconds, kMaxWatchdogSeconds);
  if (!(seconds > 0)) return -1;
  const int64_t id = next_id_++;
  Phase phase;
  phase.name = std::move(name);
  phase.timeout_seconds = seconds;
  phase.deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(seconds));
  const Clock::time_point deadline = phase.deadline;
  phases_.emplace(id, std::move(phase));
  if (!thread_.joinable()) {
    thread_ = std::thread([this] { run(); });
  } else if (deadline < next_wakeup_) {
    // Phases usually end before the ones around them, so this is rare: most phases cost no
    // wake-up of the thread.
    wake_.notify_all();
  }
  return id;
}

void Watchdog::end(int64_t id) {
  if (id < 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  phases_.erase(id);
}

std::vector<std::string> Watchdog::active_phases() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::string> names;
  for (const auto& [id, phase] : phases_) names.push_back(phase.name);
  return names;
}

void Watchdog::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    auto due = phases_.end();
    for (auto it = phases_.begin(); it != phases_.end(); ++it) {
      if (!it->second.reported &&
          (due == phases_.end() || it->second.deadline < due->second.deadline)) {
        due = it;
      }
    }
    if (due == phases_.end()) {
      next_wakeup_ = Clock::time_point::max();
      wake_.wait(lock);
      continue;
    }
    if (Clock::now() < due->second.deadline) {
      next_wakeup_ = due->second.deadline;
      wake_.wait_until(lock, next_wakeup_);
      continue;
    }
    due->second.reported = true;
    std::string message = absl::StrCat("watchdog: '", due->second.name, "' did not finish within ",
                                       format_seconds(due->second.timeout_seconds));
    if (phases_.size() > 1) {
      std::vector<std::string> names;
      for (const auto& [id, phase] : phases_) names.push_back(phase.name);
      absl::StrAppend(&message, " (phases in progress, oldest first: ", absl::StrJoin(names, " > "),
                      ")");
    }
    lock.unlock();
    on_timeout_(message);
    lock.lock();
  }
}

Watchdog& process_watchdog() {
  static Watchdog* watchdog = [] {
    const absl::StatusOr<double> seconds = watchdog_seconds_from_env();
    return new Watchdog(seconds.ok() ? *seconds : kDefaultWatchdogSeconds,
                        [](const std::string& message) { abort_all_ranks(message); });
  }();
  return *watchdog;
}

WatchdogPhase::WatchdogPhase(std::string name, double timeout_seconds, Watchdog& watchdog)
    : watchdog_(watchdog), id_(watchdog.begin(std::move(name), timeout_seconds)) {}

WatchdogPhase::~WatchdogPhase() { watchdog_.end(id_); }

int run_rank_main(const std::function<int()>& body, const RankMainOptions& options) {
  int rank = options.rank;
  if (rank < 0) {
    const absl::StatusOr<LaunchEnv> launch = detect_launch_env();
    rank = mpi_world_rank_or(launch.ok() ? launch->rank : 0);
  }
  set_error_context(absl::StrCat("rank ", rank));
  set_log_rank(rank);
  std::set_terminate(terminate_handler);
  try {
    double seconds = options.watchdog_seconds;
    if (seconds < 0) {
      const absl::StatusOr<double> from_env = watchdog_seconds_from_env();
      if (!from_env.ok()) abort_all_ranks(std::string(from_env.status().message()));
      seconds = *from_env;
    }
    process_watchdog().set_default_seconds(seconds);
    return body();
  } catch (const std::exception& e) {
    abort_all_ranks(e.what());
  } catch (...) {
    abort_all_ranks("exception of unknown type");
  }
}

void set_log_rank(int rank) { g_log_rank.store(rank); }

int log_rank() {
  int rank = g_log_rank.load();
  if (rank >= 0) return rank;
  const absl::StatusOr<LaunchEnv> launch = detect_launch_env();
  rank = launch.ok() ? launch->rank : 0;
  int expected = -1;
  g_log_rank.compare_exchange_strong(expected, rank);
  return g_log_rank.load();
}

int rank0_printf(const char* format, ...) {
  if (log_rank() != 0) return 0;
  va_list args;
  va_start(args, format);
  const int n = std::vprintf(format, args);
  va_end(args);
  std::fflush(stdout);
  return n;
}

int rank_eprintf(const char* format, ...) {
  va_list args;
  va_start(args, format);
  va_list copy;
  va_copy(copy, args);
  const int size = std::vsnprintf(nullptr, 0, format, copy);
  va_end(copy);
  std::string text(size > 0 ? static_cast<size_t>(size) : 0, '\0');
  if (size > 0) std::vsnprintf(text.data(), text.size() + 1, format, args);
  va_end(args);
  const int n = std::fprintf(stderr, "[rank %d] %s", log_rank(), text.c_str());
  std::fflush(stderr);
  return n;
}

}  // namespace fathom::parallel
