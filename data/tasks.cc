#include "data/tasks.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/check.h"

#include "kernels/hash.h"

namespace fathom::data {
namespace {

// splitmix64 (Steele, Lea, Flood 2014): the same integer stream on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() { return mix64(state_ += kGoldenGamma); }
  // Uniform in [lo, hi], lo <= hi, by rejection so that no value is favoured.
  int64_t uniform(int64_t lo, int64_t hi) {
    const uint64_t span = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo) + 1;
    if (span == 0) return static_cast<int64_t>(next());  // the whole int64 range
    const uint64_t threshold = (0 - span) % span;        // 2^64 mod span
    uint64_t x = next();
    while (x < threshold) x = next();
    return static_cast<int64_t>(static_cast<uint64_t>(lo) + x % span);
  }

 private:
  uint64_t state_;
};

// This abseil build has its own string_view type; convert where std::string_view meets abseil.
absl::string_view av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string_view strip_ascii_whitespace(std::string_view s) {
  while (!s.empty() && absl::ascii_isspace(static_cast<unsigned char>(s.front()))) {
    s.remove_prefix(1);
  }
  while (!s.empty() && absl::ascii_isspace(static_cast<unsigned char>(s.back()))) {
    s.remove_suffix(1);
  }
  return s;
}

int64_t pow10(int n) {
  int64_t p = 1;
  for (int i = 0; i < n; ++i) p *= 10;
  return p;
}

// Decimal digits of v >= 0, least significant first; 0 has the single digit 0.
std::vector<int> digits_lsb(int64_t v) {
  std::vector<int> d;
  do {
    d.push_back(static_cast<int>(v % 10));
    v /= 10;
  } while (v > 0);
  return d;
}

// ---- Arithmetic ----

// Column addition of a, b >= 0 with carries: "7 + 9 = 16, write 6 carry 1; 4 + 2 + 1 = 7, ...".
std::string addition_steps(int64_t a, int64_t b) {
  const std::vector<int> da = digits_lsb(a), db = digits_lsb(b);
  std::vector<std::string> parts;
  int carry = 0;
  for (size_t i = 0; i < da.size() || i < db.size() || carry > 0; ++i) {
    std::vector<int> terms;
    if (i < da.size()) terms.push_back(da[i]);
    if (i < db.size()) terms.push_back(db[i]);
    if (carry > 0) terms.push_back(carry);
    int sum = 0;
    for (int t : terms) sum += t;
    std::string part = absl::StrJoin(terms, " + ");
    if (terms.size() > 1) absl::StrAppend(&part, " = ", sum);
    absl::StrAppend(&part, ", write ", sum % 10);
    if (sum >= 10) absl::StrAppend(&part, " carry ", sum / 10);
    carry = sum / 10;
    parts.push_back(std::move(part));
  }
  return absl::StrJoin(parts, "; ");
}

// Column subtraction of a >= b >= 0 with borrows: "borrow, 17 - 9 = 8, write 8; 4 - 2 - 1 = 1".
std::string subtraction_steps(int64_t a, int64_t b) {
  const std::vector<int> da = digits_lsb(a), db = digits_lsb(b);
  std::vector<std::string> parts;
  int borrow = 0;
  for (size_t i = 0; i < da.size(); ++i) {
    std::vector<int> subtrahends;
    if (i < db.size()) subtrahends.push_back(db[i]);
    if (borrow > 0) subtrahends.push_back(borrow);
    int top = da[i];
    int diff = top;
    for (int s : subtrahends) diff -= s;
    std::string part;
    if (diff < 0) {
      part = "borrow, ";
      top += 10;
      diff += 10;
      borrow = 1;
    } else {
      borrow = 0;
    }
    absl::StrAppend(&part, top);
    for (int s : subtrahends) absl::StrAppend(&part, " - ", s);
    if (!subtrahends.empty()) absl::StrAppend(&part, " = ", diff);
    absl::StrAppend(&part, ", write ", diff);
    parts.push_back(std::move(part));
  }
  return absl::StrJoin(parts, "; ");
}

// n * m, n, m >= 0. A one-digit m goes digit by digit with carries; a longer m is split into
// partial products, one per non-zero digit, which are then added.
std::string multiplication_steps(int64_t n, int64_t m) {
  if (m < 10) {
    if (m == 0) return absl::StrCat("anything times 0 is 0");
    std::vector<std::string> parts;
    int64_t carry = 0;
    for (int d : digits_lsb(n)) {
      const int64_t p = m * d + carry;
      std::string part = absl::StrCat(m, " * ", d);
      if (carry > 0) absl::StrAppend(&part, " + ", carry);
      absl::StrAppend(&part, " = ", p, ", write ", p % 10);
      if (p >= 10) absl::StrAppend(&part, " carry ", p / 10);
      carry = p / 10;
      parts.push_back(std::move(part));
    }
    if (carry > 0) parts.push_back(absl::StrCat("write ", carry));
    return absl::StrJoin(parts, "; ");
  }
  const std::vector<int> dm = digits_lsb(m);
  std::vector<std::string> parts;
  std::vector<int64_t> partials;
  for (size_t j = dm.size(); j-- > 0;) {
    if (dm[j] == 0) continue;
    const int64_t factor = dm[j] * pow10(static_cast<int>(j));
    partials.push_back(n * factor);
    parts.push_back(absl::StrCat(n, " * ", factor, " = ", partials.back()));
  }
  if (partials.size() > 1) {
    parts.push_back(absl::StrCat(absl::StrJoin(partials, " + "), " = ", n * m));
  }
  return absl::StrJoin(parts, "; ");
}

int64_t draw_operand(Rng& rng, const ArithmeticOptions& o) {
  const int digits = static_cast<int>(rng.uniform(o.min_digits, o.max_digits));
  const int64_t lo = digits == 1 ? 0 : pow10(digits - 1);
  return rng.uniform(lo, pow10(digits) - 1);
}

Task make_arithmetic(int64_t a, char op, int64_t b) {
  Task t;
  t.kind = TaskKind::kArithmetic;
  t.numbers = {a, b};
  std::string steps;
  switch (op) {
    case '+':
      t.goal = a + b;
      steps = addition_steps(a, b);
      break;
    case '-':
      t.goal = a - b;
      steps = a >= b ? subtraction_steps(a, b)
                     : absl::StrCat(a, " < ", b, ", so ", a, " - ", b, " = -(", b, " - ", a, "); ",
                                    subtraction_steps(b, a));
      break;
    default:  // '*'
      t.goal = a * b;
      // The operand with fewer digits is the multiplier.
      steps = digits_lsb(a).size() < digits_lsb(b).size()
                  ? absl::StrCat(a, " * ", b, " = ", b, " * ", a, "; ", multiplication_steps(b, a))
                  : multiplication_steps(a, b);
      break;
  }
  const std::string question = absl::StrCat(a, " ", std::string(1, op), " ", b);
  t.prompt = absl::StrCat("What is ", question, "?");
  t.answer = absl::StrCat(t.goal);
  t.target = absl::StrCat("<think>", steps, ". So ", question, " = ", t.answer, ".</think><answer>",
                          t.answer, "</answer>");
  // + and * commute: "12 + 34" and "34 + 12" are one problem and share a split.
  const bool commutes = op != '-';
  t.canonical = absl::StrCat("arithmetic:", commutes ? std::min(a, b) : a, std::string(1, op),
                             commutes ? std::max(a, b) : b);
  return t;
}

Task draw_arithmetic(Rng& rng, const ArithmeticOptions& o) {
  const char op = o.ops[rng.uniform(0, static_cast<int64_t>(o.ops.size()) - 1)];
  int64_t a = draw_operand(rng, o);
  int64_t b = draw_operand(rng, o);
  if (op == '-' && !o.allow_negative && a < b) std::swap(a, b);
  return make_arithmetic(a, op, b);
}

// ---- Countdown ----

struct Node {
  int64_t value = 0;
  char op = 0;  // 0 for a given number
  int left = -1;
  int right = -1;
};

int precedence(char op) {
  if (op == '+' || op == '-') return 1;
  if (op == '*' || op == '/') return 2;
  return 3;
}

// Infix text with the fewest parentheses that keep the tree's evaluation order.
std::string render(const std::vector<Node>& nodes, int i) {
  const Node& n = nodes[i];
  if (n.op == 0) return absl::StrCat(n.value);
  std::string l = render(nodes, n.left);
  std::string r = render(nodes, n.right);
  const int p = precedence(n.op), pl = precedence(nodes[n.left].op),
            pr = precedence(nodes[n.right].op);
  if (pl < p) l = absl::StrCat("(", l, ")");
  if (pr < p || (pr == p && (n.op == '-' || n.op == '/'))) r = absl::StrCat("(", r, ")");
  return absl::StrCat(l, " ", std::string(1, n.op), " ", r);
}

// Combines all the numbers pairwise with random operations whose results stay in
// [1, max_target] (divisions exact, no * 1 or / 1); nullopt when a draw leads nowhere.
std::optional<Task> draw_countdown(Rng& rng, const CountdownOptions& o) {
  const int count = static_cast<int>(rng.uniform(o.min_numbers, o.max_numbers));
  std::vector<Node> nodes;
  std::vector<int> pool;
  std::vector<int64_t> numbers;
  for (int i = 0; i < count; ++i) {
    numbers.push_back(rng.uniform(1, o.max_value));
    nodes.push_back(Node{numbers.back(), 0, -1, -1});
    pool.push_back(i);
  }
  std::vector<std::string> steps;
  while (pool.size() > 1) {
    const int64_t last = static_cast<int64_t>(pool.size()) - 1;
    const int64_t i = rng.uniform(0, last);
    int64_t j = rng.uniform(0, last - 1);
    if (j >= i) ++j;
    const int64_t a = nodes[pool[i]].value, b = nodes[pool[j]].value;
    std::string ops;
    if (a + b <= o.max_target) ops.push_back('+');
    // Given numbers may exceed max_target, so - and / are bounded too.
    if (a > b && a - b <= o.max_target) ops.push_back('-');
    if (a > 1 && b > 1 && a <= o.max_target / b) ops.push_back('*');
    if (b > 1 && a % b == 0 && a / b <= o.max_target) ops.push_back('/');
    if (ops.empty()) return std::nullopt;
    const char op = ops[rng.uniform(0, static_cast<int64_t>(ops.size()) - 1)];
    const int64_t value = op == '+' ? a + b : op == '-' ? a - b : op == '*' ? a * b : a / b;
    steps.push_back(absl::StrCat(a, " ", std::string(1, op), " ", b, " = ", value));
    nodes.push_back(Node{value, op, pool[i], pool[j]});
    pool.erase(pool.begin() + std::max(i, j));
    pool.erase(pool.begin() + std::min(i, j));
    pool.push_back(static_cast<int>(nodes.size()) - 1);
  }
  const int64_t goal = nodes.back().value;
  if (std::find(numbers.begin(), numbers.end(), goal) != numbers.end()) return std::nullopt;

  Task t;
  t.kind = TaskKind::kCountdown;
  t.numbers = numbers;
  t.goal = goal;
  t.answer = render(nodes, static_cast<int>(nodes.size()) - 1);
  t.prompt = absl::StrCat("Using the numbers ", absl::StrJoin(numbers, ", "), ", make ", goal,
                          ". You may use + - * / and parentheses; each number at most once.");
  t.target = absl::StrCat("<think>", absl::StrJoin(steps, ". "), ". So ", t.answer, " = ", goal,
                          ".</think><answer>", t.answer, "</answer>");
  std::sort(numbers.begin(), numbers.end());
  t.canonical = absl::StrCat("countdown:", absl::StrJoin(numbers, ","), "=", goal);
  return t;
}

// ---- Verifiers ----

constexpr std::string_view kAnswerOpen = "<answer>";
constexpr std::string_view kAnswerClose = "</answer>";
constexpr std::string_view kBoxedOpen = "\\boxed{";
constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";

struct FoundAnswer {
  size_t begin;  // where the opening tag or \boxed starts
  std::string_view content;
};

std::optional<FoundAnswer> find_answer(std::string_view s) {
  // Each </answer> pairs with the nearest <answer> before it that lies after the previous pair.
  std::optional<FoundAnswer> found;
  size_t pos = 0;
  for (;;) {
    const size_t close = s.find(kAnswerClose, pos);
    if (close == std::string_view::npos) break;
    const size_t open = s.substr(0, close).rfind(kAnswerOpen);
    if (open != std::string_view::npos && open >= pos) {
      const size_t begin = open + kAnswerOpen.size();
      found = FoundAnswer{open, s.substr(begin, close - begin)};
    }
    pos = close + kAnswerClose.size();
  }
  if (found) return found;
  // The last \boxed{ whose braces balance.
  for (size_t open = s.rfind(kBoxedOpen); open != std::string_view::npos;
       open = open == 0 ? std::string_view::npos : s.rfind(kBoxedOpen, open - 1)) {
    const size_t begin = open + kBoxedOpen.size();
    int depth = 1;
    for (size_t k = begin; k < s.size(); ++k) {
      if (s[k] == '{') ++depth;
      if (s[k] == '}' && --depth == 0) return FoundAnswer{open, s.substr(begin, k - begin)};
    }
  }
  return std::nullopt;
}

size_t count_occurrences(std::string_view s, std::string_view what) {
  size_t n = 0;
  for (size_t pos = s.find(what); pos != std::string_view::npos; pos = s.find(what, pos + 1)) ++n;
  return n;
}

// An integer as sign and digits without leading zeros ("-0" is "0"); nullopt if not [+-]?[0-9]+.
std::optional<std::string> normalize_integer(std::string_view s) {
  s = strip_ascii_whitespace(s);
  bool negative = false;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
    negative = s[0] == '-';
    s.remove_prefix(1);
  }
  if (s.empty()) return std::nullopt;
  for (char c : s) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return std::nullopt;
  }
  while (s.size() > 1 && s[0] == '0') s.remove_prefix(1);
  if (s == "0") negative = false;
  return absl::StrCat(negative ? "-" : "", av(s));
}

// Recursive descent over
//   expr := term (('+' | '-') term)*     term := factor (('*' | '/') factor)*
//   factor := integer | '(' expr ')'
// evaluating exactly in int64; any malformed input, unavailable number, inexact division or
// overflow makes the whole evaluation nullopt.
class CountdownEvaluator {
 public:
  CountdownEvaluator(std::string_view text, absl::Span<const int64_t> numbers)
      : text_(text), available_(numbers.begin(), numbers.end()) {}

  std::optional<int64_t> evaluate() {
    std::optional<int64_t> v = expr(0);
    skip_spaces();
    if (!v || pos_ != text_.size()) return std::nullopt;
    return v;
  }

 private:
  // Deep enough for any real answer; stops a "((((..." flood from exhausting the stack.
  static constexpr int kMaxDepth = 64;

  void skip_spaces() {
    while (pos_ < text_.size() && absl::ascii_isspace(static_cast<unsigned char>(text_[pos_]))) {
      ++pos_;
    }
  }
  bool consume(char c) {
    skip_spaces();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  std::optional<int64_t> expr(int depth) {
    std::optional<int64_t> v = term(depth);
    while (v) {
      if (consume('+')) {
        const std::optional<int64_t> r = term(depth);
        if (!r || __builtin_add_overflow(*v, *r, &*v)) return std::nullopt;
      } else if (consume('-')) {
        const std::optional<int64_t> r = term(depth);
        if (!r || __builtin_sub_overflow(*v, *r, &*v)) return std::nullopt;
      } else {
        break;
      }
    }
    return v;
  }

  std::optional<int64_t> term(int depth) {
    std::optional<int64_t> v = factor(depth);
    while (v) {
      if (consume('*')) {
        const std::optional<int64_t> r = factor(depth);
        if (!r || __builtin_mul_overflow(*v, *r, &*v)) return std::nullopt;
      } else if (consume('/')) {
        const std::optional<int64_t> r = factor(depth);
        if (!r || *r == 0) return std::nullopt;
        if (*r == -1 && *v == std::numeric_limits<int64_t>::min()) return std::nullopt;
        if (*v % *r != 0) return std::nullopt;
        *v /= *r;
      } else {
        break;
      }
    }
    return v;
  }

  std::optional<int64_t> factor(int depth) {
    if (consume('(')) {
      if (depth >= kMaxDepth) return std::nullopt;
      std::optional<int64_t> v = expr(depth + 1);
      if (!v || !consume(')')) return std::nullopt;
      return v;
    }
    skip_spaces();
    const size_t start = pos_;
    int64_t value = 0;
    while (pos_ < text_.size() && absl::ascii_isdigit(static_cast<unsigned char>(text_[pos_]))) {
      const int digit = text_[pos_] - '0';
      if (value > (std::numeric_limits<int64_t>::max() - digit) / 10) return std::nullopt;
      value = value * 10 + digit;
      ++pos_;
    }
    if (pos_ == start) return std::nullopt;
    // Each given number may be used once: take it out of the pool.
    const auto it = std::find(available_.begin(), available_.end(), value);
    if (it == available_.end()) return std::nullopt;
    available_.erase(it);
    return value;
  }

  std::string_view text_;
  size_t pos_ = 0;
  std::vector<int64_t> available_;
};

}  // namespace

std::string_view task_kind_name(TaskKind kind) {
  return kind == TaskKind::kArithmetic ? "arithmetic" : "countdown";
}

absl::StatusOr<TaskKind> parse_task_kind(std::string_view name) {
  if (name == "arithmetic") return TaskKind::kArithmetic;
  if (name == "countdown") return TaskKind::kCountdown;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown task kind '", av(name), "' (expected 'arithmetic' or 'countdown')"));
}

std::string_view split_name(Split split) { return split == Split::kTrain ? "train" : "held_out"; }

absl::Status validate(const TaskOptions& options) {
  std::vector<std::string> errors;
  const ArithmeticOptions& a = options.arithmetic;
  if (a.min_digits < 1 || a.min_digits > 9) {
    errors.push_back(absl::StrCat("arithmetic.min_digits: must be in [1, 9], got ", a.min_digits));
  }
  if (a.max_digits < a.min_digits || a.max_digits > 9) {
    errors.push_back(absl::StrCat("arithmetic.max_digits: must be in [min_digits (", a.min_digits,
                                  "), 9], got ", a.max_digits));
  }
  if (a.ops.empty()) errors.push_back("arithmetic.ops: must name at least one of + - *");
  for (size_t i = 0; i < a.ops.size(); ++i) {
    const char c = a.ops[i];
    if (c != '+' && c != '-' && c != '*') {
      errors.push_back(absl::StrCat("arithmetic.ops: '", std::string(1, c),
                                    "' is not one of + - * (ops \"", a.ops, "\")"));
    } else if (a.ops.find(c) != i) {
      errors.push_back(absl::StrCat("arithmetic.ops: '", std::string(1, c), "' appears twice"));
    }
  }
  const CountdownOptions& c = options.countdown;
  if (c.min_numbers < 2 || c.min_numbers > 6) {
    errors.push_back(absl::StrCat("countdown.min_numbers: must be in [2, 6], got ", c.min_numbers));
  }
  if (c.max_numbers < c.min_numbers || c.max_numbers > 6) {
    errors.push_back(absl::StrCat("countdown.max_numbers: must be in [min_numbers (", c.min_numbers,
                                  "), 6], got ", c.max_numbers));
  }
  if (c.max_value < 1 || c.max_value > 1000) {
    errors.push_back(absl::StrCat("countdown.max_value: must be in [1, 1000], got ", c.max_value));
  }
  if (c.max_target < 2 || c.max_target > 1000000) {
    errors.push_back(
        absl::StrCat("countdown.max_target: must be in [2, 1000000], got ", c.max_target));
  }
  if (errors.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(errors, "; "));
}

uint64_t split_hash(std::string_view canonical) { return mix64(fnv1a(canonical)); }

Split split_of(std::string_view canonical) {
  return split_hash(canonical) % kHeldOutModulus == 0 ? Split::kHeldOut : Split::kTrain;
}

absl::StatusOr<std::vector<Task>> generate(TaskKind kind, Split split, uint64_t seed, int64_t count,
                                           const TaskOptions& options) {
  FATHOM_RETURN_IF_ERROR(validate(options));
  if (count < 0) {
    return absl::InvalidArgumentError(absl::StrCat("generate: count must be >= 0, got ", count));
  }
  // The stream depends on (seed, kind) only: train and held-out requests filter the same draws.
  Rng rng(mix64(seed) ^ mix64(static_cast<uint64_t>(kind) + 1));
  const int64_t max_draws = count > (std::numeric_limits<int64_t>::max() - 100000) / 1000
                                ? std::numeric_limits<int64_t>::max()
                                : 1000 * count + 100000;
  std::vector<Task> tasks;
  tasks.reserve(static_cast<size_t>(std::min<int64_t>(count, 1 << 16)));
  for (int64_t draws = 0; static_cast<int64_t>(tasks.size()) < count; ++draws) {
    if (draws >= max_draws) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "generate: found only ", tasks.size(), " of ", count, " ", av(task_kind_name(kind)),
          " problems in the ", av(split_name(split)), " split after ", draws,
          " draws; widen the task options (more digits, numbers or a larger range)"));
    }
    std::optional<Task> t = kind == TaskKind::kArithmetic
                                ? std::optional<Task>(draw_arithmetic(rng, options.arithmetic))
                                : draw_countdown(rng, options.countdown);
    if (t && split_of(t->canonical) == split) tasks.push_back(std::move(*t));
  }
  return tasks;
}

std::optional<std::string> extract_answer(std::string_view completion) {
  const std::optional<FoundAnswer> found = find_answer(completion);
  if (!found) return std::nullopt;
  return std::string(strip_ascii_whitespace(found->content));
}

bool check_arithmetic(std::string_view answer, std::string_view reference) {
  const std::optional<std::string> a = normalize_integer(answer);
  const std::optional<std::string> r = normalize_integer(reference);
  return a && r && *a == *r;
}

bool check_countdown(std::string_view expression, absl::Span<const int64_t> numbers,
                     int64_t target) {
  const std::optional<int64_t> v = CountdownEvaluator(expression, numbers).evaluate();
  return v && *v == target;
}

bool has_think_format(std::string_view completion) {
  if (count_occurrences(completion, kThinkOpen) != 1) return false;
  if (count_occurrences(completion, kThinkClose) != 1) return false;
  const size_t open = completion.find(kThinkOpen);
  const size_t close = completion.find(kThinkClose);
  if (close < open + kThinkOpen.size()) return false;
  const std::optional<FoundAnswer> answer = find_answer(completion);
  return answer && answer->begin >= close + kThinkClose.size();
}

bool check_answer(const Task& task, std::string_view answer) {
  if (task.kind == TaskKind::kArithmetic) return check_arithmetic(answer, task.answer);
  return check_countdown(answer, task.numbers, task.goal);
}

}  // namespace fathom::data
