#include "trainer/metrics.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/check.h"

namespace fathom::trainer {
namespace {

// Length of the valid UTF-8 sequence starting at s[i], or 0 when the bytes there are not one
// (overlong forms, surrogates and code points above U+10FFFF are invalid).
size_t utf8_sequence_length(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  size_t n = 0;
  uint32_t cp = 0;
  if (b0 < 0x80) return 1;
  if (b0 >= 0xc2 && b0 <= 0xdf) {
    n = 2;
    cp = b0 & 0x1f;
  } else if (b0 >= 0xe0 && b0 <= 0xef) {
    n = 3;
    cp = b0 & 0x0f;
  } else if (b0 >= 0xf0 && b0 <= 0xf4) {
    n = 4;
    cp = b0 & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i + k) & 0x3f);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff))) return 0;
  if (cp >= 0xd800 && cp <= 0xdfff) return 0;
  return n;
}

template <typename T>
std::string shortest(T v) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof(buf), v);
  FATHOM_CHECK(result.ec == std::errc()) << "formatting " << v;
  return std::string(buf, result.ptr);
}

template <typename T>
std::string json_array(absl::Span<const T> values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += ", ";
    if constexpr (std::is_integral_v<T>) {
      out += std::to_string(values[i]);
    } else {
      out += shortest(values[i]);
    }
  }
  return out + "]";
}

std::string non_finite(double v) {
  if (std::isnan(v)) return "nan";
  return v > 0 ? "inf" : "-inf";
}

}  // namespace

std::string json_string(std::string_view s) {
  std::string out = "\"";
  out.reserve(s.size() + 2);
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else if (c < 0x80) {
          out += static_cast<char>(c);
        } else {
          const size_t n = utf8_sequence_length(s, i);
          if (n == 0) {
            out += "\\ufffd";
            ++i;
          } else {
            out.append(s.substr(i, n));
            i += n;
          }
          continue;
        }
    }
    ++i;
  }
  return out + "\"";
}

std::string json_number(double v) { return shortest(v); }
std::string json_number(float v) { return shortest(v); }

JsonObject& JsonObject::add_raw(std::string_view key, std::string_view json) {
  FATHOM_CHECK(std::find(keys_.begin(), keys_.end(), key) == keys_.end())
      << "JsonObject: key '" << key << "' added twice";
  if (!keys_.empty()) body_ += ", ";
  absl::StrAppend(&body_, json_string(key), ": ", absl::string_view(json.data(), json.size()));
  keys_.emplace_back(key);
  return *this;
}

JsonObject& JsonObject::add(std::string_view key, absl::Span<const double> values) {
  return add_raw(key, json_array(values));
}
JsonObject& JsonObject::add(std::string_view key, absl::Span<const float> values) {
  return add_raw(key, json_array(values));
}
JsonObject& JsonObject::add(std::string_view key, absl::Span<const int64_t> values) {
  return add_raw(key, json_array(values));
}

void MetricsWriter::Closer::operator()(FILE* f) const {
  if (f != nullptr) std::fclose(f);
}

absl::StatusOr<MetricsWriter> MetricsWriter::open(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::Status(
        absl::ErrnoToStatusCode(ec.value()),
        absl::StrCat("metrics: cannot create directory '", dir, "': ", ec.message()));
  }
  const std::string path = (std::filesystem::path(dir) / "metrics.jsonl").string();
  FILE* f = std::fopen(path.c_str(), "a");
  if (f == nullptr) {
    const int err = errno;
    return absl::Status(absl::ErrnoToStatusCode(err),
                        absl::StrCat("metrics: cannot open '", path, "': ", std::strerror(err)));
  }
  return MetricsWriter(std::unique_ptr<FILE, Closer>(f), path);
}

absl::Status MetricsWriter::write(const JsonObject& record) {
  const std::string line = record.str() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_.get()) != line.size() ||
      std::fflush(file_.get()) != 0) {
    const int err = errno;
    return absl::DataLossError(
        absl::StrCat("metrics: writing '", path_, "' failed: ", std::strerror(err)));
  }
  return absl::OkStatus();
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = std::llround(seconds);
  const int64_t h = s / 3600, m = (s % 3600) / 60, sec = s % 60;
  if (h > 0) return absl::StrFormat("%d:%02d:%02d", h, m, sec);
  return absl::StrFormat("%d:%02d", m, sec);
}

std::string format_si(double value) {
  if (!std::isfinite(value)) return non_finite(value);
  static constexpr const char* kPrefixes[] = {"", "k", "M", "G", "T"};
  int prefix = 0;
  double scaled = value;
  // 999.5 and up would print as "1e+03" with 3 significant digits: use the next prefix.
  while (std::fabs(scaled) >= 999.5 && prefix < 4) {
    scaled /= 1000;
    ++prefix;
  }
  return absl::StrCat(absl::StrFormat("%.3g", scaled), kPrefixes[prefix]);
}

std::string format_number(double value) {
  if (!std::isfinite(value)) return non_finite(value);
  return absl::StrFormat("%.4g", value);
}

std::string format_progress(int64_t step, int64_t total, double elapsed_seconds,
                            absl::Span<const ProgressItem> items, int64_t start_step) {
  std::string line = absl::StrCat("step ", step, "/", total);
  for (const ProgressItem& item : items) {
    line += " | ";
    if (!item.label.empty()) absl::StrAppend(&line, item.label, " ");
    line +=
        item.style == ProgressItem::Style::kSi ? format_si(item.value) : format_number(item.value);
    if (!item.unit.empty()) absl::StrAppend(&line, " ", item.unit);
  }
  const int64_t done = step - start_step;
  const double eta = done > 0 ? elapsed_seconds / static_cast<double>(done) *
                                    static_cast<double>(std::max<int64_t>(0, total - step))
                              : -1.0;
  absl::StrAppend(&line, " | ETA ", format_duration(eta));
  return line;
}

ProgressPrinter::ProgressPrinter(FILE* out, bool tty, int64_t every)
    : out_(out), tty_(tty), every_(every) {
  FATHOM_CHECK(out != nullptr) << "ProgressPrinter: no output stream";
  FATHOM_CHECK(every >= 1) << "ProgressPrinter: every must be >= 1, got " << every;
}

ProgressPrinter::ProgressPrinter(FILE* out, int64_t every)
    : ProgressPrinter(out, out != nullptr && isatty(fileno(out)) == 1, every) {}

ProgressPrinter::~ProgressPrinter() { finish(); }

void ProgressPrinter::clear_line() {
  // Overwrite with spaces rather than an escape sequence, which not every terminal knows.
  if (!current_.empty()) std::fprintf(out_, "\r%s\r", std::string(current_.size(), ' ').c_str());
}

void ProgressPrinter::update(int64_t step, int64_t total, const std::string& line) {
  if (tty_) {
    // Pad to the length of the previous line so that none of it is left over.
    std::string shown = line;
    if (shown.size() < current_.size()) shown.append(current_.size() - shown.size(), ' ');
    std::fprintf(out_, "\r%s", shown.c_str());
    current_ = line;
  } else if (step % every_ == 0 || step == total) {
    std::fprintf(out_, "%s\n", line.c_str());
  }
  std::fflush(out_);
}

void ProgressPrinter::print(const std::string& message) {
  if (tty_ && !current_.empty()) {
    clear_line();
    std::fprintf(out_, "%s\n%s", message.c_str(), current_.c_str());
  } else {
    std::fprintf(out_, "%s\n", message.c_str());
  }
  std::fflush(out_);
}

void ProgressPrinter::finish() {
  if (tty_ && !current_.empty()) {
    std::fprintf(out_, "\n");
    std::fflush(out_);
    current_.clear();
  }
}

}  // namespace fathom::trainer
