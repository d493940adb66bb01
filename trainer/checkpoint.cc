#include "trainer/checkpoint.h"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <set>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/check.h"
#include "model/yaml_util.h"

namespace fathom::trainer {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kFormatVersion = 1;
constexpr char kFormatAttr[] = "fathom_checkpoint";
constexpr char kTensorsGroup[] = "tensors";
constexpr char kMetaGroup[] = "meta";
constexpr char kMetaU64Group[] = "meta/u64";
constexpr char kMetaTextGroup[] = "meta/text";
// Chunks of at most this many bytes: each gets its own Fletcher-32 checksum, and a reader of a row
// range reads at most two partly needed chunks.
constexpr int64_t kChunkBytes = 8 << 20;
// Guards against allocating for a nonsensical "shard-00000-of-99999999999.h5".
constexpr int64_t kMaxShards = 1 << 20;

// ---- HDF5 plumbing ----

// Owns one HDF5 identifier and closes it with the matching H5?close function.
class Hid {
 public:
  using Closer = herr_t (*)(hid_t);
  Hid() = default;
  Hid(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Hid(Hid&& other) noexcept : id_(std::exchange(other.id_, -1)), closer_(other.closer_) {}
  Hid& operator=(Hid&& other) noexcept {
    if (this != &other) {
      close();
      id_ = std::exchange(other.id_, -1);
      closer_ = other.closer_;
    }
    return *this;
  }
  Hid(const Hid&) = delete;
  Hid& operator=(const Hid&) = delete;
  ~Hid() { close(); }

  bool valid() const { return id_ >= 0; }
  hid_t get() const { return id_; }
  // Closes now; false when HDF5 reports an error (for files: flushing the data failed).
  bool close() {
    if (id_ < 0) return true;
    const bool ok = closer_(id_) >= 0;
    id_ = -1;
    return ok;
  }

 private:
  hid_t id_ = -1;
  Closer closer_ = nullptr;
};

// Turns HDF5's automatic error printing off for the lifetime of the guard, then restores it.
class SilenceHdf5Errors {
 public:
  SilenceHdf5Errors() {
    H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~SilenceHdf5Errors() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }
  SilenceHdf5Errors(const SilenceHdf5Errors&) = delete;
  SilenceHdf5Errors& operator=(const SilenceHdf5Errors&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

herr_t keep_innermost_error(unsigned, const H5E_error2_t* error, void* data) {
  if (error->desc != nullptr && error->desc[0] != '\0') {
    *static_cast<std::string*>(data) = error->desc;
  }
  return 0;
}

// The innermost message on HDF5's error stack (the root cause, e.g. "truncated file: eof = ..."),
// then clears the stack.
std::string hdf5_error() {
  std::string desc;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, keep_innermost_error, &desc);
  H5Eclear2(H5E_DEFAULT);
  return desc.empty() ? "HDF5 call failed" : "HDF5: " + desc;
}

Hid make_space(absl::Span<const hsize_t> dims) {
  if (dims.empty()) return Hid(H5Screate(H5S_SCALAR), H5Sclose);
  return Hid(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
}

hid_t file_type(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return H5T_IEEE_F32LE;
    case DType::kBF16:
      return H5T_STD_U16LE;
    case DType::kF8E4M3:
    case DType::kF8E5M2:
    case DType::kU8:
      return H5T_STD_U8LE;
    case DType::kI32:
      return H5T_STD_I32LE;
    case DType::kI64:
      return H5T_STD_I64LE;
  }
  FATHOM_CHECK(false) << "unknown dtype " << static_cast<int>(dtype);
  return -1;
}

hid_t memory_type(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return H5T_NATIVE_FLOAT;
    case DType::kBF16:
      return H5T_NATIVE_UINT16;
    case DType::kF8E4M3:
    case DType::kF8E5M2:
    case DType::kU8:
      return H5T_NATIVE_UINT8;
    case DType::kI32:
      return H5T_NATIVE_INT32;
    case DType::kI64:
      return H5T_NATIVE_INT64;
  }
  FATHOM_CHECK(false) << "unknown dtype " << static_cast<int>(dtype);
  return -1;
}

std::string dtype_str(DType dtype) { return std::string(dtype_name(dtype)); }

bool parse_dtype(std::string_view name, DType* dtype) {
  for (DType d : {DType::kF32, DType::kBF16, DType::kF8E4M3, DType::kF8E5M2, DType::kI32,
                  DType::kI64, DType::kU8}) {
    if (dtype_name(d) == name) {
      *dtype = d;
      return true;
    }
  }
  return false;
}

// Dataset names: HDF5 splits paths at '/' and gives "." and ".." meaning, so those (and '%',
// control and non-ASCII bytes) are percent-escaped. The real name is kept in an attribute.
std::string escape_key(std::string_view name) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string key;
  for (size_t i = 0; i < name.size(); ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    if (c == '%' || c == '/' || (i == 0 && c == '.') || c < 0x20 || c >= 0x7f) {
      key += '%';
      key += kHex[c >> 4];
      key += kHex[c & 15];
    } else {
      key += static_cast<char>(c);
    }
  }
  return key;
}

// ---- attributes (errors are plain descriptions; callers add the file) ----

absl::Status write_attr(hid_t obj, const char* name, hid_t file_type, hid_t mem_type,
                        absl::Span<const hsize_t> dims, const void* data) {
  // HDF5 attributes cannot have a zero-sized simple dataspace; an empty array is a null one.
  const bool empty = dims.size() == 1 && dims[0] == 0;
  Hid space = empty ? Hid(H5Screate(H5S_NULL), H5Sclose) : make_space(dims);
  Hid attr(H5Acreate2(obj, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!attr.valid() || (!empty && H5Awrite(attr.get(), mem_type, data) < 0)) {
    return absl::InternalError(absl::StrCat("writing attribute '", name, "': ", hdf5_error()));
  }
  return absl::OkStatus();
}

absl::Status write_attr_i64(hid_t obj, const char* name, int64_t value) {
  return write_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, {}, &value);
}

absl::Status write_attr_i64s(hid_t obj, const char* name, absl::Span<const int64_t> values) {
  const hsize_t n = values.size();
  return write_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, {n}, values.data());
}

// A fixed-length, null-padded UTF-8 string type of `bytes` bytes (at least 1: HDF5 needs it).
Hid string_type(size_t bytes) {
  Hid type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<size_t>(bytes, 1));
  H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  return type;
}

absl::Status write_attr_string(hid_t obj, const char* name, const std::string& value) {
  Hid type = string_type(value.size());
  const std::string padded = value.empty() ? std::string(1, '\0') : value;
  return write_attr(obj, name, type.get(), type.get(), {}, padded.data());
}

bool has_attr(hid_t obj, const char* name) { return H5Aexists(obj, name) > 0; }

// Opens attribute `name` of obj; the element count goes to *count.
absl::StatusOr<Hid> open_attr(hid_t obj, const char* name, hssize_t* count) {
  if (!has_attr(obj, name)) return absl::DataLossError(absl::StrCat("no attribute '", name, "'"));
  Hid attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  if (!attr.valid()) {
    return absl::DataLossError(absl::StrCat("attribute '", name, "': ", hdf5_error()));
  }
  Hid space(H5Aget_space(attr.get()), H5Sclose);
  *count = space.valid() ? H5Sget_simple_extent_npoints(space.get()) : -1;
  if (*count < 0) {
    return absl::DataLossError(absl::StrCat("attribute '", name, "': ", hdf5_error()));
  }
  return attr;
}

absl::StatusOr<std::vector<int64_t>> read_attr_i64s(hid_t obj, const char* name) {
  hssize_t count = 0;
  FATHOM_ASSIGN_OR_RETURN(Hid attr, open_attr(obj, name, &count));
  Hid type(H5Aget_type(attr.get()), H5Tclose);
  if (!type.valid() || H5Tget_class(type.get()) != H5T_INTEGER) {
    return absl::DataLossError(absl::StrCat("attribute '", name, "' is not an integer"));
  }
  std::vector<int64_t> values(static_cast<size_t>(count));
  if (count > 0 && H5Aread(attr.get(), H5T_NATIVE_INT64, values.data()) < 0) {
    return absl::DataLossError(absl::StrCat("attribute '", name, "': ", hdf5_error()));
  }
  return values;
}

absl::StatusOr<int64_t> read_attr_i64(hid_t obj, const char* name) {
  FATHOM_ASSIGN_OR_RETURN(std::vector<int64_t> values, read_attr_i64s(obj, name));
  if (values.size() != 1) {
    return absl::DataLossError(
        absl::StrCat("attribute '", name, "' has ", values.size(), " values, expected 1"));
  }
  return values[0];
}

// Reads a fixed-length string attribute; trailing NULs (the padding) are dropped.
absl::StatusOr<std::string> read_attr_string(hid_t obj, const char* name) {
  hssize_t count = 0;
  FATHOM_ASSIGN_OR_RETURN(Hid attr, open_attr(obj, name, &count));
  Hid type(H5Aget_type(attr.get()), H5Tclose);
  if (!type.valid() || H5Tget_class(type.get()) != H5T_STRING || count != 1 ||
      H5Tis_variable_str(type.get()) != 0) {
    return absl::DataLossError(absl::StrCat("attribute '", name, "' is not a fixed-length string"));
  }
  const size_t size = H5Tget_size(type.get());
  Hid mem = string_type(size);
  std::string value(size, '\0');
  if (H5Aread(attr.get(), mem.get(), value.data()) < 0) {
    return absl::DataLossError(absl::StrCat("attribute '", name, "': ", hdf5_error()));
  }
  while (!value.empty() && value.back() == '\0') value.pop_back();
  return value;
}

// ---- file names and POSIX helpers ----

std::string zero_pad(int64_t value, int width) {
  std::string digits = std::to_string(value);
  if (static_cast<int>(digits.size()) < width) digits.insert(0, width - digits.size(), '0');
  return digits;
}

std::string shard_file_name(int64_t index, int64_t count) {
  return absl::StrCat("shard-", zero_pad(index, 5), "-of-", zero_pad(count, 5), ".h5");
}

// Parses decimal digits only (no sign, no spaces); false on overflow or anything else.
bool parse_digits(std::string_view s, int64_t* value) {
  if (s.empty() || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return false;
  }
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *value);
  return ec == std::errc() && end == s.data() + s.size();
}

// "shard-<index>-of-<count>.h5" -> index, count.
bool parse_shard_file_name(std::string_view name, int64_t* index, int64_t* count) {
  constexpr std::string_view kPrefix = "shard-", kOf = "-of-", kSuffix = ".h5";
  if (!name.starts_with(kPrefix) || !name.ends_with(kSuffix)) return false;
  name = name.substr(kPrefix.size(), name.size() - kPrefix.size() - kSuffix.size());
  const size_t of = name.find(kOf);
  return of != std::string_view::npos && parse_digits(name.substr(0, of), index) &&
         parse_digits(name.substr(of + kOf.size()), count);
}

// "a/b/" -> "a/b", so parent_path() and appending ".tmp-<pid>" work on the directory itself.
fs::path clean_dir(const std::string& dir) {
  fs::path p = fs::path(dir).lexically_normal();
  if (!p.has_filename() && p.has_parent_path()) p = p.parent_path();
  return p;
}

absl::Status errno_status(int error, absl::string_view what, const fs::path& path) {
  return absl::ErrnoToStatus(error, absl::StrCat(what, " ", path.string()));
}

absl::Status fs_status(const std::error_code& ec, absl::string_view what, const fs::path& path) {
  return errno_status(ec.value(), what, path);
}

// fsync of a file or a directory (which makes a rename or a new entry in it durable).
absl::Status fsync_path(const fs::path& path, bool directory) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0));
  if (fd < 0) return errno_status(errno, "cannot open for fsync", path);
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (rc != 0) return errno_status(error, "fsync failed for", path);
  return absl::OkStatus();
}

Hid file_access_plist() {
  Hid fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
#if H5_VERSION_GE(1, 10, 7)
  // Lock when the file system supports it; parallel file systems often do not.
  H5Pset_file_locking(fapl.get(), true, true);
#endif
  return fapl;
}

// ---- writing ----

// Removes a temporary file or directory on every exit (errors and exceptions) until disarmed.
class RemoveUnlessDisarmed {
 public:
  explicit RemoveUnlessDisarmed(fs::path path) : path_(std::move(path)) {}
  ~RemoveUnlessDisarmed() {
    std::error_code ec;
    if (!path_.empty()) fs::remove_all(path_, ec);
  }
  RemoveUnlessDisarmed(const RemoveUnlessDisarmed&) = delete;
  RemoveUnlessDisarmed& operator=(const RemoveUnlessDisarmed&) = delete;
  void disarm() { path_.clear(); }

 private:
  fs::path path_;
};

// The global shape of a shard, with its geometry checked (misuse of the API throws).
Shape checked_global_shape(const TensorShard& s) {
  FATHOM_CHECK(!s.name.empty()) << "checkpoint tensor with an empty name";
  FATHOM_CHECK(s.tensor.defined()) << "checkpoint tensor '" << s.name << "' is undefined";
  const Shape global = s.global_shape.empty() ? s.tensor.shape() : s.global_shape;
  const Shape& local = s.tensor.shape();
  const bool fits = global.size() == local.size() &&
                    std::equal(global.begin() + (global.empty() ? 0 : 1), global.end(),
                               local.begin() + (local.empty() ? 0 : 1)) &&
                    s.row_offset >= 0 &&
                    (local.empty() ? s.row_offset == 0 : s.row_offset + local[0] <= global[0]);
  FATHOM_CHECK(fits) << "checkpoint tensor '" << s.name << "': local " << s.tensor.str()
                     << " at row_offset " << s.row_offset << " does not fit global shape "
                     << shape_str(global);
  return global;
}

// Chunk dimensions of at most kChunkBytes: whole inner dims, as many outer rows as fit.
std::vector<hsize_t> chunk_dims(const std::vector<hsize_t>& dims, size_t elem_size) {
  std::vector<hsize_t> chunk(dims.size(), 1);
  uint64_t bytes = elem_size;
  for (size_t i = dims.size(); i-- > 0;) {
    const uint64_t fit = std::max<uint64_t>(1, kChunkBytes / bytes);
    chunk[i] = std::min<uint64_t>(dims[i], fit);
    if (chunk[i] < dims[i]) break;
    bytes *= dims[i];
  }
  return chunk;
}

// A dataset named `key` in `group` with attribute name = `name`, holding `data` of `dims`.
// Non-empty arrays are chunked with a Fletcher-32 checksum so corruption is detected on read.
absl::StatusOr<Hid> write_dataset(hid_t group, const std::string& name, hid_t ftype, hid_t mtype,
                                  size_t elem_size, const std::vector<hsize_t>& dims,
                                  const void* data) {
  const std::string key = escape_key(name);
  Hid space = make_space(dims);
  Hid dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  uint64_t numel = 1;
  for (hsize_t d : dims) numel *= d;
  if (!dims.empty() && numel > 0) {
    const std::vector<hsize_t> chunk = chunk_dims(dims, elem_size);
    H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data());
    H5Pset_fletcher32(dcpl.get());
  }
  Hid dataset(
      H5Dcreate2(group, key.c_str(), ftype, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
      H5Dclose);
  if (!dataset.valid() ||
      (numel > 0 && H5Dwrite(dataset.get(), mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)) {
    return absl::InternalError(absl::StrCat("writing '", name, "': ", hdf5_error()));
  }
  FATHOM_RETURN_IF_ERROR(write_attr_string(dataset.get(), "name", name));
  return dataset;
}

absl::Status write_tensor(hid_t group, const TensorShard& shard) {
  const Shape global = checked_global_shape(shard);
  const Tensor host = shard.tensor.is_cuda() ? shard.tensor.to(Device::cpu()) : shard.tensor;
  const DType dtype = host.dtype();
  const std::vector<hsize_t> dims(host.shape().begin(), host.shape().end());
  FATHOM_ASSIGN_OR_RETURN(Hid dataset,
                          write_dataset(group, shard.name, file_type(dtype), memory_type(dtype),
                                        dtype_size(dtype), dims, host.raw_data()));
  FATHOM_RETURN_IF_ERROR(write_attr_string(dataset.get(), "dtype", dtype_str(dtype)));
  FATHOM_RETURN_IF_ERROR(write_attr_i64s(dataset.get(), "global_shape", global));
  return write_attr_i64(dataset.get(), "row_offset", shard.row_offset);
}

absl::Status write_meta(hid_t file, const CheckpointMeta& meta) {
  FATHOM_RETURN_IF_ERROR(write_attr_i64(file, "step", meta.step));
  Hid meta_group(H5Gcreate2(file, kMetaGroup, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
  Hid u64_group(H5Gcreate2(file, kMetaU64Group, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
  Hid text_group(H5Gcreate2(file, kMetaTextGroup, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
  if (!meta_group.valid() || !u64_group.valid() || !text_group.valid()) {
    return absl::InternalError(absl::StrCat("creating the meta groups: ", hdf5_error()));
  }
  for (const auto& [name, values] : meta.u64) {
    FATHOM_ASSIGN_OR_RETURN(Hid dataset,
                            write_dataset(u64_group.get(), name, H5T_STD_U64LE, H5T_NATIVE_UINT64,
                                          sizeof(uint64_t), {values.size()}, values.data()));
  }
  for (const auto& [name, text] : meta.text) {
    Hid type = string_type(text.size());
    const std::string padded = text.empty() ? std::string(1, '\0') : text;
    FATHOM_ASSIGN_OR_RETURN(Hid dataset, write_dataset(text_group.get(), name, type.get(),
                                                       type.get(), 1, {}, padded.data()));
    FATHOM_RETURN_IF_ERROR(
        write_attr_i64(dataset.get(), "bytes", static_cast<int64_t>(text.size())));
  }
  return absl::OkStatus();
}

// Writes the whole shard file at `path` (not atomically: the caller renames it into place) and
// fsyncs it.
absl::Status write_shard_file(const fs::path& path, int shard_index, int shard_count,
                              absl::Span<const TensorShard> shards, const CheckpointMeta& meta) {
  Hid fapl = file_access_plist();
  Hid file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose);
  if (!file.valid()) {
    return absl::InternalError(absl::StrCat("cannot create ", path.string(), ": ", hdf5_error()));
  }
  absl::Status status = [&]() -> absl::Status {
    FATHOM_RETURN_IF_ERROR(write_attr_i64(file.get(), kFormatAttr, kFormatVersion));
    FATHOM_RETURN_IF_ERROR(write_attr_i64(file.get(), "shard_index", shard_index));
    FATHOM_RETURN_IF_ERROR(write_attr_i64(file.get(), "shard_count", shard_count));
    Hid group(H5Gcreate2(file.get(), kTensorsGroup, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
              H5Gclose);
    if (!group.valid()) return absl::InternalError(hdf5_error());
    for (const TensorShard& shard : shards) {
      FATHOM_RETURN_IF_ERROR(write_tensor(group.get(), shard));
    }
    if (shard_index == 0) FATHOM_RETURN_IF_ERROR(write_meta(file.get(), meta));
    return absl::OkStatus();
  }();
  if (!status.ok()) {
    return absl::Status(status.code(), absl::StrCat(path.string(), ": ", status.message()));
  }
  if (!file.close()) {
    return absl::InternalError(absl::StrCat("cannot close ", path.string(), ": ", hdf5_error()));
  }
  return fsync_path(path, /*directory=*/false);
}

// ---- reading ----

// One stored piece of a tensor: rows [row_offset, row_offset + rows) in dataset `key` of a file.
struct Piece {
  int file = 0;
  std::string key;
  int64_t row_offset = 0;
  int64_t rows = 0;
};

struct StoredTensor {
  DType dtype = DType::kF32;
  Shape global_shape;
  std::vector<Piece> pieces;
};

struct CheckpointIndex {
  std::vector<fs::path> files;  // by shard index
  std::map<std::string, StoredTensor> tensors;
};

absl::Status corrupt(const fs::path& file, absl::string_view what) {
  return absl::DataLossError(absl::StrCat(
      file.string(), " is not a valid checkpoint shard (truncated or corrupted?): ", what));
}

// The shard files of the checkpoint at `dir`, by index; an error unless all are present.
absl::StatusOr<std::vector<fs::path>> list_shard_files(const std::string& dir) {
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  if (!fs::exists(st))
    return absl::NotFoundError(absl::StrCat("checkpoint directory ", dir, " does not exist"));
  if (!fs::is_directory(st)) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", dir, " is not a directory"));
  }
  std::map<int64_t, std::vector<std::pair<int64_t, fs::path>>> by_count;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    int64_t index = 0, count = 0;
    if (!parse_shard_file_name(it->path().filename().string(), &index, &count)) continue;
    by_count[count].emplace_back(index, it->path());
  }
  if (ec) return fs_status(ec, "cannot list checkpoint directory", dir);
  if (by_count.empty()) {
    return absl::NotFoundError(absl::StrCat("checkpoint directory ", dir,
                                            " holds no shard files (shard-NNNNN-of-NNNNN.h5)"));
  }
  if (by_count.size() > 1) {
    std::vector<std::string> counts;
    for (const auto& [count, files] : by_count) counts.push_back(std::to_string(count));
    return absl::DataLossError(absl::StrCat("checkpoint ", dir,
                                            " mixes shard files of different shard counts (",
                                            absl::StrJoin(counts, ", "), ")"));
  }
  const int64_t count = by_count.begin()->first;
  if (count > kMaxShards) {
    return absl::DataLossError(absl::StrCat("checkpoint ", dir, ": implausible shard count ", count,
                                            " (at most ", kMaxShards, ")"));
  }
  std::vector<fs::path> files(static_cast<size_t>(count));
  for (const auto& [index, path] : by_count.begin()->second) {
    if (index >= count) {
      return absl::DataLossError(absl::StrCat("checkpoint ", dir, ": shard file ",
                                              path.filename().string(), " has index >= count"));
    }
    files[index] = path;
  }
  std::vector<std::string> missing;
  for (int64_t i = 0; i < count; ++i) {
    if (files[i].empty()) missing.push_back(shard_file_name(i, count));
  }
  if (count == 0 || !missing.empty()) {
    const size_t shown = std::min<size_t>(missing.size(), 4);
    return absl::NotFoundError(absl::StrCat(
        "checkpoint ", dir, " is incomplete: ", missing.size(), " of ", count,
        " shard files missing (", absl::StrJoin(missing.begin(), missing.begin() + shown, ", "),
        missing.size() > shown ? ", ..." : "", ")"));
  }
  return files;
}

absl::StatusOr<Hid> open_shard(const fs::path& path) {
  // Distinguish a file we cannot open from one HDF5 cannot parse.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_status(errno, "cannot open checkpoint shard", path);
  ::close(fd);
  Hid fapl = file_access_plist();
  Hid file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), H5Fclose);
  if (!file.valid()) return corrupt(path, hdf5_error());
  return file;
}

herr_t collect_link_name(hid_t, const char* name, const H5L_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->emplace_back(name);
  return 0;
}

absl::StatusOr<std::vector<std::string>> list_group(hid_t group) {
  std::vector<std::string> names;
  if (H5Literate(group, H5_INDEX_NAME, H5_ITER_NATIVE, nullptr, collect_link_name, &names) < 0) {
    return absl::DataLossError(hdf5_error());
  }
  return names;
}

absl::StatusOr<Hid> open_group(hid_t file, const char* name) {
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0) {
    return absl::DataLossError(absl::StrCat("no group '", name, "'"));
  }
  Hid group(H5Gopen2(file, name, H5P_DEFAULT), H5Gclose);
  if (!group.valid())
    return absl::DataLossError(absl::StrCat("group '", name, "': ", hdf5_error()));
  return group;
}

// The dataset's dims and its element type's class and size.
struct DatasetInfo {
  std::vector<hsize_t> dims;
  H5T_class_t type_class = H5T_NO_CLASS;
  size_t type_size = 0;
};

absl::StatusOr<DatasetInfo> dataset_info(hid_t dataset) {
  DatasetInfo info;
  Hid space(H5Dget_space(dataset), H5Sclose);
  Hid type(H5Dget_type(dataset), H5Tclose);
  const int ndim = space.valid() ? H5Sget_simple_extent_ndims(space.get()) : -1;
  if (ndim < 0 || ndim > Tensor::kMaxDims || !type.valid()) {
    return absl::DataLossError(absl::StrCat("bad dataspace or type: ", hdf5_error()));
  }
  info.dims.resize(ndim);
  H5Sget_simple_extent_dims(space.get(), info.dims.data(), nullptr);
  info.type_class = H5Tget_class(type.get());
  info.type_size = H5Tget_size(type.get());
  return info;
}

// Reads the dataset `key` of `group` as a tensor piece and checks that it is self-consistent.
absl::StatusOr<std::pair<std::string, StoredTensor>> read_tensor_header(hid_t group,
                                                                        const std::string& key,
                                                                        int file_index) {
  Hid dataset(H5Dopen2(group, key.c_str(), H5P_DEFAULT), H5Dclose);
  if (!dataset.valid()) return absl::DataLossError(hdf5_error());
  FATHOM_ASSIGN_OR_RETURN(std::string name, read_attr_string(dataset.get(), "name"));
  FATHOM_ASSIGN_OR_RETURN(std::string dtype_str, read_attr_string(dataset.get(), "dtype"));
  FATHOM_ASSIGN_OR_RETURN(std::vector<int64_t> global,
                          read_attr_i64s(dataset.get(), "global_shape"));
  FATHOM_ASSIGN_OR_RETURN(int64_t row_offset, read_attr_i64(dataset.get(), "row_offset"));
  FATHOM_ASSIGN_OR_RETURN(DatasetInfo info, dataset_info(dataset.get()));
  StoredTensor t;
  if (!parse_dtype(dtype_str, &t.dtype)) {
    return absl::DataLossError(absl::StrCat("unknown dtype '", dtype_str, "'"));
  }
  const H5T_class_t want_class = t.dtype == DType::kF32 ? H5T_FLOAT : H5T_INTEGER;
  if (info.type_class != want_class || info.type_size != dtype_size(t.dtype)) {
    return absl::DataLossError(
        absl::StrCat("stored element type does not match dtype ", dtype_str));
  }
  t.global_shape.assign(global.begin(), global.end());
  const bool shape_ok =
      global.size() == info.dims.size() && global.size() <= Tensor::kMaxDims &&
      std::all_of(global.begin(), global.end(), [](int64_t d) { return d >= 0; }) &&
      std::equal(info.dims.begin() + (global.empty() ? 0 : 1), info.dims.end(),
                 global.begin() + (global.empty() ? 0 : 1),
                 [](hsize_t a, int64_t b) { return static_cast<int64_t>(a) == b; }) &&
      row_offset >= 0 &&
      (global.empty() ? row_offset == 0
                      : row_offset + static_cast<int64_t>(info.dims[0]) <= global[0]);
  if (!shape_ok) {
    std::vector<int64_t> local(info.dims.begin(), info.dims.end());
    return absl::DataLossError(absl::StrCat("tensor '", name, "': local shape ", shape_str(local),
                                            " at row_offset ", row_offset,
                                            " does not fit global shape ", shape_str(global)));
  }
  const int64_t rows = global.empty() ? 1 : static_cast<int64_t>(info.dims[0]);
  t.pieces.push_back({file_index, key, row_offset, rows});
  return std::make_pair(std::move(name), std::move(t));
}

absl::Status read_meta(hid_t file, CheckpointMeta* meta) {
  CheckpointMeta out;
  FATHOM_ASSIGN_OR_RETURN(out.step, read_attr_i64(file, "step"));
  for (const char* group_name : {kMetaU64Group, kMetaTextGroup}) {
    const bool text = group_name == kMetaTextGroup;
    FATHOM_ASSIGN_OR_RETURN(Hid group, open_group(file, group_name));
    FATHOM_ASSIGN_OR_RETURN(std::vector<std::string> keys, list_group(group.get()));
    for (const std::string& key : keys) {
      Hid dataset(H5Dopen2(group.get(), key.c_str(), H5P_DEFAULT), H5Dclose);
      if (!dataset.valid()) return absl::DataLossError(hdf5_error());
      FATHOM_ASSIGN_OR_RETURN(std::string name, read_attr_string(dataset.get(), "name"));
      FATHOM_ASSIGN_OR_RETURN(DatasetInfo info, dataset_info(dataset.get()));
      const std::string where = absl::StrCat(group_name, " '", name, "'");
      if (text) {
        FATHOM_ASSIGN_OR_RETURN(int64_t bytes, read_attr_i64(dataset.get(), "bytes"));
        if (info.type_class != H5T_STRING || !info.dims.empty() || bytes < 0 ||
            static_cast<uint64_t>(bytes) > info.type_size) {
          return absl::DataLossError(absl::StrCat(where, " is not a fixed-length string"));
        }
        Hid mem = string_type(info.type_size);
        std::string value(info.type_size, '\0');
        if (H5Dread(dataset.get(), mem.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, value.data()) < 0) {
          return absl::DataLossError(absl::StrCat(where, ": ", hdf5_error()));
        }
        value.resize(static_cast<size_t>(bytes));
        out.text[name] = std::move(value);
      } else {
        if (info.type_class != H5T_INTEGER || info.type_size != 8 || info.dims.size() != 1) {
          return absl::DataLossError(absl::StrCat(where, " is not a 1-d uint64 array"));
        }
        std::vector<uint64_t> values(info.dims[0]);
        if (!values.empty() && H5Dread(dataset.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL,
                                       H5P_DEFAULT, values.data()) < 0) {
          return absl::DataLossError(absl::StrCat(where, ": ", hdf5_error()));
        }
        out.u64[name] = std::move(values);
      }
    }
  }
  *meta = std::move(out);
  return absl::OkStatus();
}

// Opens every shard file of the checkpoint, checks it and collects where each tensor's rows are.
// Reads the metadata from shard 0 when meta is not null.
absl::StatusOr<CheckpointIndex> index_checkpoint(const std::string& dir, CheckpointMeta* meta) {
  CheckpointIndex index;
  FATHOM_ASSIGN_OR_RETURN(index.files, list_shard_files(dir));
  const int64_t count = static_cast<int64_t>(index.files.size());
  for (int64_t i = 0; i < count; ++i) {
    const fs::path& path = index.files[i];
    FATHOM_ASSIGN_OR_RETURN(Hid file, open_shard(path));
    absl::Status status = [&]() -> absl::Status {
      FATHOM_ASSIGN_OR_RETURN(int64_t version, read_attr_i64(file.get(), kFormatAttr));
      if (version < 1 || version > kFormatVersion) {
        return absl::DataLossError(
            absl::StrCat("format version ", version, " (this build reads ", kFormatVersion, ")"));
      }
      FATHOM_ASSIGN_OR_RETURN(int64_t shard_index, read_attr_i64(file.get(), "shard_index"));
      FATHOM_ASSIGN_OR_RETURN(int64_t shard_count, read_attr_i64(file.get(), "shard_count"));
      if (shard_index != i || shard_count != count) {
        return absl::DataLossError(
            absl::StrCat("the file says it is shard ", shard_index, " of ", shard_count));
      }
      FATHOM_ASSIGN_OR_RETURN(Hid group, open_group(file.get(), kTensorsGroup));
      FATHOM_ASSIGN_OR_RETURN(std::vector<std::string> keys, list_group(group.get()));
      for (const std::string& key : keys) {
        auto header = read_tensor_header(group.get(), key, static_cast<int>(i));
        if (!header.ok()) {
          return absl::Status(header.status().code(), absl::StrCat("dataset tensors/", key, ": ",
                                                                   header.status().message()));
        }
        auto& [name, piece] = *header;
        auto [it, inserted] = index.tensors.try_emplace(name, piece);
        if (inserted) continue;
        StoredTensor& stored = it->second;
        if (stored.dtype != piece.dtype || stored.global_shape != piece.global_shape) {
          const fs::path& other = index.files[stored.pieces[0].file];
          return absl::DataLossError(
              absl::StrCat("tensor '", name, "' is ", dtype_str(piece.dtype),
                           shape_str(piece.global_shape), " here but ", dtype_str(stored.dtype),
                           shape_str(stored.global_shape), " in ", other.string()));
        }
        stored.pieces.push_back(piece.pieces[0]);
      }
      if (i == 0 && meta != nullptr) FATHOM_RETURN_IF_ERROR(read_meta(file.get(), meta));
      return absl::OkStatus();
    }();
    if (!status.ok()) {
      return status.code() == absl::StatusCode::kDataLoss
                 ? corrupt(path, status.message())
                 : absl::Status(status.code(), absl::StrCat(path.string(), ": ", status.message()));
    }
  }
  for (auto& [name, stored] : index.tensors) {
    std::sort(stored.pieces.begin(), stored.pieces.end(),
              [](const Piece& a, const Piece& b) { return a.row_offset < b.row_offset; });
  }
  return index;
}

// One hyperslab read: rows [src_row, src_row + rows) of a stored piece into rows starting at
// dst_row of the host staging tensor `target`.
struct ReadOp {
  const Piece* piece = nullptr;
  size_t target = 0;
  int64_t src_row = 0;
  int64_t dst_row = 0;
  int64_t rows = 0;
};

absl::Status execute_read(hid_t group, const ReadOp& op, Tensor& host) {
  Hid dataset(H5Dopen2(group, op.piece->key.c_str(), H5P_DEFAULT), H5Dclose);
  if (!dataset.valid()) return absl::DataLossError(hdf5_error());
  if (host.numel() == 0) return absl::OkStatus();
  const hid_t mtype = memory_type(host.dtype());
  if (host.ndim() == 0) {
    if (H5Dread(dataset.get(), mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, host.raw_data()) < 0) {
      return absl::DataLossError(hdf5_error());
    }
    return absl::OkStatus();
  }
  std::vector<hsize_t> start(host.ndim(), 0);
  std::vector<hsize_t> count(host.shape().begin(), host.shape().end());
  start[0] = op.src_row;
  count[0] = op.rows;
  Hid file_space(H5Dget_space(dataset.get()), H5Sclose);
  Hid mem_space = make_space(count);
  if (!file_space.valid() || !mem_space.valid() ||
      H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(),
                          nullptr) < 0) {
    return absl::DataLossError(hdf5_error());
  }
  Tensor rows = host.narrow(op.dst_row, op.rows);
  if (H5Dread(dataset.get(), mtype, mem_space.get(), file_space.get(), H5P_DEFAULT,
              rows.raw_data()) < 0) {
    return absl::DataLossError(hdf5_error());
  }
  return absl::OkStatus();
}

std::vector<std::string> tensor_names(const CheckpointIndex& index) {
  std::vector<std::string> names;
  names.reserve(index.tensors.size());
  for (const auto& [name, stored] : index.tensors) names.push_back(name);
  return names;
}

}  // namespace

std::string checkpoint_dir_for_step(const std::string& checkpoints_dir, int64_t step) {
  FATHOM_CHECK(step >= 0) << "checkpoint step " << step << " is negative";
  return (fs::path(checkpoints_dir) / ("step-" + zero_pad(step, 6))).string();
}

absl::Status write_checkpoint_shard(const std::string& dir, int shard_index, int shard_count,
                                    absl::Span<const TensorShard> shards,
                                    const CheckpointMeta& meta) {
  FATHOM_CHECK(shard_count >= 1 && shard_index >= 0 && shard_index < shard_count)
      << "checkpoint shard " << shard_index << " of " << shard_count;
  std::set<std::string_view> names;
  for (const TensorShard& shard : shards) {
    checked_global_shape(shard);
    FATHOM_CHECK(names.insert(shard.name).second)
        << "checkpoint tensor '" << shard.name << "' given twice to one writer";
  }
  for (const auto& [name, values] : meta.u64) {
    FATHOM_CHECK(!name.empty()) << "checkpoint metadata with an empty name";
  }
  for (const auto& [name, text] : meta.text) {
    FATHOM_CHECK(!name.empty()) << "checkpoint metadata with an empty name";
  }
  SilenceHdf5Errors silence;
  const fs::path final_dir = clean_dir(dir);
  const fs::path parent = final_dir.has_parent_path() ? final_dir.parent_path() : ".";
  const std::string file_name = shard_file_name(shard_index, shard_count);
  const std::string pid = std::to_string(::getpid());
  std::error_code ec;

  if (shard_count == 1) {
    // The whole directory appears at once: write it under a temporary name, then rename.
    if (fs::exists(final_dir, ec)) {
      return absl::AlreadyExistsError(
          absl::StrCat("checkpoint directory ", final_dir.string(), " already exists"));
    }
    fs::create_directories(parent, ec);
    if (ec) return fs_status(ec, "cannot create directory", parent);
    const fs::path tmp_dir = final_dir.string() + ".tmp-" + pid;
    RemoveUnlessDisarmed cleanup{tmp_dir};
    fs::remove_all(tmp_dir, ec);  // a leftover of an earlier process with the same pid
    fs::create_directory(tmp_dir, ec);
    if (ec) return fs_status(ec, "cannot create directory", tmp_dir);
    FATHOM_RETURN_IF_ERROR(
        write_shard_file(tmp_dir / file_name, shard_index, shard_count, shards, meta));
    FATHOM_RETURN_IF_ERROR(fsync_path(tmp_dir, /*directory=*/true));
    if (::rename(tmp_dir.c_str(), final_dir.c_str()) != 0) {
      return errno == EEXIST || errno == ENOTEMPTY
                 ? absl::AlreadyExistsError(
                       absl::StrCat("checkpoint directory ", final_dir.string(), " already exists"))
                 : errno_status(errno, "cannot rename to", final_dir);
    }
    cleanup.disarm();
    return fsync_path(parent, /*directory=*/true);
  }

  // Several writers share the directory; each shard file appears at once.
  fs::create_directories(final_dir, ec);
  if (ec) return fs_status(ec, "cannot create directory", final_dir);
  FATHOM_RETURN_IF_ERROR(fsync_path(parent, /*directory=*/true));
  const fs::path final_file = final_dir / file_name;
  const fs::path tmp_file = final_dir / (file_name + ".tmp-" + pid);
  RemoveUnlessDisarmed cleanup{tmp_file};
  FATHOM_RETURN_IF_ERROR(write_shard_file(tmp_file, shard_index, shard_count, shards, meta));
  if (::rename(tmp_file.c_str(), final_file.c_str()) != 0) {
    return errno_status(errno, "cannot rename to", final_file);
  }
  cleanup.disarm();
  return fsync_path(final_dir, /*directory=*/true);
}

absl::Status read_checkpoint(const std::string& dir, absl::Span<TensorShard> into,
                             CheckpointMeta* meta) {
  SilenceHdf5Errors silence;
  FATHOM_ASSIGN_OR_RETURN(CheckpointIndex index, index_checkpoint(dir, meta));

  // Plan every read and check dtypes, shapes and row coverage before writing any tensor.
  std::vector<ReadOp> ops;
  for (size_t i = 0; i < into.size(); ++i) {
    const TensorShard& want = into[i];
    const Shape global = checked_global_shape(want);
    auto it = index.tensors.find(want.name);
    if (it == index.tensors.end()) {
      const std::string guess = model::closest_match(want.name, tensor_names(index));
      return absl::NotFoundError(
          absl::StrCat("checkpoint ", dir, " has no tensor '", want.name, "'",
                       guess.empty() ? "" : absl::StrCat(" (did you mean '", guess, "'?)")));
    }
    const StoredTensor& stored = it->second;
    const std::string where =
        absl::StrCat(index.files[stored.pieces[0].file].string(), ": tensor '", want.name, "': ");
    if (stored.global_shape != global) {
      return absl::InvalidArgumentError(absl::StrCat(where, "checkpoint has global shape ",
                                                     shape_str(stored.global_shape), ", expected ",
                                                     shape_str(global)));
    }
    if (stored.dtype != want.tensor.dtype()) {
      return absl::InvalidArgumentError(absl::StrCat(where, "checkpoint has dtype ",
                                                     dtype_str(stored.dtype), ", expected ",
                                                     dtype_str(want.tensor.dtype())));
    }
    // Cover [begin, end) greedily from the pieces in row order; rows held twice are read once.
    const int64_t begin = want.row_offset;
    const int64_t end = begin + (global.empty() ? 1 : want.tensor.dim(0));
    int64_t covered = begin;
    int64_t gap_end = end;
    for (const Piece& piece : stored.pieces) {
      if (covered >= end) break;
      if (piece.row_offset > covered) {
        gap_end = std::min(end, piece.row_offset);
        break;
      }
      const int64_t stop = std::min(end, piece.row_offset + piece.rows);
      if (stop <= covered) continue;
      ops.push_back({&piece, i, covered - piece.row_offset, covered - begin, stop - covered});
      covered = stop;
    }
    if (covered < end) {
      return absl::DataLossError(absl::StrCat("checkpoint ", dir, ": rows [", covered, ", ",
                                              gap_end, ") of tensor '", want.name, "' ",
                                              shape_str(global), " are in no shard file"));
    }
  }

  std::vector<Tensor> host(into.size());
  for (size_t i = 0; i < into.size(); ++i) {
    const Tensor& t = into[i].tensor;
    host[i] = t.is_cuda() ? Tensor::empty(t.shape(), t.dtype()) : t;
  }
  // One pass over the files, each opened once.
  std::stable_sort(ops.begin(), ops.end(),
                   [](const ReadOp& a, const ReadOp& b) { return a.piece->file < b.piece->file; });
  for (size_t begin = 0; begin < ops.size();) {
    const fs::path& path = index.files[ops[begin].piece->file];
    FATHOM_ASSIGN_OR_RETURN(Hid file, open_shard(path));
    FATHOM_ASSIGN_OR_RETURN(Hid group, open_group(file.get(), kTensorsGroup));
    size_t end = begin;
    for (; end < ops.size() && ops[end].piece->file == ops[begin].piece->file; ++end) {
      absl::Status status = execute_read(group.get(), ops[end], host[ops[end].target]);
      if (!status.ok()) {
        return corrupt(
            path, absl::StrCat("tensor '", into[ops[end].target].name, "': ", status.message()));
      }
    }
    begin = end;
  }
  for (size_t i = 0; i < into.size(); ++i) {
    if (into[i].tensor.is_cuda()) into[i].tensor.copy_from(host[i]);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> list_checkpoint_tensors(const std::string& dir) {
  SilenceHdf5Errors silence;
  FATHOM_ASSIGN_OR_RETURN(CheckpointIndex index, index_checkpoint(dir, nullptr));
  return tensor_names(index);
}

absl::StatusOr<std::string> latest_checkpoint(const std::string& checkpoints_dir) {
  std::error_code ec;
  if (!fs::is_directory(checkpoints_dir, ec)) {
    return absl::NotFoundError(
        absl::StrCat("checkpoints directory ", checkpoints_dir, " does not exist"));
  }
  std::vector<std::pair<int64_t, fs::path>> candidates;
  for (fs::directory_iterator it(checkpoints_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    int64_t step = 0;
    std::error_code dir_ec;
    if (name.starts_with("step-") && parse_digits(std::string_view(name).substr(5), &step) &&
        it->is_directory(dir_ec)) {
      candidates.emplace_back(step, it->path());
    }
  }
  if (ec) return fs_status(ec, "cannot list", checkpoints_dir);
  std::sort(candidates.begin(), candidates.end(), std::greater<>());
  for (const auto& [step, path] : candidates) {
    if (list_shard_files(path.string()).ok()) return path.string();
  }
  return absl::NotFoundError(absl::StrCat("no complete checkpoint (step-N directory with all its ",
                                          "shard files) in ", checkpoints_dir));
}

}  // namespace fathom::trainer
