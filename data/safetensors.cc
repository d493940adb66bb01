#include "data/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/check.h"
#include "nlohmann/json.hpp"

namespace fathom::data {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;  // the reference implementation's limit

struct DTypeEntry {
  StDType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {StDType::kF64, "F64", 8},   {StDType::kF32, "F32", 4},        {StDType::kF16, "F16", 2},
    {StDType::kBF16, "BF16", 2}, {StDType::kF8E4M3, "F8_E4M3", 1}, {StDType::kF8E5M2, "F8_E5M2", 1},
    {StDType::kI64, "I64", 8},   {StDType::kI32, "I32", 4},        {StDType::kI16, "I16", 2},
    {StDType::kI8, "I8", 1},     {StDType::kU64, "U64", 8},        {StDType::kU32, "U32", 4},
    {StDType::kU16, "U16", 2},   {StDType::kU8, "U8", 1},          {StDType::kBool, "BOOL", 1},
};

const DTypeEntry& entry_of(StDType dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == dtype) return e;
  }
  FATHOM_CHECK(false) << "unknown StDType " << static_cast<int>(dtype);
  return kDTypes[0];
}

absl::Status errno_error(int error, std::string_view what, const std::string& path) {
  return absl::Status(absl::ErrnoToStatusCode(error),
                      absl::StrCat(std::string(what), " ", path, ": ", std::strerror(error)));
}

// IEEE binary16 -> binary32, exact (subnormals, infinities and NaN included).
float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  uint32_t mantissa = h & 0x3FFu;
  uint32_t bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {
    // Subnormal: normalise the mantissa.
    int e = -1;
    do {
      ++e;
      mantissa <<= 1;
    } while ((mantissa & 0x400u) == 0);
    bits = sign | static_cast<uint32_t>(112 - e) << 23 | ((mantissa & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Multiplies non-negative sizes, false on overflow of uint64.
bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) return false;
  *out = a * b;
  return true;
}

std::string json_type(const json& j) { return j.type_name(); }

// Writes `bytes` to a temporary file next to `path`, fsyncs it, renames it to `path` and fsyncs
// the directory. The temporary is removed on failure.
absl::Status write_pieces_atomically(const std::string& path,
                                     absl::Span<const absl::Span<const uint8_t>> pieces) {
  const fs::path final_path(path);
  const fs::path dir = final_path.has_parent_path() ? final_path.parent_path() : fs::path(".");
  const std::string tmp = absl::StrCat(path, ".tmp-", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno_error(errno, "cannot create", tmp);
  auto fail = [&](int error, std::string_view what) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return errno_error(error, what, tmp);
  };
  for (absl::Span<const uint8_t> piece : pieces) {
    size_t done = 0;
    while (done < piece.size()) {
      const ssize_t n = ::write(fd, piece.data() + done, piece.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        return fail(errno, "cannot write");
      }
      done += static_cast<size_t>(n);
    }
  }
  if (::fsync(fd) != 0) return fail(errno, "fsync failed for");
  if (::close(fd) != 0) {
    const int error = errno;
    ::unlink(tmp.c_str());
    return errno_error(error, "cannot close", tmp);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    ::unlink(tmp.c_str());
    return errno_error(error, "cannot rename to", path);
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return errno_error(errno, "cannot open directory", dir.string());
  const int rc = ::fsync(dfd);
  const int error = errno;
  ::close(dfd);
  if (rc != 0) return errno_error(error, "fsync failed for", dir.string());
  return absl::OkStatus();
}

// Parses `text` as JSON, rejecting duplicate keys in any object. `what` names the text in errors.
absl::StatusOr<json> parse_json_strict(std::string_view text, const std::string& what) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string duplicate;
  json::parser_callback_t callback = [&](int /*depth*/, json::parse_event_t event,
                                         json& parsed) -> bool {
    if (event == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (event == json::parse_event_t::key && !keys.empty()) {
      const std::string key = parsed.get<std::string>();
      if (!keys.back().insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  json parsed;
  try {
    parsed = json::parse(text.begin(), text.end(), callback);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": bad JSON: ", e.what()));
  }
  if (!duplicate.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": duplicate key '", duplicate, "'"));
  }
  return parsed;
}

}  // namespace

std::string_view st_dtype_name(StDType dtype) { return entry_of(dtype).name; }
size_t st_dtype_size(StDType dtype) { return entry_of(dtype).size; }

absl::StatusOr<StDType> parse_st_dtype(std::string_view name) {
  std::vector<std::string> names;
  for (const DTypeEntry& e : kDTypes) {
    if (name == e.name) return e.dtype;
    names.emplace_back(e.name);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", std::string(name),
                                                 "' (expected one of ", absl::StrJoin(names, ", "),
                                                 ")"));
}

absl::StatusOr<DType> fathom_dtype_for(StDType dtype) {
  switch (dtype) {
    case StDType::kF16:
    case StDType::kF32:
      return DType::kF32;
    case StDType::kBF16:
      return DType::kBF16;
    case StDType::kF8E4M3:
      return DType::kF8E4M3;
    case StDType::kF8E5M2:
      return DType::kF8E5M2;
    case StDType::kI64:
      return DType::kI64;
    case StDType::kI32:
      return DType::kI32;
    case StDType::kU8:
    case StDType::kBool:
      return DType::kU8;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("dtype ", std::string(st_dtype_name(dtype)),
                       " has no fathom dtype (supported: F32, "
                       "F16, BF16, F8_E4M3, F8_E5M2, I64, I32, U8, BOOL)"));
  }
}

StDType st_dtype_for(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return StDType::kF32;
    case DType::kBF16:
      return StDType::kBF16;
    case DType::kF8E4M3:
      return StDType::kF8E4M3;
    case DType::kF8E5M2:
      return StDType::kF8E5M2;
    case DType::kI32:
      return StDType::kI32;
    case DType::kI64:
      return StDType::kI64;
    case DType::kU8:
      return StDType::kU8;
  }
  FATHOM_CHECK(false) << "st_dtype_for: unknown dtype";
  return StDType::kF32;
}

int64_t StTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---- SafetensorsFile ----

struct SafetensorsFile::Mapping {
  void* address = nullptr;
  size_t length = 0;
  ~Mapping() {
    if (address != nullptr && length > 0) ::munmap(address, length);
  }
};

SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

absl::StatusOr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  SafetensorsFile file;
  file.path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return errno_error(errno, "cannot open", path);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int error = errno;
    ::close(fd);
    return errno_error(error, "cannot stat", path);
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  file.mapping_ = std::make_unique<Mapping>();
  if (size > 0) {
    void* address = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (address == MAP_FAILED) {
      const int error = errno;
      ::close(fd);
      return errno_error(error, "cannot map", path);
    }
    file.mapping_->address = address;
    file.mapping_->length = size;
  }
  ::close(fd);  // the mapping stays valid
  const auto* base = static_cast<const uint8_t*>(file.mapping_->address);

  if (size < 8) {
    return absl::DataLossError(absl::StrCat(path, ": ", size,
                                            " bytes, too short for a safetensors file (the "
                                            "header length alone takes 8): truncated?"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];
  if (header_len < 2 || header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length ", header_len,
                                                   " is not between 2 and ", kMaxHeaderBytes,
                                                   " bytes: not a safetensors file?"));
  }
  if (header_len > size - 8) {
    return absl::DataLossError(absl::StrCat(path, ": header length ", header_len,
                                            " exceeds the file (", size, " bytes): truncated?"));
  }
  const std::string_view header_text(reinterpret_cast<const char*>(base + 8), header_len);
  FATHOM_ASSIGN_OR_RETURN(json header,
                          parse_json_strict(header_text, absl::StrCat(path, ": header")));
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header is a JSON ", json_type(header), ", expected an object"));
  }
  const uint64_t data_len = size - 8 - header_len;
  file.data_ = base + 8 + header_len;

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& value = it.value();
    if (name == "__metadata__") {
      if (!value.is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": __metadata__ is a JSON ",
                                                       json_type(value),
                                                       ", expected an object of strings"));
      }
      for (auto m = value.begin(); m != value.end(); ++m) {
        if (!m.value().is_string()) {
          return absl::InvalidArgumentError(absl::StrCat(path, ": __metadata__ key '", m.key(),
                                                         "' is a JSON ", json_type(m.value()),
                                                         ", expected a string"));
        }
        file.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = absl::StrCat(path, ": tensor '", name, "'");
    if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(where, ": empty name"));
    if (!value.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": entry is a JSON ", json_type(value), ", expected an object"));
    }
    for (auto k = value.begin(); k != value.end(); ++k) {
      if (k.key() != "dtype" && k.key() != "shape" && k.key() != "data_offsets") {
        return absl::InvalidArgumentError(absl::StrCat(where, ": unknown key '", k.key(),
                                                       "' (expected dtype, shape, data_offsets)"));
      }
    }
    for (const char* key : {"dtype", "shape", "data_offsets"}) {
      if (!value.contains(key)) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": no '", key, "'"));
      }
    }
    StTensorInfo info;
    info.name = name;
    if (!value["dtype"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": dtype is a JSON ", json_type(value["dtype"]), ", expected a string"));
    }
    absl::StatusOr<StDType> dtype = parse_st_dtype(value["dtype"].get<std::string>());
    if (!dtype.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", dtype.status().message()));
    }
    info.dtype = *dtype;
    const json& shape = value["shape"];
    if (!shape.is_array() || shape.size() > static_cast<size_t>(Tensor::kMaxDims)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": shape ", shape.dump(),
                                                     " is not a list of at most ", Tensor::kMaxDims,
                                                     " non-negative integers"));
    }
    uint64_t bytes = st_dtype_size(info.dtype);
    for (const json& d : shape) {
      if (!d.is_number_unsigned() ||
          d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          !checked_mul(bytes, d.get<uint64_t>(), &bytes)) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": shape ", shape.dump(),
                         " is not a list of non-negative integers whose byte "
                         "size fits in 64 bits"));
      }
      info.shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
    }
    const json& offsets = value["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": data_offsets ", offsets.dump(),
                                                     " is not two non-negative integers"));
    }
    info.begin = offsets[0].get<uint64_t>();
    info.end = offsets[1].get<uint64_t>();
    if (info.begin > info.end) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": data_offsets ", offsets.dump(), " end before they begin"));
    }
    if (info.end - info.begin != bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": shape ", shape_str(info.shape), " x ", std::string(st_dtype_name(info.dtype)),
          " (", st_dtype_size(info.dtype), " bytes) = ", bytes, " bytes, but data_offsets ",
          offsets.dump(), " hold ", info.end - info.begin));
    }
    file.tensors_.push_back(std::move(info));
  }

  std::sort(file.tensors_.begin(), file.tensors_.end(),
            [](const StTensorInfo& a, const StTensorInfo& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  uint64_t expected = 0;
  const StTensorInfo* previous = nullptr;
  for (const StTensorInfo& info : file.tensors_) {
    const std::string where = absl::StrCat(path, ": tensor '", info.name, "'");
    if (info.begin < expected) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": data_offsets [", info.begin, ", ", info.end, "] overlap tensor '",
                       previous->name, "' [", previous->begin, ", ", previous->end, "]"));
    }
    if (info.begin > expected) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": data_offsets [", info.begin, ", ", info.end, "] leave a gap of ",
                       info.begin - expected, " bytes after ",
                       previous == nullptr ? std::string("the header")
                                           : absl::StrCat("tensor '", previous->name, "'")));
    }
    if (info.end > data_len) {
      return absl::DataLossError(absl::StrCat(where, ": data_offsets [", info.begin, ", ", info.end,
                                              "] reach past the end of the "
                                              "data section (",
                                              data_len, " bytes): truncated?"));
    }
    expected = info.end;
    previous = &info;
  }
  if (expected != data_len) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": the tensors end at byte ", expected,
                                                   " of the data section, but it holds ", data_len,
                                                   " bytes (trailing data)"));
  }
  for (size_t i = 0; i < file.tensors_.size(); ++i) file.index_[file.tensors_[i].name] = i;
  return file;
}

const StTensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::Span<const uint8_t> SafetensorsFile::bytes(const StTensorInfo& info) const {
  return absl::Span<const uint8_t>(data_ + info.begin, info.end - info.begin);
}

absl::StatusOr<Tensor> SafetensorsFile::read(std::string_view name) const {
  const StTensorInfo* info = find(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat(path_, ": no tensor '", std::string(name), "'"));
  }
  absl::StatusOr<DType> dtype = fathom_dtype_for(info->dtype);
  if (!dtype.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": tensor '", std::string(name), "': ", dtype.status().message()));
  }
  Tensor out = Tensor::empty(info->shape, *dtype);
  const absl::Span<const uint8_t> src = bytes(*info);
  if (info->dtype == StDType::kF16) {
    float* dst = out.data<float>();
    for (int64_t i = 0; i < out.numel(); ++i) {
      uint16_t h;
      std::memcpy(&h, src.data() + 2 * i, 2);
      dst[i] = half_to_float(h);
    }
  } else if (!src.empty()) {
    std::memcpy(out.raw_data(), src.data(), src.size());
  }
  return out;
}

// ---- writing ----

absl::Status write_safetensors(const std::string& path, absl::Span<const StNamedTensor> tensors,
                               const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<Tensor> host;
  host.reserve(tensors.size());
  uint64_t offset = 0;
  std::set<std::string> seen;
  for (const StNamedTensor& t : tensors) {
    FATHOM_CHECK(!t.name.empty() && t.name != "__metadata__")
        << "write_safetensors: bad tensor name '" << t.name << "' for " << path;
    FATHOM_CHECK(seen.insert(t.name).second)
        << "write_safetensors: tensor '" << t.name << "' given twice for " << path;
    FATHOM_CHECK(t.tensor.defined()) << "write_safetensors: tensor '" << t.name << "' undefined";
    host.push_back(t.tensor.is_cuda() ? t.tensor.to(Device::cpu()) : t.tensor);
    const uint64_t bytes = host.back().nbytes();
    json entry;
    entry["dtype"] = std::string(st_dtype_name(st_dtype_for(t.tensor.dtype())));
    entry["shape"] = std::vector<int64_t>(t.tensor.shape().begin(), t.tensor.shape().end());
    entry["data_offsets"] = {offset, offset + bytes};
    header[t.name] = std::move(entry);
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - (text.size() + 8) % 8) % 8, ' ');
  uint8_t length[8];
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(n >> (8 * i));
  std::vector<absl::Span<const uint8_t>> pieces;
  pieces.emplace_back(length, 8);
  pieces.emplace_back(reinterpret_cast<const uint8_t*>(text.data()), text.size());
  for (const Tensor& t : host) {
    pieces.emplace_back(static_cast<const uint8_t*>(t.raw_data()), t.nbytes());
  }
  return write_pieces_atomically(path, pieces);
}

absl::Status write_file_atomically(const std::string& path, std::string_view contents) {
  const absl::Span<const uint8_t> piece(reinterpret_cast<const uint8_t*>(contents.data()),
                                        contents.size());
  return write_pieces_atomically(path, {piece});
}

std::vector<int> plan_shards(absl::Span<const uint64_t> bytes, uint64_t max_shard_bytes) {
  std::vector<int> shard(bytes.size());
  int current = 0;
  uint64_t filled = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (filled > 0 && filled + bytes[i] > max_shard_bytes) {
      ++current;
      filled = 0;
    }
    shard[i] = current;
    filled += bytes[i];
  }
  return shard;
}

std::string shard_file_name(int index, int count) {
  if (count == 1) return "model.safetensors";
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", index + 1, count);
  return buf;
}

absl::Status write_safetensors_index(const std::string& dir, absl::Span<const std::string> names,
                                     absl::Span<const std::string> files, uint64_t total_bytes) {
  FATHOM_CHECK_EQ(names.size(), files.size());
  json index;
  index["metadata"] = {{"total_size", total_bytes}};
  json map = json::object();
  for (size_t i = 0; i < names.size(); ++i) map[names[i]] = files[i];
  index["weight_map"] = std::move(map);
  return write_file_atomically((fs::path(dir) / kSafetensorsIndexName).string(),
                               index.dump(2) + "\n");
}

// ---- SafetensorsDir ----

absl::StatusOr<SafetensorsDir> SafetensorsDir::open(const std::string& dir) {
  SafetensorsDir out;
  out.dir_ = dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(dir, ": no such directory"));
  }
  const fs::path index_path = fs::path(dir) / kSafetensorsIndexName;
  if (!fs::exists(index_path, ec)) {
    const fs::path single = fs::path(dir) / "model.safetensors";
    if (!fs::exists(single, ec)) {
      return absl::NotFoundError(
          absl::StrCat(dir, ": neither ", kSafetensorsIndexName, " nor model.safetensors"));
    }
    FATHOM_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(single.string()));
    for (const StTensorInfo& t : file.tensors()) out.where_[t.name] = 0;
    out.files_.push_back(std::move(file));
    return out;
  }
  out.has_index_ = true;
  const std::string index_name = index_path.string();
  std::ifstream in(index_path, std::ios::binary);
  if (!in) return errno_error(errno, "cannot read", index_name);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  FATHOM_ASSIGN_OR_RETURN(json index, parse_json_strict(text, index_name));
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_name, ": expected an object with a 'weight_map' object"));
  }
  std::map<std::string, size_t> file_index;     // file name -> index in files_
  std::map<std::string, std::string> assigned;  // tensor -> file name
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(index_name, ": weight_map['", it.key(),
                                                     "'] is a JSON ", json_type(it.value()),
                                                     ", expected a file name"));
    }
    const std::string file = it.value().get<std::string>();
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..") {
      return absl::InvalidArgumentError(absl::StrCat(index_name, ": weight_map['", it.key(),
                                                     "'] = '", file,
                                                     "' is not a file name in the directory"));
    }
    assigned[it.key()] = file;
    if (!file_index.count(file)) {
      const size_t i = out.files_.size();
      absl::StatusOr<SafetensorsFile> opened =
          SafetensorsFile::open((fs::path(dir) / file).string());
      if (!opened.ok()) {
        if (absl::IsNotFound(opened.status())) {
          return absl::NotFoundError(absl::StrCat(index_name, ": tensor '", it.key(),
                                                  "' is in file '", file,
                                                  "', which does not exist"));
        }
        return opened.status();
      }
      out.files_.push_back(*std::move(opened));
      file_index[file] = i;
    }
  }
  for (const auto& [name, file] : assigned) {
    const size_t i = file_index[file];
    if (out.files_[i].find(name) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          index_name, ": tensor '", name, "' is listed in '", file, "', which does not hold it"));
    }
    out.where_[name] = i;
  }
  for (const SafetensorsFile& f : out.files_) {
    for (const StTensorInfo& t : f.tensors()) {
      if (!assigned.count(t.name)) {
        return absl::InvalidArgumentError(
            absl::StrCat(f.path(), ": tensor '", t.name, "' is not in ", kSafetensorsIndexName));
      }
      if (&out.files_[out.where_[t.name]] != &f) {
        return absl::InvalidArgumentError(absl::StrCat(f.path(), ": tensor '", t.name,
                                                       "' is also held by ",
                                                       out.files_[out.where_[t.name]].path()));
      }
    }
  }
  return out;
}

std::vector<std::string> SafetensorsDir::names() const {
  std::vector<std::string> names;
  names.reserve(where_.size());
  for (const auto& [name, i] : where_) names.push_back(name);
  return names;
}

const StTensorInfo* SafetensorsDir::find(std::string_view name) const {
  const SafetensorsFile* f = file_of(name);
  return f == nullptr ? nullptr : f->find(name);
}

const SafetensorsFile* SafetensorsDir::file_of(std::string_view name) const {
  auto it = where_.find(name);
  return it == where_.end() ? nullptr : &files_[it->second];
}

absl::StatusOr<Tensor> SafetensorsDir::read(std::string_view name) const {
  const SafetensorsFile* f = file_of(name);
  if (f == nullptr)
    return absl::NotFoundError(absl::StrCat(dir_, ": no tensor '", std::string(name), "'"));
  return f->read(name);
}

}  // namespace fathom::data
