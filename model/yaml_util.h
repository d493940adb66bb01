// Reading YAML configs into typed structs with errors a user can act on (DESIGN.md decision 6).
//
// Every problem is collected with its key path ("model.n_heads") and, when the file is known, its
// line, so that one run of the parser reports all of them:
//   configs/models/tiny.yaml:7: model.n_heads: expected an integer, got 'abc'
//   configs/models/tiny.yaml:9: model.n_layer: unknown key (did you mean 'n_layers'?)
// Nothing here throws: yaml-cpp exceptions are caught and turned into absl::Status.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "yaml-cpp/yaml.h"

namespace fathom::model {

// "parent.key", or "key" when parent is empty.
std::string key_path(std::string_view parent, std::string_view key);

// Optimal-string-alignment distance (insertions, deletions, substitutions, adjacent swaps),
// case-insensitive.
int edit_distance(std::string_view a, std::string_view b);

// The candidate closest to `word` if it is close enough to be a plausible typo (distance at most
// max(2, |word| / 3)); failing that, a candidate that contains all of `word`'s '_'-separated words
// in order (a word left out: "qk_rope_dim" -> "qk_rope_head_dim"); "" otherwise. Ties go to the
// earliest candidate.
std::string closest_match(std::string_view word, absl::Span<const std::string> candidates);

// One problem found in a config.
struct ConfigIssue {
  std::string key;      // key path, e.g. "model.n_heads"; empty for whole-file problems
  std::string message;  // what is wrong and what was expected
  int line = 0;         // 1-based line in the source file, 0 when unknown
};

// An ordered list of issues, turned into one absl::Status at the end.
class ConfigErrors {
 public:
  // source: the file name used as the prefix of every line ("" for none).
  explicit ConfigErrors(std::string source = "") : source_(std::move(source)) {}

  void add(std::string key, std::string message, int line = 0);
  bool empty() const { return issues_.empty(); }
  const std::vector<ConfigIssue>& issues() const { return issues_; }

  // OK when empty; otherwise InvalidArgument with one line per issue, "source:line: key: message"
  // (parts that are unknown are left out), in file order: by line, then the issues without a line
  // in the order added.
  absl::Status to_status() const;

 private:
  std::string source_;
  std::vector<ConfigIssue> issues_;
};

// 1-based line of a node, 0 when yaml-cpp does not know it.
int line_of(const YAML::Node& node);

// Reads the fields of one YAML mapping, recording errors in a ConfigErrors instead of stopping.
// Usage: construct, call read() for every field the struct has, then finish() to report keys that
// were never asked for. A field that is absent keeps its current (default) value. A field that is
// present but malformed records an error and also leaves the value unchanged. Both `map` and
// `errors` must outlive the reader.
class MapReader {
 public:
  // path: the key path of `map` ("model"). If `map` is not a mapping, one error is recorded and
  // every read() is a no-op. Duplicate keys are recorded as errors.
  MapReader(const YAML::Node& map, std::string path, ConfigErrors* errors);

  // Integer: a plain decimal scalar ("64", "-3"); "1.5", "1e3", "abc", null, lists and maps are
  // errors ("model.dim: expected an integer, got 'abc'").
  void read(std::string_view key, int64_t* out);
  // Finite real number: "1e-6", "0.5", "10000"; "inf", "nan", "abc" are errors.
  void read(std::string_view key, double* out);
  // true/false (yaml-cpp's spellings: true/false, yes/no, on/off, any case).
  void read(std::string_view key, bool* out);
  // Any scalar, as written.
  void read(std::string_view key, std::string* out);
  // One of `allowed`; anything else is an error listing them, with a "did you mean" suggestion.
  void read_choice(std::string_view key, absl::Span<const std::string> allowed, std::string* out);

  // The value of `key` as it is (a nested mapping, a list, a scalar), marking the key as known, so
  // that a section can be handed to its own reader; an undefined node when absent.
  YAML::Node node(std::string_view key) { return value(key); }

  // Whether `key` is present in the mapping.
  bool has(std::string_view key) const;
  // The line of `key` in the file (1-based), 0 when absent or unknown.
  int line(std::string_view key) const;

  // Records "unknown key" for every key of the mapping that no read*() call asked for, with the
  // closest asked-for key as a suggestion. Call once, after all reads.
  void finish();

 private:
  // The value node of `key`, or an undefined node; marks the key as known.
  YAML::Node value(std::string_view key);
  void type_error(std::string_view key, const YAML::Node& node, std::string_view expected);

  YAML::Node map_;
  std::string path_;
  ConfigErrors* errors_;
  bool is_map_ = false;
  std::vector<std::string> known_;
};

// Parses a whole YAML file. Errors: NotFound naming `file` when it does not exist or cannot be
// read; InvalidArgument "file:line:column: invalid YAML: ..." for a syntax error; InvalidArgument
// when the file holds no document.
absl::StatusOr<YAML::Node> load_yaml_file(const std::string& file);

}  // namespace fathom::model
