// Run metrics: a JSON-lines file and the terminal progress line (DESIGN.md "Observability").
//
// MetricsWriter appends one JSON object per line to DIR/metrics.jsonl and flushes every line, so
// the file can be followed (tail -f, jq, pandas.read_json(lines=True)) while the run goes on and
// holds every complete line after a crash. JsonObject builds those objects without a JSON
// library: keys keep the order they were added in (the trainer adds them in a fixed order, so every
// line has the same layout), numbers are written so that they read back exactly (the shortest
// text that round-trips, integers as integers), and strings are escaped per RFC 8259.
//
// Non-finite numbers: JSON has no NaN or Infinity, so NaN, +Inf and -Inf are written as null,
// which every JSON reader accepts (pandas reads it as NaN). A diverged loss therefore shows up as
// null in the file; the progress line prints "nan" / "inf".
//
// format_progress() renders the one-line status "step 120/300 | loss 2.314 | 12.3k tok/s |
// ETA 0:41" as a pure function; ProgressPrinter shows it, rewriting one line in place with '\r'
// on a terminal and printing a plain line every N steps otherwise (logs, CI).
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace fathom::trainer {

// `s` as a JSON string literal, quotes included. `"`, `\` and control characters are escaped;
// valid UTF-8 passes through; each byte that is not part of valid UTF-8 becomes \ufffd (so the
// line stays valid JSON whatever bytes a model generated).
std::string json_string(std::string_view s);
// Shortest text that reads back as the same value ("0.1", "1e-08", "3"); "null" when not finite.
std::string json_number(double v);
std::string json_number(float v);

// Integer and floating-point types; bool is written as true / false instead.
template <typename T>
concept JsonNumeric = std::is_arithmetic_v<T> && !std::is_same_v<T, bool>;

class JsonObject {
 public:
  // Integers (any integral type but bool) are written exactly; float and double with
  // json_number. Adding a key twice throws fathom::Error (a bug in the caller).
  template <JsonNumeric T>
  JsonObject& add(std::string_view key, T value) {
    if constexpr (std::is_integral_v<T>) {
      if constexpr (std::is_signed_v<T>) {
        return add_raw(key, std::to_string(static_cast<int64_t>(value)));
      } else {
        return add_raw(key, std::to_string(static_cast<uint64_t>(value)));
      }
    } else if constexpr (std::is_same_v<T, float>) {
      return add_raw(key, json_number(value));
    } else {
      return add_raw(key, json_number(static_cast<double>(value)));
    }
  }
  JsonObject& add(std::string_view key, bool value) {
    return add_raw(key, value ? "true" : "false");
  }
  JsonObject& add(std::string_view key, std::string_view value) {
    return add_raw(key, json_string(value));
  }
  JsonObject& add(std::string_view key, const char* value) {
    return add(key, std::string_view(value));
  }
  JsonObject& add(std::string_view key, const std::string& value) {
    return add(key, std::string_view(value));
  }
  // An array of numbers (e.g. per-expert load); non-finite entries become null.
  JsonObject& add(std::string_view key, absl::Span<const double> values);
  JsonObject& add(std::string_view key, absl::Span<const float> values);
  JsonObject& add(std::string_view key, absl::Span<const int64_t> values);
  // A nested object.
  JsonObject& add(std::string_view key, const JsonObject& value) {
    return add_raw(key, value.str());
  }

  // `key` with already-formatted JSON `json` (not checked).
  JsonObject& add_raw(std::string_view key, std::string_view json);

  // "{"k": v, ...}" on one line; "{}" when empty.
  std::string str() const { return "{" + body_ + "}"; }
  bool empty() const { return keys_.empty(); }
  const std::vector<std::string>& keys() const { return keys_; }

 private:
  std::string body_;
  std::vector<std::string> keys_;
};

class MetricsWriter {
 public:
  // Opens DIR/metrics.jsonl for appending (a resumed run continues the same file), creating DIR
  // and the file when missing. Errors: the errno-derived status of the failing call with a message
  // naming the path (e.g. PermissionDenied; AlreadyExists or FailedPrecondition when DIR or a
  // parent is a file).
  static absl::StatusOr<MetricsWriter> open(const std::string& dir);

  // Writes record.str() and a newline, and flushes. Errors: DataLoss naming the file when the
  // write or flush fails (disk full).
  absl::Status write(const JsonObject& record);

  const std::string& path() const { return path_; }

 private:
  struct Closer {
    void operator()(FILE* f) const;
  };
  MetricsWriter(std::unique_ptr<FILE, Closer> file, std::string path)
      : file_(std::move(file)), path_(std::move(path)) {}

  std::unique_ptr<FILE, Closer> file_;
  std::string path_;
};

// One value of the progress line.
struct ProgressItem {
  enum class Style : uint8_t {
    kNumber,  // 4 significant digits: "2.314", "0.0003"
    kSi,      // 3 significant digits with an SI prefix: "950", "12.3k", "1.5M"
  };
  std::string label;  // printed before the number ("loss 2.314"); may be empty
  double value = 0;
  std::string unit;  // printed after the number ("12.3k tok/s"); may be empty
  Style style = Style::kNumber;

  static ProgressItem number(std::string label, double value) {
    return ProgressItem{std::move(label), value, "", Style::kNumber};
  }
  static ProgressItem rate(double value, std::string unit) {
    return ProgressItem{"", value, std::move(unit), Style::kSi};
  }
};

// "0:41", "12:05", "1:02:03" (h:mm:ss from one hour on), rounded to the nearest second; "?" for
// a negative or non-finite duration.
std::string format_duration(double seconds);
// 3 significant digits and an SI prefix (k, M, G, T): "950", "12.3k", "1M"; "nan", "inf".
std::string format_si(double value);
// 4 significant digits: "2.314", "0.0003", "1.235e+04"; "nan", "inf".
std::string format_number(double value);

// "step 120/300 | loss 2.314 | 12.3k tok/s | ETA 0:41". `step` steps of `total` are done,
// `elapsed_seconds` after the run (re)started at `start_step`; the ETA assumes the remaining steps
// take as long on average as the ones since start_step ("ETA ?" before the first one).
std::string format_progress(int64_t step, int64_t total, double elapsed_seconds,
                            absl::Span<const ProgressItem> items, int64_t start_step = 0);

// Shows progress lines on `out` (not owned; must outlive the printer). Not thread-safe.
class ProgressPrinter {
 public:
  // tty: rewrite one line in place (every update shown); otherwise print a line when
  // step % every == 0 and at the last step. every >= 1 (FATHOM_CHECK).
  ProgressPrinter(FILE* out, bool tty, int64_t every);
  // tty = isatty(out).
  ProgressPrinter(FILE* out, int64_t every);

  // Shows `line` (from format_progress) for step `step` of `total`.
  void update(int64_t step, int64_t total, const std::string& line);
  // A message on a line of its own (an evaluation result, a warning); on a terminal the progress
  // line is cleared first and drawn again below the message.
  void print(const std::string& message);
  // Ends the in-place line with a newline (terminal only). Called by the destructor too.
  void finish();
  ~ProgressPrinter();

  ProgressPrinter(const ProgressPrinter&) = delete;
  ProgressPrinter& operator=(const ProgressPrinter&) = delete;

 private:
  void clear_line();

  FILE* out_;
  bool tty_;
  int64_t every_;
  std::string current_;  // the line shown in place, "" when none
};

}  // namespace fathom::trainer
