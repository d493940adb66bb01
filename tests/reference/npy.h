// Header-only reader and writer of NumPy .npy files, for exchanging arrays with the Python
// reference implementations in tests/reference/ (golden tests, CONVENTIONS.md 7).
//
// Supported: little-endian f32 ('<f4'), f64 ('<f8') and i32 ('<i4') arrays in C order, format
// versions 1.0 to 3.0 (read) and 1.0 (write, or 2.0 when the header does not fit). Anything else
// (Fortran order, big-endian, other dtypes, truncated data) is an error naming the file and what
// was found. Errors are absl::Status: NotFound when a file to read does not exist, InvalidArgument
// for a malformed or unsupported file, Internal for a failed write.
//
//   absl::StatusOr<NpyArray> a = read_npy("/tmp/x.npy");   // a->shape, a->as<float>()
//   absl::Status s = write_npy("/tmp/y.npy", {2, 3}, values.data());  // float*, double*, int32_t*
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/types/span.h"

namespace fathom::testing {

enum class NpyDtype : uint8_t { kF32, kF64, kI32 };

inline const char* npy_descr(NpyDtype dtype) {
  switch (dtype) {
    case NpyDtype::kF32:
      return "<f4";
    case NpyDtype::kF64:
      return "<f8";
    case NpyDtype::kI32:
      return "<i4";
  }
  return "?";
}

inline size_t npy_item_size(NpyDtype dtype) { return dtype == NpyDtype::kF64 ? 8 : 4; }

template <typename T>
constexpr NpyDtype npy_dtype_of();
template <>
constexpr NpyDtype npy_dtype_of<float>() {
  return NpyDtype::kF32;
}
template <>
constexpr NpyDtype npy_dtype_of<double>() {
  return NpyDtype::kF64;
}
template <>
constexpr NpyDtype npy_dtype_of<int32_t>() {
  return NpyDtype::kI32;
}

// One array as read from a file: its dtype, shape ({} for a scalar) and raw little-endian bytes.
struct NpyArray {
  std::string path;  // where it was read from, for messages
  NpyDtype dtype = NpyDtype::kF32;
  std::vector<int64_t> shape;
  std::vector<char> bytes;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  std::string shape_str() const { return absl::StrCat("(", absl::StrJoin(shape, ", "), ")"); }

  // The values as T; InvalidArgument naming the file when the dtype is not T's.
  template <typename T>
  absl::StatusOr<std::vector<T>> as() const {
    if (dtype != npy_dtype_of<T>()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": dtype is '", npy_descr(dtype),
                                                     "', expected '", npy_descr(npy_dtype_of<T>()),
                                                     "'"));
    }
    std::vector<T> out(static_cast<size_t>(numel()));
    std::memcpy(out.data(), bytes.data(), bytes.size());
    return out;
  }

  // Every value widened to double, whatever the dtype.
  std::vector<double> to_doubles() const {
    std::vector<double> out(static_cast<size_t>(numel()));
    for (size_t i = 0; i < out.size(); ++i) {
      if (dtype == NpyDtype::kF32) {
        float v;
        std::memcpy(&v, bytes.data() + 4 * i, 4);
        out[i] = v;
      } else if (dtype == NpyDtype::kF64) {
        std::memcpy(&out[i], bytes.data() + 8 * i, 8);
      } else {
        int32_t v;
        std::memcpy(&v, bytes.data() + 4 * i, 4);
        out[i] = v;
      }
    }
    return out;
  }
};

namespace npy_internal {

static_assert(sizeof(float) == 4 && sizeof(double) == 8);

inline bool host_is_little_endian() {
  const uint16_t one = 1;
  unsigned char first;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

// The value text of `key` in a header dict such as
// "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }": a quoted string, a word, or a
// parenthesised tuple. Empty when the key is absent.
inline std::string dict_value(std::string_view header, std::string_view key) {
  for (const char quote : {'\'', '"'}) {
    std::string pattern(1, quote);
    pattern.append(key.data(), key.size());
    pattern.push_back(quote);
    size_t pos = header.find(pattern);
    if (pos == std::string_view::npos) continue;
    pos = header.find(':', pos + pattern.size());
    if (pos == std::string_view::npos) return "";
    ++pos;
    while (pos < header.size() && header[pos] == ' ') ++pos;
    if (pos >= header.size()) return "";
    if (header[pos] == '\'' || header[pos] == '"') {
      const size_t end = header.find(header[pos], pos + 1);
      if (end == std::string_view::npos) return "";
      return std::string(header.substr(pos + 1, end - pos - 1));
    }
    if (header[pos] == '(') {
      const size_t end = header.find(')', pos);
      if (end == std::string_view::npos) return "";
      return std::string(header.substr(pos, end - pos + 1));
    }
    size_t end = pos;
    while (end < header.size() && header[end] != ',' && header[end] != '}') ++end;
    std::string_view word = header.substr(pos, end - pos);
    while (!word.empty() && word.back() == ' ') word.remove_suffix(1);
    return std::string(word);
  }
  return "";
}

// "(2, 3)", "(5,)", "()" -> dims; false when malformed.
inline bool parse_shape(const std::string& text, std::vector<int64_t>* shape) {
  if (text.size() < 2 || text.front() != '(' || text.back() != ')') return false;
  shape->clear();
  size_t i = 1;
  const size_t end = text.size() - 1;
  while (i < end) {
    while (i < end && (text[i] == ' ' || text[i] == ',')) ++i;
    if (i >= end) break;
    int64_t v = 0;
    bool digits = false;
    while (i < end && text[i] >= '0' && text[i] <= '9') {
      if (v > (int64_t{1} << 50)) return false;
      v = v * 10 + (text[i] - '0');
      ++i;
      digits = true;
    }
    // A trailing 'L' (Python 2 longs) is tolerated.
    if (i < end && text[i] == 'L') ++i;
    if (!digits || (i < end && text[i] != ',' && text[i] != ' ')) return false;
    shape->push_back(v);
  }
  return true;
}

}  // namespace npy_internal

// Reads a whole .npy file.
inline absl::StatusOr<NpyArray> read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open .npy file"));
  }
  const std::vector<char> file((std::istreambuf_iterator<char>(in)),
                               std::istreambuf_iterator<char>());
  auto bad = [&path](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a supported .npy file: ", what));
  };
  static constexpr char kMagic[] = "\x93NUMPY";
  if (file.size() < 10 || std::memcmp(file.data(), kMagic, 6) != 0) {
    return bad("missing the \\x93NUMPY magic");
  }
  const int major = static_cast<unsigned char>(file[6]);
  size_t header_len = 0;
  size_t header_start = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(file[8]) |
                 (static_cast<size_t>(static_cast<unsigned char>(file[9])) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (file.size() < 12) return bad("truncated header");
    for (int i = 3; i >= 0; --i) {
      header_len = (header_len << 8) | static_cast<unsigned char>(file[8 + i]);
    }
    header_start = 12;
  } else {
    return bad(absl::StrCat("format version ", major, " (expected 1, 2 or 3)"));
  }
  if (file.size() < header_start + header_len) return bad("truncated header");
  const std::string_view header(file.data() + header_start, header_len);

  NpyArray array;
  array.path = path;
  const std::string descr = npy_internal::dict_value(header, "descr");
  if (descr == "<f4") {
    array.dtype = NpyDtype::kF32;
  } else if (descr == "<f8") {
    array.dtype = NpyDtype::kF64;
  } else if (descr == "<i4") {
    array.dtype = NpyDtype::kI32;
  } else {
    return bad(absl::StrCat("dtype '", descr, "' (supported: '<f4', '<f8', '<i4')"));
  }
  const std::string fortran = npy_internal::dict_value(header, "fortran_order");
  if (fortran != "False") {
    return bad(absl::StrCat("fortran_order is '", fortran, "' (only C order is supported)"));
  }
  const std::string shape_text = npy_internal::dict_value(header, "shape");
  if (!npy_internal::parse_shape(shape_text, &array.shape)) {
    return bad(absl::StrCat("cannot parse shape '", shape_text, "'"));
  }
  if (!npy_internal::host_is_little_endian()) return bad("this host is big-endian");
  const size_t data_bytes = static_cast<size_t>(array.numel()) * npy_item_size(array.dtype);
  const size_t data_start = header_start + header_len;
  if (file.size() - data_start != data_bytes) {
    return bad(absl::StrCat("shape ", array.shape_str(), " of '", descr, "' needs ", data_bytes,
                            " data bytes, the file has ", file.size() - data_start));
  }
  array.bytes.assign(file.begin() + static_cast<std::ptrdiff_t>(data_start), file.end());
  return array;
}

// Writes `data` (numel(shape) values of dtype, C order) to `path`, replacing the file.
inline absl::Status write_npy(const std::string& path, NpyDtype dtype,
                              absl::Span<const int64_t> shape, const void* data) {
  if (!npy_internal::host_is_little_endian()) {
    return absl::InternalError(absl::StrCat(path, ": cannot write .npy on a big-endian host"));
  }
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat(path, ": negative dimension"));
    numel *= d;
  }
  std::string dims = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) dims += ",";
  std::string header = absl::StrCat("{'descr': '", npy_descr(dtype),
                                    "', 'fortran_order': False, 'shape': (", dims, "), }");
  // Magic, version and length prefix, then the header padded with spaces and ended by '\n' so
  // that the data starts on a 64-byte boundary.
  const bool v1 = header.size() + 1 + 10 <= 65535;
  const size_t prefix = v1 ? 10 : 12;
  header.append((64 - (prefix + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::string out("\x93NUMPY", 6);
  out += static_cast<char>(v1 ? 1 : 2);
  out += '\0';
  const size_t len = header.size();
  for (size_t i = 0; i < (v1 ? 2u : 4u); ++i) out += static_cast<char>((len >> (8 * i)) & 0xff);
  out += header;

  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  if (!file) return absl::InternalError(absl::StrCat(path, ": cannot create .npy file"));
  file.write(out.data(), static_cast<std::streamsize>(out.size()));
  file.write(static_cast<const char*>(data),
             static_cast<std::streamsize>(static_cast<size_t>(numel) * npy_item_size(dtype)));
  file.close();
  if (!file) return absl::InternalError(absl::StrCat(path, ": writing .npy file failed"));
  return absl::OkStatus();
}

template <typename T>
absl::Status write_npy(const std::string& path, absl::Span<const int64_t> shape, const T* data) {
  return write_npy(path, npy_dtype_of<T>(), shape, data);
}

}  // namespace fathom::testing
