#include "model/yaml_util.h"

#include <algorithm>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace fathom::model {

std::string key_path(std::string_view parent, std::string_view key) {
  if (parent.empty()) return std::string(key);
  return absl::StrCat(std::string(parent), ".", std::string(key));
}

int edit_distance(std::string_view a_in, std::string_view b_in) {
  std::string a(a_in), b(b_in);
  absl::AsciiStrToLower(&a);
  absl::AsciiStrToLower(&b);
  const size_t n = a.size(), m = b.size();
  // d[i][j]: distance between a[0, i) and b[0, j).
  std::vector<std::vector<int>> d(n + 1, std::vector<int>(m + 1, 0));
  for (size_t i = 0; i <= n; ++i) d[i][0] = static_cast<int>(i);
  for (size_t j = 0; j <= m; ++j) d[0][j] = static_cast<int>(j);
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      const int cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[n][m];
}

std::string closest_match(std::string_view word, absl::Span<const std::string> candidates) {
  const int limit = std::max<int>(2, static_cast<int>(word.size()) / 3);
  int best = limit + 1;
  std::string match;
  for (const std::string& candidate : candidates) {
    const int d = edit_distance(word, candidate);
    if (d < best) {
      best = d;
      match = candidate;
    }
  }
  if (!match.empty()) return match;
  // A name with a word left out ("qk_rope_dim" for "qk_rope_head_dim"): every '_'-separated word of
  // `word` appears, in order, in the candidate. The candidate with the fewest extra words wins.
  std::string lower(word);
  absl::AsciiStrToLower(&lower);
  const std::vector<std::string> words = absl::StrSplit(lower, '_', absl::SkipEmpty());
  if (words.size() < 2) return "";
  size_t fewest_extra = SIZE_MAX;
  for (const std::string& candidate : candidates) {
    std::string lower_candidate = candidate;
    absl::AsciiStrToLower(&lower_candidate);
    const std::vector<std::string> candidate_words =
        absl::StrSplit(lower_candidate, '_', absl::SkipEmpty());
    size_t next = 0;
    for (const std::string& w : candidate_words) {
      if (next < words.size() && w == words[next]) ++next;
    }
    if (next == words.size() && candidate_words.size() - words.size() < fewest_extra) {
      fewest_extra = candidate_words.size() - words.size();
      match = candidate;
    }
  }
  return match;
}

void ConfigErrors::add(std::string key, std::string message, int line) {
  issues_.push_back(ConfigIssue{std::move(key), std::move(message), line});
}

absl::Status ConfigErrors::to_status() const {
  if (issues_.empty()) return absl::OkStatus();
  std::vector<ConfigIssue> sorted = issues_;
  std::stable_sort(sorted.begin(), sorted.end(), [](const ConfigIssue& a, const ConfigIssue& b) {
    return (a.line > 0 ? a.line : INT_MAX) < (b.line > 0 ? b.line : INT_MAX);
  });
  std::vector<std::string> lines;
  lines.reserve(sorted.size());
  for (const ConfigIssue& issue : sorted) {
    std::string text;
    if (!source_.empty()) {
      absl::StrAppend(&text, source_);
      if (issue.line > 0) absl::StrAppend(&text, ":", issue.line);
      absl::StrAppend(&text, ": ");
    } else if (issue.line > 0) {
      absl::StrAppend(&text, "line ", issue.line, ": ");
    }
    if (!issue.key.empty()) absl::StrAppend(&text, issue.key, ": ");
    absl::StrAppend(&text, issue.message);
    lines.push_back(std::move(text));
  }
  return absl::InvalidArgumentError(absl::StrJoin(lines, "\n"));
}

int line_of(const YAML::Node& node) {
  if (!node.IsDefined()) return 0;
  const YAML::Mark mark = node.Mark();
  return mark.line >= 0 ? mark.line + 1 : 0;
}

namespace {

// How a value that has the wrong type is shown: "'abc'", "nothing (null)", "a list", "a mapping".
std::string describe_node(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return absl::StrCat("'", node.Scalar(), "'");
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Null:
      return "nothing (null)";
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

}  // namespace

MapReader::MapReader(const YAML::Node& map, std::string path, ConfigErrors* errors)
    : map_(map), path_(std::move(path)), errors_(errors) {
  if (!map.IsMap()) {
    errors_->add(path_,
                 absl::StrCat("expected a mapping of keys to values, got ", describe_node(map)),
                 line_of(map));
    return;
  }
  is_map_ = true;
  std::vector<std::string> seen;
  for (const auto& entry : map) {
    const YAML::Node& key = entry.first;
    if (!key.IsScalar()) {
      errors_->add(path_, absl::StrCat("keys must be plain names, got ", describe_node(key)),
                   line_of(key));
      continue;
    }
    if (std::find(seen.begin(), seen.end(), key.Scalar()) != seen.end()) {
      errors_->add(key_path(path_, key.Scalar()), "duplicate key", line_of(key));
      continue;
    }
    seen.push_back(key.Scalar());
  }
}

YAML::Node MapReader::value(std::string_view key) {
  known_.emplace_back(key);
  if (!is_map_) return YAML::Node(YAML::NodeType::Undefined);
  for (const auto& entry : map_) {
    if (entry.first.IsScalar() && entry.first.Scalar() == key) return entry.second;
  }
  return YAML::Node(YAML::NodeType::Undefined);
}

bool MapReader::has(std::string_view key) const {
  if (!is_map_) return false;
  for (const auto& entry : map_) {
    if (entry.first.IsScalar() && entry.first.Scalar() == key) return true;
  }
  return false;
}

int MapReader::line(std::string_view key) const {
  if (!is_map_) return 0;
  for (const auto& entry : map_) {
    if (entry.first.IsScalar() && entry.first.Scalar() == key) return line_of(entry.first);
  }
  return 0;
}

void MapReader::type_error(std::string_view key, const YAML::Node& node,
                           std::string_view expected) {
  // The key's line: yaml-cpp places an empty (null) value at the next token.
  errors_->add(key_path(path_, key),
               absl::StrCat("expected ", std::string(expected), ", got ", describe_node(node)),
               line(key));
}

void MapReader::read(std::string_view key, int64_t* out) {
  const YAML::Node node = value(key);
  if (!node.IsDefined()) return;
  int64_t v = 0;
  // SimpleAtoi accepts surrounding whitespace and a sign, and rejects "1.5", "1e3" and overflow.
  if (!node.IsScalar() || !absl::SimpleAtoi(node.Scalar(), &v)) {
    type_error(key, node, "an integer");
    return;
  }
  *out = v;
}

void MapReader::read(std::string_view key, double* out) {
  const YAML::Node node = value(key);
  if (!node.IsDefined()) return;
  double v = 0;
  if (!node.IsScalar() || !absl::SimpleAtod(node.Scalar(), &v) || !std::isfinite(v)) {
    type_error(key, node, "a finite number");
    return;
  }
  *out = v;
}

void MapReader::read(std::string_view key, bool* out) {
  const YAML::Node node = value(key);
  if (!node.IsDefined()) return;
  bool v = false;
  if (!node.IsScalar() || !YAML::convert<bool>::decode(node, v)) {
    type_error(key, node, "true or false");
    return;
  }
  *out = v;
}

void MapReader::read(std::string_view key, std::string* out) {
  const YAML::Node node = value(key);
  if (!node.IsDefined()) return;
  if (!node.IsScalar()) {
    type_error(key, node, "a string");
    return;
  }
  *out = node.Scalar();
}

void MapReader::read_choice(std::string_view key, absl::Span<const std::string> allowed,
                            std::string* out) {
  const YAML::Node node = value(key);
  if (!node.IsDefined()) return;
  const std::string expected = absl::StrCat("one of '", absl::StrJoin(allowed, "', '"), "'");
  if (!node.IsScalar()) {
    type_error(key, node, expected);
    return;
  }
  const std::string& text = node.Scalar();
  if (std::find(allowed.begin(), allowed.end(), text) != allowed.end()) {
    *out = text;
    return;
  }
  std::string message = absl::StrCat("expected ", expected, ", got '", text, "'");
  const std::string suggestion = closest_match(text, allowed);
  if (!suggestion.empty()) absl::StrAppend(&message, " (did you mean '", suggestion, "'?)");
  errors_->add(key_path(path_, key), std::move(message), line(key));
}

void MapReader::finish() {
  if (!is_map_) return;
  for (const auto& entry : map_) {
    if (!entry.first.IsScalar()) continue;
    const std::string& key = entry.first.Scalar();
    if (std::find(known_.begin(), known_.end(), key) != known_.end()) continue;
    std::string message = "unknown key";
    const std::string suggestion = closest_match(key, known_);
    if (!suggestion.empty()) absl::StrAppend(&message, " (did you mean '", suggestion, "'?)");
    errors_->add(key_path(path_, key), std::move(message), line_of(entry.first));
  }
}

absl::StatusOr<YAML::Node> load_yaml_file(const std::string& file) {
  std::error_code ec;
  if (!std::filesystem::exists(file, ec)) {
    return absl::NotFoundError(absl::StrCat("config file '", file, "' not found"));
  }
  if (std::filesystem::is_directory(file, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config file '", file, "' is a directory, expected a YAML file"));
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("config file '", file, "' cannot be read"));
  std::stringstream text;
  text << in.rdbuf();
  YAML::Node root;
  try {
    root = YAML::Load(text.str());
  } catch (const YAML::Exception& e) {
    std::string where = file;
    if (!e.mark.is_null()) absl::StrAppend(&where, ":", e.mark.line + 1, ":", e.mark.column + 1);
    return absl::InvalidArgumentError(absl::StrCat(where, ": invalid YAML: ", e.msg));
  }
  if (!root.IsDefined() || root.IsNull()) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": the file is empty"));
  }
  return root;
}

}  // namespace fathom::model
