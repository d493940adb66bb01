// Verifiable reasoning tasks: a seeded generator and the rule-based checkers behind the rewards.
//
// Two kinds of problem, each with a completion "<think>...</think><answer>...</answer>":
//   arithmetic: "What is 347 * 29?"; the think block works the carries / partial products, and
//               the answer is "10063".
//   countdown:  reach a target with some given numbers and + - * / (each number at most once,
//               exact division only); the answer is an expression such as "(25 - 4) * 3".
//
// Determinism: generate() uses its own integer PRNG (splitmix64) and no std distributions, so a
// (kind, split, seed, count, options) gives the same tasks on every platform and compiler, and the
// first k tasks of a longer request equal a request for k.
//
// Held-out split: a problem belongs to the held-out split iff
// split_hash(canonical) % kHeldOutModulus == 0, where `canonical` is the problem's canonical form
// (commutative operands sorted; countdown numbers sorted). Membership depends on the problem only,
// never on the seed, so no held-out problem can appear in any train set.
//
// The verifiers never throw and never crash on malformed model output: bad input is just wrong.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace fathom::data {

enum class TaskKind { kArithmetic, kCountdown };
enum class Split { kTrain, kHeldOut };

// "arithmetic" / "countdown" and back; the parse error names the value and the accepted names.
std::string_view task_kind_name(TaskKind kind);
absl::StatusOr<TaskKind> parse_task_kind(std::string_view name);
// "train" / "held_out".
std::string_view split_name(Split split);

struct ArithmeticOptions {
  // Each operand's digit count is drawn uniformly from [min_digits, max_digits]; 1 <= min <= max
  // <= 9 (so every product fits in int64).
  int min_digits = 1;
  int max_digits = 3;
  // The operators to draw from, uniformly: a non-empty string of distinct characters from "+-*".
  std::string ops = "+-*";
  // When false, subtraction puts the larger operand first so results are never negative.
  bool allow_negative = false;
};

struct CountdownOptions {
  // How many numbers are given: uniform in [min_numbers, max_numbers], 2 <= min <= max <= 6.
  int min_numbers = 3;
  int max_numbers = 4;
  // Each number is uniform in [1, max_value]; 1 <= max_value <= 1000.
  int64_t max_value = 25;
  // Targets (and every intermediate value of the constructing expression) lie in [1, max_target];
  // max_target in [2, 1000000]. The target never equals one of the given numbers.
  int64_t max_target = 999;
};

struct TaskOptions {
  ArithmeticOptions arithmetic;
  CountdownOptions countdown;
};

// InvalidArgument naming the field ("countdown.max_numbers: ...") when an option is out of range.
absl::Status validate(const TaskOptions& options);

struct Task {
  TaskKind kind = TaskKind::kArithmetic;
  std::string prompt;  // the question, e.g. "What is 347 * 29?"
  std::string target;  // the full reference completion: "<think>...</think><answer>...</answer>"
  std::string answer;  // the reference answer: an integer, or a countdown expression
  // The canonical form that decides the split, e.g. "arithmetic:29*347", "countdown:3,4,25=63".
  std::string canonical;
  // Arithmetic: the two operands in prompt order. Countdown: the given numbers in prompt order.
  std::vector<int64_t> numbers;
  // Arithmetic: the exact result. Countdown: the number to reach.
  int64_t goal = 0;
};

inline constexpr uint64_t kHeldOutModulus = 10;

// A platform-independent 64-bit hash of a canonical form (FNV-1a, then a splitmix64 finalizer).
uint64_t split_hash(std::string_view canonical);
Split split_of(std::string_view canonical);

// `count` tasks of `kind` from `split`, drawn from a stream seeded by (seed, kind). Problems may
// repeat when the option space is small. Errors: InvalidArgument for bad options or a negative
// count; ResourceExhausted when the options allow too few problems of `split` to find `count`
// of them in a bounded number of draws (e.g. single-digit addition has very few held-out ones).
absl::StatusOr<std::vector<Task>> generate(TaskKind kind, Split split, uint64_t seed, int64_t count,
                                           const TaskOptions& options = {});

// The final answer of a completion, with surrounding ASCII whitespace trimmed: the content of the
// last complete <answer>...</answer> pair; failing that, of the last \boxed{...} whose braces
// balance; failing that, nullopt. An unclosed <answer> is ignored.
std::optional<std::string> extract_answer(std::string_view completion);

// True iff both trim to integers ([+-]?[0-9]+) with the same value (any number of digits).
bool check_arithmetic(std::string_view answer, std::string_view reference);

// True iff `expression` (integers, + - * /, parentheses, spaces; no unary minus) parses
// completely, uses each literal no more often than it occurs in `numbers`, divides only exactly
// (never by zero), stays within int64, and evaluates to `target`. Negative intermediate values
// are allowed; not every number has to be used.
bool check_countdown(std::string_view expression, absl::Span<const int64_t> numbers,
                     int64_t target);

// True iff the completion has exactly one "<think>" and one "</think>", in that order, and an
// answer (as found by extract_answer) that starts after the "</think>".
bool has_think_format(std::string_view completion);

// Dispatches to check_arithmetic(answer, task.answer) or check_countdown(answer, task.numbers,
// task.goal).
bool check_answer(const Task& task, std::string_view answer);

}  // namespace fathom::data
