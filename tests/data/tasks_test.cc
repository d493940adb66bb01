#include "data/tasks.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace fathom::data {
namespace {

std::vector<Task> generate_ok(TaskKind kind, Split split, uint64_t seed, int64_t count,
                              const TaskOptions& options = {}) {
  absl::StatusOr<std::vector<Task>> tasks = generate(kind, split, seed, count, options);
  EXPECT_TRUE(tasks.ok()) << tasks.status() << " kind=" << task_kind_name(kind)
                          << " split=" << split_name(split) << " seed=" << seed;
  return tasks.ok() ? *std::move(tasks) : std::vector<Task>();
}

std::string describe(const Task& t) {
  return absl::StrCat("kind=", std::string(task_kind_name(t.kind)), " prompt=\"", t.prompt,
                      "\" target=\"", t.target, "\" answer=\"", t.answer, "\" canonical=\"",
                      t.canonical, "\" numbers=[", absl::StrJoin(t.numbers, ","),
                      "] goal=", t.goal);
}

std::set<std::string> canonical_set(const std::vector<Task>& tasks) {
  std::set<std::string> s;
  for (const Task& t : tasks) s.insert(t.canonical);
  return s;
}

size_t overlap(const std::set<std::string>& a, const std::set<std::string>& b) {
  size_t n = 0;
  for (const std::string& s : a) n += b.count(s);
  return n;
}

// Every "lhs = rhs" claim in a worked solution, with lhs an expression of integers and rhs an
// integer, must be true. Clauses are separated by ". ", "; " and ", "; a leading "So "/"so " is
// dropped. Returns how many claims were checked. The claims are evaluated with check_countdown,
// allowing each literal of lhs once, which makes it a plain exact-integer evaluator.
int check_reasoning_claims(const std::string& think, const std::string& context) {
  int checked = 0;
  for (absl::string_view sentence : absl::StrSplit(think, absl::ByAnyChar(".;,"))) {
    sentence = absl::StripAsciiWhitespace(sentence);
    absl::ConsumePrefix(&sentence, "So ");
    absl::ConsumePrefix(&sentence, "so ");
    const std::vector<std::string> sides = absl::StrSplit(sentence, " = ");
    if (sides.size() != 2) continue;
    int64_t rhs = 0;
    if (!absl::SimpleAtoi(sides[1], &rhs)) continue;  // e.g. "= -(347 - 29)"
    std::vector<int64_t> literals;
    for (absl::string_view tok :
         absl::StrSplit(sides[0], absl::ByAnyChar(" ()+-*/"), absl::SkipEmpty())) {
      int64_t v = 0;
      EXPECT_TRUE(absl::SimpleAtoi(tok, &v)) << "token \"" << tok << "\" in " << context;
      literals.push_back(v);
    }
    EXPECT_TRUE(check_countdown(sides[0], literals, rhs))
        << "false claim \"" << sentence << "\" in " << context;
    ++checked;
  }
  return checked;
}

// Column work ("..., write 6 carry 1; ...") must be self-consistent and spell the result: each
// "= s, write w carry c" has w = s % 10 and c = s / 10, and the written digits, last first, are
// |goal|. Returns whether the think block used column work at all.
bool check_column_work(const std::string& think, int64_t goal, const std::string& context) {
  std::string written;
  for (absl::string_view clause : absl::StrSplit(think, absl::ByAnyChar(";."))) {
    const size_t w = clause.find("write ");
    if (w == absl::string_view::npos) continue;
    const std::vector<absl::string_view> words =
        absl::StrSplit(clause.substr(w), ' ', absl::SkipEmpty());
    int64_t digit = -1, carry = 0;
    EXPECT_TRUE(absl::SimpleAtoi(words[1], &digit)) << "\"" << clause << "\" in " << context;
    if (words.size() >= 4 && words[2] == "carry") {
      EXPECT_TRUE(absl::SimpleAtoi(words[3], &carry)) << "\"" << clause << "\" in " << context;
    }
    const size_t eq = clause.rfind(" = ", w);
    if (eq != absl::string_view::npos) {
      int64_t sum = 0;
      const absl::string_view after = clause.substr(eq + 3, w - eq - 3);
      EXPECT_TRUE(absl::SimpleAtoi(absl::StripSuffix(after, ", "), &sum))
          << "\"" << clause << "\" in " << context;
      EXPECT_EQ(digit, sum % 10) << "\"" << clause << "\" in " << context;
      EXPECT_EQ(carry, sum / 10) << "\"" << clause << "\" in " << context;
    }
    written += absl::StrCat(digit);
  }
  if (written.empty()) return false;
  std::reverse(written.begin(), written.end());
  EXPECT_TRUE(check_arithmetic(written, absl::StrCat(goal < 0 ? -goal : goal)))
      << "written digits " << written << " in " << context;
  return true;
}

std::string think_of(const Task& t) {
  const size_t open = t.target.find("<think>");
  const size_t close = t.target.find("</think>");
  if (open == std::string::npos || close == std::string::npos) return "";
  return t.target.substr(open + 7, close - open - 7);
}

// ---- Generation ----

TEST(Tasks, SameSeedSameTasksAndPrefixesAgree) {
  for (TaskKind kind : {TaskKind::kArithmetic, TaskKind::kCountdown}) {
    for (Split split : {Split::kTrain, Split::kHeldOut}) {
      const std::vector<Task> a = generate_ok(kind, split, 42, 200);
      const std::vector<Task> b = generate_ok(kind, split, 42, 200);
      const std::vector<Task> prefix = generate_ok(kind, split, 42, 50);
      const std::vector<Task> other = generate_ok(kind, split, 43, 200);
      ASSERT_EQ(a.size(), 200u);
      ASSERT_EQ(prefix.size(), 50u);
      int differ = 0;
      for (size_t i = 0; i < a.size(); ++i) {
        EXPECT_EQ(a[i].prompt, b[i].prompt) << i;
        EXPECT_EQ(a[i].target, b[i].target) << i;
        EXPECT_EQ(a[i].answer, b[i].answer) << i;
        if (i < prefix.size()) {
          EXPECT_EQ(a[i].target, prefix[i].target) << i;
        }
        differ += a[i].prompt != other[i].prompt;
      }
      EXPECT_GT(differ, 150) << "seeds 42 and 43 give nearly the same " << task_kind_name(kind)
                             << " " << split_name(split) << " tasks";
    }
  }
}

TEST(Tasks, StreamIsPinnedAcrossPlatforms) {
  // The generator uses its own integer PRNG, so these exact problems must come out on every
  // platform. A change here silently changes every dataset and held-out split: it must be
  // deliberate.
  const std::vector<Task> arith = generate_ok(TaskKind::kArithmetic, Split::kTrain, 1, 3);
  const std::vector<Task> count = generate_ok(TaskKind::kCountdown, Split::kHeldOut, 1, 2);
  ASSERT_EQ(arith.size(), 3u);
  ASSERT_EQ(count.size(), 2u);
  EXPECT_EQ(arith[0].prompt, "What is 540 + 390?");
  EXPECT_EQ(arith[1].prompt, "What is 73 - 7?");
  EXPECT_EQ(arith[2].prompt, "What is 4 - 2?");
  EXPECT_EQ(count[0].prompt,
            "Using the numbers 16, 14, 12, 3, make 562. You may use + - * / and parentheses; each "
            "number at most once.");
  EXPECT_EQ(count[1].answer, "17 + 10 * 12 - 3");
}

TEST(Tasks, ArithmeticExample) {
  // Find a multiplication in the stream and check the shape of its completion.
  TaskOptions o;
  o.arithmetic.ops = "*";
  o.arithmetic.min_digits = 2;
  o.arithmetic.max_digits = 3;
  const std::vector<Task> tasks = generate_ok(TaskKind::kArithmetic, Split::kTrain, 5, 20, o);
  for (const Task& t : tasks) {
    ASSERT_EQ(t.numbers.size(), 2u);
    EXPECT_EQ(t.prompt, absl::StrCat("What is ", t.numbers[0], " * ", t.numbers[1], "?"));
    EXPECT_EQ(t.goal, t.numbers[0] * t.numbers[1]);
    EXPECT_EQ(t.answer, absl::StrCat(t.goal));
    EXPECT_TRUE(absl::StartsWith(t.target, "<think>")) << describe(t);
    EXPECT_TRUE(absl::EndsWith(t.target, absl::StrCat("</think><answer>", t.goal, "</answer>")))
        << describe(t);
    EXPECT_EQ(t.canonical, absl::StrCat("arithmetic:", std::min(t.numbers[0], t.numbers[1]), "*",
                                        std::max(t.numbers[0], t.numbers[1])));
  }
}

// Independent recomputation of each arithmetic task from its prompt.
void check_arithmetic_task(const Task& t, const ArithmeticOptions& o) {
  ASSERT_EQ(t.kind, TaskKind::kArithmetic);
  ASSERT_EQ(t.numbers.size(), 2u) << describe(t);
  const int64_t a = t.numbers[0], b = t.numbers[1];
  char op = 0;
  for (char c : o.ops) {
    if (t.prompt == absl::StrCat("What is ", a, " ", std::string(1, c), " ", b, "?")) op = c;
  }
  ASSERT_NE(op, 0) << "prompt does not match operands and ops \"" << o.ops << "\": " << describe(t);
  const int64_t want = op == '+' ? a + b : op == '-' ? a - b : a * b;
  EXPECT_EQ(t.goal, want) << describe(t);
  EXPECT_EQ(t.answer, absl::StrCat(want)) << describe(t);
  if (!o.allow_negative) {
    EXPECT_GE(want, 0) << describe(t);
  }
  for (int64_t v : {a, b}) {
    const int digits = static_cast<int>(absl::StrCat(v).size());
    EXPECT_GE(digits, o.min_digits) << describe(t);
    EXPECT_LE(digits, o.max_digits) << describe(t);
  }
}

void check_countdown_task(const Task& t, const CountdownOptions& o) {
  ASSERT_EQ(t.kind, TaskKind::kCountdown);
  EXPECT_GE(static_cast<int>(t.numbers.size()), o.min_numbers) << describe(t);
  EXPECT_LE(static_cast<int>(t.numbers.size()), o.max_numbers) << describe(t);
  for (int64_t v : t.numbers) {
    EXPECT_GE(v, 1) << describe(t);
    EXPECT_LE(v, o.max_value) << describe(t);
  }
  EXPECT_GE(t.goal, 1) << describe(t);
  EXPECT_LE(t.goal, o.max_target) << describe(t);
  EXPECT_EQ(std::count(t.numbers.begin(), t.numbers.end(), t.goal), 0) << describe(t);
  EXPECT_EQ(t.prompt,
            absl::StrCat("Using the numbers ", absl::StrJoin(t.numbers, ", "), ", make ", t.goal,
                         ". You may use + - * / and parentheses; each number at most "
                         "once."))
      << describe(t);
  std::vector<int64_t> sorted = t.numbers;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(t.canonical, absl::StrCat("countdown:", absl::StrJoin(sorted, ","), "=", t.goal));
  // The constructing steps ("a op b = v. ...") keep every intermediate value in [1, max_target].
  int steps = 0;
  for (absl::string_view step : absl::StrSplit(think_of(t), ". ")) {
    const size_t eq = step.rfind(" = ");
    if (eq == absl::string_view::npos) continue;
    int64_t v = 0;
    ASSERT_TRUE(absl::SimpleAtoi(absl::StripSuffix(step.substr(eq + 3), "."), &v)) << describe(t);
    EXPECT_GE(v, 1) << describe(t);
    EXPECT_LE(v, o.max_target) << describe(t);
    ++steps;
  }
  // One step per combination, plus the closing "So ... = goal".
  EXPECT_EQ(steps, static_cast<int>(t.numbers.size())) << describe(t);
}

// The target completion passes every verifier the reward will apply, and each step it shows is
// true.
void check_target(const Task& t) {
  const std::optional<std::string> extracted = extract_answer(t.target);
  ASSERT_TRUE(extracted.has_value()) << describe(t);
  EXPECT_EQ(*extracted, t.answer) << describe(t);
  EXPECT_TRUE(check_answer(t, *extracted)) << describe(t);
  EXPECT_TRUE(has_think_format(t.target)) << describe(t);
  EXPECT_GT(check_reasoning_claims(think_of(t), describe(t)), 0) << describe(t);
  if (t.kind == TaskKind::kArithmetic) {
    // Every +, - and one-digit * is worked in columns; longer multipliers use partial products
    // and a zero multiplier needs no work.
    const bool column = check_column_work(think_of(t), t.goal, describe(t));
    const bool multiplication = t.prompt.find('*') != std::string::npos;
    const bool long_multiplication = multiplication && std::min(t.numbers[0], t.numbers[1]) >= 10;
    const bool times_zero = multiplication && t.goal == 0 &&
                            think_of(t).find("anything times 0 is 0") != std::string::npos;
    EXPECT_TRUE(column || long_multiplication || times_zero) << describe(t);
    if (!multiplication) {
      EXPECT_TRUE(column) << describe(t);
    }
  }
  if (t.kind == TaskKind::kCountdown) {
    EXPECT_TRUE(check_countdown(t.answer, t.numbers, t.goal)) << describe(t);
  } else {
    EXPECT_TRUE(check_arithmetic(t.answer, absl::StrCat(t.goal))) << describe(t);
  }
}

TEST(Tasks, EveryArithmeticTargetPassesItsVerifier) {
  std::vector<ArithmeticOptions> variants(5);
  variants[1].min_digits = variants[1].max_digits = 1;
  variants[2].min_digits = 4;
  variants[2].max_digits = 9;
  variants[3].ops = "-";
  variants[3].allow_negative = true;
  variants[4].ops = "*+";
  variants[4].min_digits = 1;
  variants[4].max_digits = 6;
  for (size_t v = 0; v < variants.size(); ++v) {
    TaskOptions o;
    o.arithmetic = variants[v];
    for (Split split : {Split::kTrain, Split::kHeldOut}) {
      for (const Task& t : generate_ok(TaskKind::kArithmetic, split, 100 + v, 400, o)) {
        SCOPED_TRACE(absl::StrCat("variant ", v, " split ", std::string(split_name(split))));
        check_arithmetic_task(t, o.arithmetic);
        check_target(t);
        EXPECT_EQ(split_of(t.canonical), split) << describe(t);
        if (::testing::Test::HasFailure()) return;
      }
    }
  }
}

TEST(Tasks, NegativeSubtractionIsExplained) {
  TaskOptions o;
  o.arithmetic.ops = "-";
  o.arithmetic.allow_negative = true;
  int negatives = 0;
  for (const Task& t : generate_ok(TaskKind::kArithmetic, Split::kTrain, 9, 300, o)) {
    if (t.goal >= 0) continue;
    ++negatives;
    EXPECT_NE(think_of(t).find(absl::StrCat(t.numbers[0], " - ", t.numbers[1], " = -(",
                                            t.numbers[1], " - ", t.numbers[0], ")")),
              std::string::npos)
        << describe(t);
  }
  EXPECT_GT(negatives, 50);
}

TEST(Tasks, EveryCountdownTargetPassesItsVerifier) {
  std::vector<CountdownOptions> variants(5);
  variants[1].min_numbers = variants[1].max_numbers = 2;
  variants[2].min_numbers = 5;
  variants[2].max_numbers = 6;
  variants[2].max_value = 100;
  variants[2].max_target = 100000;
  variants[3].max_value = 10;
  variants[3].max_target = 100;
  variants[4].max_value = 60;  // numbers may be larger than any allowed target
  variants[4].max_target = 40;
  for (size_t v = 0; v < variants.size(); ++v) {
    TaskOptions o;
    o.countdown = variants[v];
    for (Split split : {Split::kTrain, Split::kHeldOut}) {
      for (const Task& t : generate_ok(TaskKind::kCountdown, split, 200 + v, 300, o)) {
        SCOPED_TRACE(absl::StrCat("variant ", v, " split ", std::string(split_name(split))));
        check_countdown_task(t, o.countdown);
        check_target(t);
        EXPECT_EQ(split_of(t.canonical), split) << describe(t);
        if (::testing::Test::HasFailure()) return;
      }
    }
  }
}

TEST(Tasks, CountdownExampleNumbersCanRepeat) {
  // With values in [1, 3] repeated numbers are common; the verifier must let each copy be used.
  TaskOptions o;
  o.countdown.max_value = 3;
  o.countdown.max_target = 50;
  int with_repeats = 0;
  for (const Task& t : generate_ok(TaskKind::kCountdown, Split::kTrain, 3, 200, o)) {
    std::set<int64_t> distinct(t.numbers.begin(), t.numbers.end());
    if (distinct.size() < t.numbers.size()) ++with_repeats;
    EXPECT_TRUE(check_countdown(t.answer, t.numbers, t.goal)) << describe(t);
  }
  EXPECT_GT(with_repeats, 50);
}

TEST(Tasks, HeldOutIsDisjointFromTrainForAnySeed) {
  // Small spaces, so independent draws collide often: without a split by problem, train and
  // held-out would share many problems.
  TaskOptions o;
  o.arithmetic.min_digits = 1;
  o.arithmetic.max_digits = 2;
  o.countdown.max_value = 10;
  o.countdown.max_target = 100;
  for (TaskKind kind : {TaskKind::kArithmetic, TaskKind::kCountdown}) {
    std::set<std::string> train, held_out;
    std::vector<std::set<std::string>> train_per_seed;
    for (uint64_t seed : {1, 2, 3}) {
      train_per_seed.push_back(canonical_set(generate_ok(kind, Split::kTrain, seed, 3000, o)));
      train.insert(train_per_seed.back().begin(), train_per_seed.back().end());
    }
    for (uint64_t seed : {1, 4, 99}) {
      const std::set<std::string> h =
          canonical_set(generate_ok(kind, Split::kHeldOut, seed, 500, o));
      held_out.insert(h.begin(), h.end());
    }
    EXPECT_GT(overlap(train_per_seed[0], train_per_seed[1]), 100u)
        << task_kind_name(kind) << ": the space is too large for this test to mean anything";
    EXPECT_GT(held_out.size(), 100u) << task_kind_name(kind);
    EXPECT_EQ(overlap(train, held_out), 0u) << task_kind_name(kind);
    for (const std::string& c : held_out) EXPECT_EQ(split_of(c), Split::kHeldOut) << c;
    for (const std::string& c : train) EXPECT_EQ(split_of(c), Split::kTrain) << c;
  }
}

TEST(Tasks, HeldOutFractionIsAboutOneInTen) {
  int held_out = 0, total = 0;
  for (int a = 0; a < 100; ++a) {
    for (int b = a; b < 100; ++b) {
      for (char op : std::string("+-*")) {
        held_out +=
            split_of(absl::StrCat("arithmetic:", a, std::string(1, op), b)) == Split::kHeldOut;
        ++total;
      }
    }
  }
  const double fraction = static_cast<double>(held_out) / total;
  EXPECT_GT(fraction, 0.085) << held_out << " of " << total;
  EXPECT_LT(fraction, 0.115) << held_out << " of " << total;
}

TEST(Tasks, CommutedProblemsShareASplit) {
  // "a + b" and "b + a" have one canonical form; so do countdown problems listing the same
  // numbers in another order.
  TaskOptions o;
  o.arithmetic.ops = "+*";
  for (const Task& t : generate_ok(TaskKind::kArithmetic, Split::kHeldOut, 8, 200, o)) {
    const std::string op = t.prompt.find('+') != std::string::npos ? "+" : "*";
    const int64_t lo = std::min(t.numbers[0], t.numbers[1]);
    const int64_t hi = std::max(t.numbers[0], t.numbers[1]);
    EXPECT_EQ(t.canonical, absl::StrCat("arithmetic:", lo, op, hi)) << describe(t);
  }
}

TEST(Tasks, OptionsAreValidated) {
  TaskOptions o;
  o.arithmetic.min_digits = 0;
  o.arithmetic.ops = "+/";
  o.countdown.max_numbers = 7;
  absl::Status s = validate(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  for (const char* part : {"arithmetic.min_digits", "'/'", "countdown.max_numbers"}) {
    EXPECT_NE(s.message().find(part), std::string::npos) << part << " missing from: " << s;
  }
  absl::StatusOr<std::vector<Task>> tasks = generate(TaskKind::kArithmetic, Split::kTrain, 1, 5, o);
  EXPECT_EQ(tasks.status().code(), absl::StatusCode::kInvalidArgument);

  TaskOptions dup;
  dup.arithmetic.ops = "++";
  EXPECT_NE(validate(dup).message().find("twice"), std::string::npos) << validate(dup);
  TaskOptions digits;
  digits.arithmetic.min_digits = 3;
  digits.arithmetic.max_digits = 2;
  EXPECT_NE(validate(digits).message().find("arithmetic.max_digits"), std::string::npos);
  EXPECT_TRUE(validate(TaskOptions{}).ok());

  tasks = generate(TaskKind::kCountdown, Split::kTrain, 1, -1);
  EXPECT_EQ(tasks.status().code(), absl::StatusCode::kInvalidArgument);
  tasks = generate(TaskKind::kCountdown, Split::kTrain, 1, 0);
  ASSERT_TRUE(tasks.ok());
  EXPECT_TRUE(tasks->empty());
}

TEST(Tasks, TooSmallASpaceIsAnErrorNotAHang) {
  // Two numbers in [1, 1] allow exactly one problem, 1 + 1 = 2. Asking for the other split
  // must fail with a clear error.
  TaskOptions o;
  o.countdown.min_numbers = o.countdown.max_numbers = 2;
  o.countdown.max_value = 1;
  const Split has = split_of("countdown:1,1=2");
  const Split lacks = has == Split::kTrain ? Split::kHeldOut : Split::kTrain;
  const std::vector<Task> some = generate_ok(TaskKind::kCountdown, has, 1, 3, o);
  ASSERT_EQ(some.size(), 3u);
  EXPECT_EQ(some[0].canonical, "countdown:1,1=2");
  absl::StatusOr<std::vector<Task>> none = generate(TaskKind::kCountdown, lacks, 1, 3, o);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(none.status().message().find(std::string(split_name(lacks))), std::string::npos)
      << none.status();
}

TEST(Tasks, KindNamesParse) {
  EXPECT_EQ(*parse_task_kind("arithmetic"), TaskKind::kArithmetic);
  EXPECT_EQ(*parse_task_kind(task_kind_name(TaskKind::kCountdown)), TaskKind::kCountdown);
  absl::StatusOr<TaskKind> bad = parse_task_kind("sudoku");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'sudoku'"), std::string::npos) << bad.status();
}

// ---- Verifiers ----

TEST(ExtractAnswer, Precedence) {
  EXPECT_EQ(extract_answer("<answer>5</answer>"), "5");
  EXPECT_EQ(extract_answer("<answer>1</answer> then <answer>2</answer>"), "2");
  // An answer tag wins over \boxed even when \boxed comes later.
  EXPECT_EQ(extract_answer("<answer>3</answer> \\boxed{4}"), "3");
  EXPECT_EQ(extract_answer("so it is \\boxed{42}."), "42");
  EXPECT_EQ(extract_answer("\\boxed{1} no, \\boxed{2}"), "2");
  EXPECT_EQ(extract_answer("\\boxed{\\frac{1}{2}}"), "\\frac{1}{2}");
  EXPECT_EQ(extract_answer("<answer>\n  42 \t</answer>"), "42");
  EXPECT_EQ(extract_answer("<answer></answer>"), "");
  EXPECT_EQ(extract_answer("no answer here"), std::nullopt);
  EXPECT_EQ(extract_answer(""), std::nullopt);
}

TEST(ExtractAnswer, MalformedTags) {
  EXPECT_EQ(extract_answer("<answer>7"), std::nullopt);
  EXPECT_EQ(extract_answer("<answer>7 \\boxed{8}"), "8");  // unclosed tag: fall back to \boxed
  EXPECT_EQ(extract_answer("</answer>5"), std::nullopt);
  EXPECT_EQ(extract_answer("</answer>4<answer>"), std::nullopt);
  EXPECT_EQ(extract_answer("<answer>1</answer> junk </answer>"), "1");
  EXPECT_EQ(extract_answer("<answer><answer>3</answer>"), "3");
  EXPECT_EQ(extract_answer("<answer>1</answer><answer>2"), "1");
  EXPECT_EQ(extract_answer("<answer 5</answer>"), std::nullopt);
  EXPECT_EQ(extract_answer("\\boxed{1} \\boxed{2"), "1");  // the last \boxed is unbalanced
  EXPECT_EQ(extract_answer("\\boxed{"), std::nullopt);
  EXPECT_EQ(extract_answer("\\boxed{{}"), std::nullopt);
  EXPECT_EQ(extract_answer("\\boxed 5"), std::nullopt);
}

TEST(CheckArithmetic, IntegerEqualityAfterTrimming) {
  EXPECT_TRUE(check_arithmetic("42", "42"));
  EXPECT_TRUE(check_arithmetic(" 42\n", "42"));
  EXPECT_TRUE(check_arithmetic("042", "42"));
  EXPECT_TRUE(check_arithmetic("+7", "7"));
  EXPECT_TRUE(check_arithmetic("-0", "0"));
  EXPECT_TRUE(check_arithmetic("-318", " -318 "));
  EXPECT_TRUE(check_arithmetic("123456789012345678901234567890", "123456789012345678901234567890"));
  EXPECT_FALSE(
      check_arithmetic("123456789012345678901234567890", "123456789012345678901234567891"));
  EXPECT_FALSE(check_arithmetic("42", "43"));
  EXPECT_FALSE(check_arithmetic("-42", "42"));
  EXPECT_FALSE(check_arithmetic("4 2", "42"));
  EXPECT_FALSE(check_arithmetic("42.0", "42"));
  EXPECT_FALSE(check_arithmetic("1e3", "1000"));
  EXPECT_FALSE(check_arithmetic("10,063", "10063"));
  EXPECT_FALSE(check_arithmetic("", "0"));
  EXPECT_FALSE(check_arithmetic("-", "0"));
  EXPECT_FALSE(check_arithmetic("42", "abc"));
}

TEST(CheckCountdown, AcceptsValidExpressions) {
  const std::vector<int64_t> n = {25, 4, 3};
  EXPECT_TRUE(check_countdown("(25 - 4) * 3", n, 63));
  EXPECT_TRUE(check_countdown("(25-4)*3", n, 63));
  EXPECT_TRUE(check_countdown("  ( 25 - 4 )*3 ", n, 63));
  EXPECT_TRUE(check_countdown("3 * (25 - 4)", n, 63));
  EXPECT_TRUE(check_countdown("25 + 4", n, 29));  // not every number has to be used
  EXPECT_TRUE(check_countdown("((25))", n, 25));
  EXPECT_TRUE(check_countdown("4 - 25", n, -21));
  EXPECT_TRUE(check_countdown("(4 - 25) * 3 + 66 - 2", {25, 4, 3, 66, 2}, 1));
  EXPECT_TRUE(check_countdown("7 * 4 / 2", {7, 4, 2}, 14));        // exact at every step
  EXPECT_TRUE(check_countdown("5 * 5 * 2", {5, 5, 2}, 50));        // a repeated number, used twice
  EXPECT_TRUE(check_countdown("100 - 10 - 1", {100, 10, 1}, 89));  // left-associative
  EXPECT_TRUE(check_countdown("100 / 10 / 5", {100, 10, 5}, 2));
}

TEST(CheckCountdown, RejectsRuleBreaks) {
  const std::vector<int64_t> n = {25, 4, 3};
  EXPECT_FALSE(check_countdown("(25 - 4) * 3 + 4 - 4", n, 63));  // 4 reused
  EXPECT_FALSE(check_countdown("5 * 5 * 2", {5, 2}, 50));        // 5 given once, used twice
  EXPECT_FALSE(check_countdown("21 * 3", n, 63));                // 21 not given
  EXPECT_FALSE(check_countdown("(25 - 4) * 3 + 0", n, 63));      // 0 not given
  EXPECT_FALSE(check_countdown("7 / 2 * 4", {7, 4, 2}, 14));     // 7 / 2 is not exact
  EXPECT_FALSE(check_countdown("7 / 2 * 4", {7, 4, 2}, 12));     // nor truncated
  EXPECT_FALSE(check_countdown("7 / 2", {7, 2}, 3));
  EXPECT_FALSE(check_countdown("3 / (5 - 5)", {5, 5, 3}, 0));  // division by zero
  EXPECT_FALSE(check_countdown("(25 - 4) * 3", n, 64));        // wrong result
  EXPECT_FALSE(check_countdown("100 - (10 - 1)", {100, 10, 1}, 89));
  EXPECT_FALSE(check_countdown("3000000000 * 3000000000 * 3000000000",
                               {3000000000, 3000000000, 3000000000}, 0));  // overflow
}

TEST(CheckCountdown, GarbageIsWrongNotACrash) {
  const std::vector<int64_t> n = {25, 4, 3};
  // "2\xef\xbc\x95" is "2" and a full-width 5.
  std::vector<std::string> garbage = {"",
                                      " ",
                                      "(",
                                      ")",
                                      "((25)",
                                      "25)",
                                      "25 +",
                                      "+ 25",
                                      "-25 + 88",
                                      "25 4",
                                      "abc",
                                      "2**3",
                                      "()",
                                      "<answer>",
                                      "25 - - 4",
                                      "25.0",
                                      "1e3",
                                      "25 ^ 4",
                                      "2\xef\xbc\x95",
                                      "(25 - 4) * 3)",
                                      "99999999999999999999999"};
  garbage.push_back(std::string("25\0", 3));
  garbage.push_back(std::string(100000, '('));
  garbage.push_back(std::string(5000, '(') + "25" + std::string(5000, ')'));
  for (const std::string& g : garbage) {
    for (int64_t target : {0, 25, 63}) {
      EXPECT_FALSE(check_countdown(g, n, target)) << "\"" << g.substr(0, 40) << "\"";
    }
  }
  // Deep but sane nesting still works.
  EXPECT_TRUE(check_countdown(std::string(20, '(') + "25" + std::string(20, ')'), n, 25));
}

TEST(HasThinkFormat, Cases) {
  EXPECT_TRUE(has_think_format("<think>x</think><answer>1</answer>"));
  EXPECT_TRUE(has_think_format("  <think>\nsteps\n</think>\n<answer>1</answer>\n"));
  EXPECT_TRUE(has_think_format("<think>x</think> so \\boxed{1}"));
  EXPECT_TRUE(has_think_format("<think></think><answer></answer>"));
  EXPECT_FALSE(has_think_format("<answer>1</answer>"));
  EXPECT_FALSE(has_think_format("<think>x</think>"));  // no answer
  EXPECT_FALSE(has_think_format("<think>x</think><answer>1"));
  EXPECT_FALSE(has_think_format("<think>a</think><think>b</think><answer>1</answer>"));
  EXPECT_FALSE(has_think_format("<think>a<think>b</think><answer>1</answer>"));
  EXPECT_FALSE(has_think_format("<think>a</think></think><answer>1</answer>"));
  EXPECT_FALSE(has_think_format("</think>x<think><answer>1</answer>"));
  EXPECT_FALSE(has_think_format("<think><answer>1</answer></think>"));
  EXPECT_FALSE(has_think_format("<answer>1</answer><think>x</think>"));
  // The answer that counts is the last one; an earlier one inside the think block is fine.
  EXPECT_TRUE(has_think_format("<think><answer>0</answer>?</think><answer>1</answer>"));
}

TEST(CheckAnswer, DispatchesOnKind) {
  Task a;
  a.kind = TaskKind::kArithmetic;
  a.answer = "10063";
  EXPECT_TRUE(check_answer(a, " 10063"));
  EXPECT_FALSE(check_answer(a, "10064"));
  Task c;
  c.kind = TaskKind::kCountdown;
  c.numbers = {25, 4, 3};
  c.goal = 63;
  c.answer = "(25 - 4) * 3";
  EXPECT_TRUE(check_answer(c, "3 * (25 - 4)"));  // any valid expression, not only the reference
  EXPECT_FALSE(check_answer(c, "63"));
}

}  // namespace
}  // namespace fathom::data
