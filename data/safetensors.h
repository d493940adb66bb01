// The safetensors format (Hugging Face): reading, writing and sharded checkpoints.
//
// A file is: 8 bytes little-endian u64 N, N bytes of JSON header, then the data section. The
// header maps each tensor name to {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [begin,
// end]} (byte offsets into the data section) and may hold "__metadata__", a string -> string map.
// Tensors are row-major and little-endian.
//
// SafetensorsFile memory-maps a file (the data is never copied whole) and validates its header
// before anything is read, following the reference implementation's rules:
//   - the file holds at least 8 bytes; 2 <= N <= 100 MiB and 8 + N <= file size;
//   - the header is one JSON object without duplicate keys; "__metadata__" (optional) maps
//     strings to strings; every other entry is a tensor, a non-empty name mapping to an object
//     with exactly the keys dtype, shape, data_offsets;
//   - dtype is one of F64 F32 F16 BF16 F8_E4M3 F8_E5M2 I64 I32 I16 I8 U64 U32 U16 U8 BOOL;
//   - shape is a list of non-negative integers; data_offsets two integers, begin <= end;
//   - product(shape) x dtype size == end - begin (no overflow);
//   - ordered by begin, the tensors tile the data section exactly: the first begins at 0, each
//     begins where the previous ends (an overlap or a gap is an error naming both tensors) and
//     the last ends at the end of the file (a shorter file is reported as truncated).
// Every error is InvalidArgument (DataLoss for a truncated file) and names the file, the tensor
// when there is one, and the problem, e.g.
//   "x/model.safetensors: tensor 'lm_head.weight': shape [4, 8] x BF16 (2 bytes) = 64 bytes, but
//    data_offsets [0, 60] hold 60".
//
// Sharded checkpoints (a directory): either one model.safetensors, or model.safetensors.index.json
// {"metadata": {"total_size": bytes}, "weight_map": {tensor name: file name}} and the files it
// names (model-00001-of-00003.safetensors, ...). SafetensorsDir opens either form and checks that
// the index and the files agree.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/tensor.h"

namespace fathom::data {

// The dtype names of the format.
enum class StDType : uint8_t {
  kF64,
  kF32,
  kF16,
  kBF16,
  kF8E4M3,
  kF8E5M2,
  kI64,
  kI32,
  kI16,
  kI8,
  kU64,
  kU32,
  kU16,
  kU8,
  kBool
};
std::string_view st_dtype_name(StDType dtype);  // "F32", "F8_E4M3", ...
size_t st_dtype_size(StDType dtype);
// The name's dtype; InvalidArgument listing the accepted names otherwise.
absl::StatusOr<StDType> parse_st_dtype(std::string_view name);
// The fathom dtype a tensor of this dtype is loaded as: F16 -> f32 (converted; kernels have no
// f16), F32, BF16, F8_E4M3, F8_E5M2, I64, I32, U8 and BOOL (-> u8) directly. InvalidArgument for
// the others (F64, I16, I8, U16, U32, U64).
absl::StatusOr<DType> fathom_dtype_for(StDType dtype);
// The safetensors dtype a fathom tensor is written as (f32 -> F32, bf16 -> BF16, ...).
StDType st_dtype_for(DType dtype);

// One tensor of a file, as its header describes it.
struct StTensorInfo {
  std::string name;
  StDType dtype = StDType::kF32;
  Shape shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
  int64_t numel() const;
};

// A memory-mapped, validated safetensors file. Move-only; the mapping lives as long as the object.
class SafetensorsFile {
 public:
  // Maps and validates `path` (see the file comment). NotFound when it does not exist.
  static absl::StatusOr<SafetensorsFile> open(const std::string& path);

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  // Every tensor, in data order (by begin offset).
  const std::vector<StTensorInfo>& tensors() const { return tensors_; }
  // The tensor named `name`, or nullptr.
  const StTensorInfo* find(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The tensor's bytes inside the mapping (valid while this object lives). info must come from
  // tensors() / find() of this file.
  absl::Span<const uint8_t> bytes(const StTensorInfo& info) const;
  // A copy of tensor `name` as a host Tensor of fathom_dtype_for(dtype), F16 converted to f32.
  // NotFound naming the tensor and the file; InvalidArgument for a dtype without a fathom dtype.
  absl::StatusOr<Tensor> read(std::string_view name) const;

 private:
  struct Mapping;
  SafetensorsFile() = default;

  std::string path_;
  std::unique_ptr<Mapping> mapping_;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::vector<StTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

// The header of a file holding `tensors` (exposed for tests that build malformed files).
struct StNamedTensor {
  std::string name;
  Tensor tensor;  // any device; f32, bf16, f8e4m3, f8e5m2, i32, i64 or u8
};

// Writes `tensors` (in this order) and `metadata` to `path` atomically: a temporary file in the
// same directory, fsync, rename, fsync of the directory. The header is padded with spaces to a
// multiple of 8 bytes, so every tensor starts 8-byte aligned. Throws fathom::Error for an empty
// or repeated name or an undefined tensor; errno-based errors naming the file for I/O failures.
absl::Status write_safetensors(const std::string& path, absl::Span<const StNamedTensor> tensors,
                               const std::map<std::string, std::string>& metadata = {});

// Writes `contents` to `path` atomically as write_safetensors() does (config.json, the index).
absl::Status write_file_atomically(const std::string& path, std::string_view contents);

// Where a directory checkpoint's files go and how big they may get.
struct ShardOptions {
  // Files hold at most this many bytes of tensor data; a larger tensor gets a file of its own.
  // With everything under it, one model.safetensors and no index are written.
  uint64_t max_shard_bytes = uint64_t{5} << 30;
  std::map<std::string, std::string> metadata = {{"format", "pt"}};  // in every file's header
};

// Plans the shard files of a checkpoint whose tensors, in order, hold `bytes` bytes each: returns
// the shard number of every tensor (consecutive tensors fill a shard until the next would exceed
// max_shard_bytes). shard_file_name(i, n) names the files.
std::vector<int> plan_shards(absl::Span<const uint64_t> bytes, uint64_t max_shard_bytes);
// "model.safetensors" when n == 1, else "model-00001-of-00003.safetensors" (i is 0-based).
std::string shard_file_name(int index, int count);
constexpr char kSafetensorsIndexName[] = "model.safetensors.index.json";

// Writes the index file (atomically) for tensors named `names` stored in `files` (same length):
// {"metadata": {"total_size": total_bytes}, "weight_map": {...}}.
absl::Status write_safetensors_index(const std::string& dir, absl::Span<const std::string> names,
                                     absl::Span<const std::string> files, uint64_t total_bytes);

// A checkpoint directory: model.safetensors, or an index and its shard files.
class SafetensorsDir {
 public:
  // Opens `dir`. With an index: it must be a JSON object whose weight_map maps names to file
  // names (plain names, no '/'); every file it names must open and validate, and hold the tensors
  // the index assigns to it; a tensor held by a file but missing from the index, or held by two
  // files, is an error. Without an index: model.safetensors. NotFound when `dir` has neither.
  static absl::StatusOr<SafetensorsDir> open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  // Every tensor name, sorted.
  std::vector<std::string> names() const;
  // The header entry and file of tensor `name`, or nullptr.
  const StTensorInfo* find(std::string_view name) const;
  const SafetensorsFile* file_of(std::string_view name) const;
  // As SafetensorsFile::read().
  absl::StatusOr<Tensor> read(std::string_view name) const;
  bool sharded() const { return files_.size() > 1 || has_index_; }

 private:
  std::string dir_;
  bool has_index_ = false;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t, std::less<>> where_;  // name -> index in files_
};

}  // namespace fathom::data
