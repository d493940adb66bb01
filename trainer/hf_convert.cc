#include "trainer/hf_convert.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "data/safetensors.h"
#include "kernels/check.h"
#include "kernels/fp8.h"
#include "trainer/checkpoint.h"
#include "trainer/hf_checkpoint.h"
#include "trainer/hf_dense.h"
#include "yaml-cpp/yaml.h"

namespace fathom::trainer {
namespace {

namespace fs = std::filesystem;
using data::StDType;
using data::StTensorInfo;
using nlohmann::json;

constexpr char kConfigKey[] = "config";  // the checkpoint metadata text the trainer uses too
constexpr size_t kListedNames = 5;       // names quoted in a "missing / unexpected" error

int64_t numel_of(absl::Span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string list_some(const std::vector<std::string>& names) {
  std::vector<std::string> quoted;
  for (size_t i = 0; i < names.size() && i < kListedNames; ++i) {
    quoted.push_back(absl::StrCat("'", names[i], "'"));
  }
  std::string out = absl::StrJoin(quoted, ", ");
  if (names.size() > kListedNames)
    absl::StrAppend(&out, " and ", names.size() - kListedNames, " more");
  return out;
}

absl::Status fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return absl::Status(
        absl::ErrnoToStatusCode(errno),
        absl::StrCat("cannot open directory ", dir.string(), ": ", std::strerror(errno)));
  }
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (rc != 0) {
    return absl::Status(
        absl::ErrnoToStatusCode(error),
        absl::StrCat("fsync failed for ", dir.string(), ": ", std::strerror(error)));
  }
  return absl::OkStatus();
}

// A temporary output directory "<out>.tmp-<pid>" that is removed unless committed (renamed to
// <out>).
class TempOutput {
 public:
  explicit TempOutput(const std::string& out)
      : out_(fs::path(out).lexically_normal()),
        tmp_(out_.string() + ".tmp-" + std::to_string(::getpid())) {
    if (out_.filename().empty()) out_ = out_.parent_path();
    tmp_ = out_.string() + ".tmp-" + std::to_string(::getpid());
  }
  ~TempOutput() {
    std::error_code ec;
    if (!committed_) fs::remove_all(tmp_, ec);
  }
  // Checks that <out> does not exist, clears a stale temporary and creates the parent.
  absl::Status prepare() {
    std::error_code ec;
    if (fs::exists(out_, ec)) {
      return absl::AlreadyExistsError(absl::StrCat(out_.string(), " already exists"));
    }
    fs::remove_all(tmp_, ec);
    const fs::path parent = out_.has_parent_path() ? out_.parent_path() : fs::path(".");
    fs::create_directories(parent, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot create directory ", parent.string(), ": ", ec.message()));
    }
    return absl::OkStatus();
  }
  const fs::path& tmp() const { return tmp_; }
  absl::Status commit() {
    FATHOM_RETURN_IF_ERROR(fsync_dir(tmp_));
    if (::rename(tmp_.c_str(), out_.c_str()) != 0) {
      return absl::Status(absl::ErrnoToStatusCode(errno),
                          absl::StrCat("cannot rename ", tmp_.string(), " to ", out_.string(), ": ",
                                       std::strerror(errno)));
    }
    committed_ = true;
    return fsync_dir(out_.has_parent_path() ? out_.parent_path() : fs::path("."));
  }

 private:
  fs::path out_;
  fs::path tmp_;
  bool committed_ = false;
};

// f32 copy of a float tensor (f32 or bf16), exact.
Tensor to_f32(const Tensor& t) {
  if (t.dtype() == DType::kF32) return t;
  FATHOM_CHECK(t.dtype() == DType::kBF16) << "to_f32: " << t.str();
  Tensor out = Tensor::empty(t.shape(), DType::kF32);
  const bf16* src = t.data<bf16>();
  float* dst = out.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) dst[i] = bf16_to_float(src[i]);
  return out;
}

// f32 tensor -> `dtype` (f32: as is; bf16: round to nearest even).
Tensor from_f32(const Tensor& t, DType dtype) {
  if (dtype == DType::kF32) return t;
  FATHOM_CHECK(dtype == DType::kBF16) << "from_f32: " << dtype_name(dtype);
  Tensor out = Tensor::empty(t.shape(), DType::kBF16);
  const float* src = t.data<float>();
  bf16* dst = out.data<bf16>();
  for (int64_t i = 0; i < t.numel(); ++i) dst[i] = float_to_bf16(src[i]);
  return out;
}

// One HF tensor as the import reads it.
struct Source {
  const HfMapEntry* entry = nullptr;
  const StTensorInfo* info = nullptr;
  const StTensorInfo* scale = nullptr;  // FP8 weights only
  bool keep_fp8 = false;
};

// The HF tensor's values as f32 (dequantized when FP8).
absl::StatusOr<Tensor> read_as_f32(const data::SafetensorsDir& st, const Source& s) {
  FATHOM_ASSIGN_OR_RETURN(Tensor raw, st.read(s.entry->hf));
  if (s.scale == nullptr) return to_f32(raw);
  FATHOM_ASSIGN_OR_RETURN(Tensor scale, st.read(s.scale->name));
  Fp8Tensor q{raw, scale, ScaleBlock::k128x128};
  Tensor out = Tensor::empty(raw.shape(), DType::kF32);
  dequantize_fp8(q, out);
  return out;
}

absl::Status write_text(const fs::path& path, const std::string& text) {
  return data::write_file_atomically(path.string(), text);
}

}  // namespace

Shape HfMapEntry::hf_shape() const {
  if (row < 0) return our_shape;
  return Shape(our_shape.begin() + 1, our_shape.end());
}

// ---- import ----

absl::StatusOr<ConvertReport> import_with_map(const std::string& hf_dir, const std::string& out_dir,
                                              const std::vector<HfMapEntry>& table,
                                              const std::string& config_yaml,
                                              const HfImportOptions& options,
                                              const std::string& kind) {
  TempOutput output(out_dir);
  FATHOM_RETURN_IF_ERROR(output.prepare());
  FATHOM_ASSIGN_OR_RETURN(data::SafetensorsDir st, data::SafetensorsDir::open(hf_dir));
  const std::string where = hf_dir;

  std::map<std::string, const HfMapEntry*> by_hf;
  for (const HfMapEntry& e : table) by_hf[e.hf] = &e;
  std::vector<std::string> unexpected;
  for (const std::string& name : st.names()) {
    if (by_hf.count(name)) continue;
    if (absl::EndsWith(name, kScaleInvSuffix) &&
        by_hf.count(name.substr(0, name.size() - std::strlen(kScaleInvSuffix)))) {
      continue;  // checked with its weight
    }
    // Rotary inverse frequencies are computed from config.json; some exporters save them.
    if (absl::EndsWith(name, "rotary_emb.inv_freq")) continue;
    unexpected.push_back(name);
  }
  if (!unexpected.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": unexpected tensor", unexpected.size() > 1 ? "s " : " ", list_some(unexpected),
        ": not part of a ", kind, " model with this config.json"));
  }

  std::vector<Source> sources;
  std::vector<std::string> missing;
  for (const HfMapEntry& e : table) {
    Source s;
    s.entry = &e;
    if (e.hf.empty()) {
      sources.push_back(s);
      continue;
    }
    s.info = st.find(e.hf);
    if (s.info == nullptr) {
      missing.push_back(e.hf);
      continue;
    }
    const std::string at = absl::StrCat(st.file_of(e.hf)->path(), ": tensor '", e.hf, "'");
    const Shape expected = e.hf_shape();
    if (s.info->shape != expected) {
      return absl::InvalidArgumentError(absl::StrCat(at, ": shape ", shape_str(s.info->shape),
                                                     ", expected ", shape_str(expected),
                                                     " from config.json (fathom '", e.ours, "')"));
    }
    const StTensorInfo* scale = st.find(e.hf + kScaleInvSuffix);
    switch (s.info->dtype) {
      case StDType::kF32:
      case StDType::kBF16:
      case StDType::kF16:
        if (scale != nullptr) {
          return absl::InvalidArgumentError(
              absl::StrCat(at, ": has a ", kScaleInvSuffix, " tensor but is ",
                           std::string(data::st_dtype_name(s.info->dtype)), ", not F8_E4M3"));
        }
        break;
      case StDType::kF8E4M3: {
        if (expected.size() != 2) {
          return absl::InvalidArgumentError(
              absl::StrCat(at, ": F8_E4M3 is supported for 2-D weights only"));
        }
        if (scale == nullptr) {
          return absl::InvalidArgumentError(
              absl::StrCat(at, ": F8_E4M3 without its block scales '", e.hf, kScaleInvSuffix, "'"));
        }
        const Shape scale_shape = fp8_scale_shape(expected, ScaleBlock::k128x128);
        if (scale->dtype != StDType::kF32 || scale->shape != scale_shape) {
          return absl::InvalidArgumentError(absl::StrCat(
              st.file_of(scale->name)->path(), ": tensor '", scale->name,
              "': ", std::string(data::st_dtype_name(scale->dtype)), shape_str(scale->shape),
              ", expected F32", shape_str(scale_shape), " (one scale per 128x128 block)"));
        }
        s.scale = scale;
        s.keep_fp8 = options.fp8 == Fp8Import::kKeep;
        break;
      }
      default:
        return absl::InvalidArgumentError(
            absl::StrCat(at, ": dtype ", std::string(data::st_dtype_name(s.info->dtype)),
                         ", expected F32, BF16, F16 or F8_E4M3"));
    }
    sources.push_back(s);
  }
  if (!missing.empty()) {
    return absl::NotFoundError(absl::StrCat(where, ": missing tensor",
                                            missing.size() > 1 ? "s " : " ", list_some(missing),
                                            " (required by config.json)"));
  }

  // Copies stored again by HF must equal the tensor they copy; a stacked tensor is stored one way.
  std::map<std::string, const Source*> main_of;  // ours -> first non-alias source
  std::map<std::string, bool> keep_of;
  for (const Source& s : sources) {
    if (s.entry->alias) continue;
    main_of.emplace(s.entry->ours, &s);
    auto [it, inserted] = keep_of.emplace(s.entry->ours, s.keep_fp8);
    if (!inserted && it->second != s.keep_fp8) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": tensor '", s.entry->hf, "' is ", s.keep_fp8 ? "FP8" : "not FP8",
                       " unlike the other slices of fathom '", s.entry->ours,
                       "'; --keep-fp8 needs all of them in FP8 (or import with --dequantize)"));
    }
  }
  for (const Source& s : sources) {
    if (!s.entry->alias) continue;
    const Source* main = main_of.at(s.entry->ours);
    FATHOM_ASSIGN_OR_RETURN(Tensor copy, read_as_f32(st, s));
    FATHOM_ASSIGN_OR_RETURN(Tensor original, read_as_f32(st, *main));
    const float* a = copy.data<float>();
    const float* b = original.data<float>();
    for (int64_t i = 0; i < copy.numel(); ++i) {
      if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": tensor '", s.entry->hf, "' should be a copy of '",
                         main->entry->hf, "' (fathom shares one '", s.entry->ours,
                         "') but differs at element ", i, ": ", a[i], " vs ", b[i]));
      }
    }
  }

  // Shards of the fathom checkpoint: the non-alias sources in table order.
  std::vector<const Source*> units;
  std::vector<uint64_t> bytes;
  for (const Source& s : sources) {
    if (s.entry->alias) continue;
    units.push_back(&s);
    const int64_t n = numel_of(s.entry->hf_shape());
    bytes.push_back(s.keep_fp8 && s.scale != nullptr
                        ? static_cast<uint64_t>(n) + s.scale->end - s.scale->begin
                        : static_cast<uint64_t>(n) * 4);
  }
  FATHOM_CHECK(!units.empty()) << "import_with_map: empty table";
  const std::vector<int> shard_of = data::plan_shards(bytes, options.max_shard_bytes);
  const int shard_count = shard_of.back() + 1;

  ConvertReport report;
  report.kind = kind;
  CheckpointMeta meta;
  meta.step = 0;
  meta.text[kConfigKey] = config_yaml;
  meta.text["source"] = absl::StrCat("imported from Hugging Face checkpoint ", hf_dir);
  for (size_t begin = 0; begin < units.size();) {
    const int shard = shard_of[begin];
    size_t end = begin;
    while (end < units.size() && shard_of[end] == shard) ++end;
    std::vector<TensorShard> tensors;
    for (size_t g = begin; g < end;) {
      // A group: consecutive units of one fathom tensor (rows of a stacked tensor).
      const HfMapEntry& first = *units[g]->entry;
      size_t h = g + 1;
      while (h < end && units[h]->entry->ours == first.ours && first.row >= 0 &&
             units[h]->entry->row == units[h - 1]->entry->row + 1) {
        ++h;
      }
      const bool keep = units[g]->keep_fp8;
      Shape shape = first.our_shape;
      if (first.row >= 0) shape[0] = static_cast<int64_t>(h - g);
      Tensor values = Tensor::empty(shape, keep ? DType::kF8E4M3 : DType::kF32);
      Tensor scales;
      if (keep) scales = Tensor::empty(fp8_scale_shape(shape, ScaleBlock::k128x128), DType::kF32);
      for (size_t u = g; u < h; ++u) {
        const Source& s = *units[u];
        const Shape hf_shape = s.entry->hf_shape();
        Tensor dest =
            first.row >= 0 ? values.narrow(static_cast<int64_t>(u - g), 1).view(hf_shape) : values;
        if (s.entry->hf.empty()) {
          std::memset(dest.raw_data(), 0, dest.nbytes());
        } else if (keep) {
          FATHOM_ASSIGN_OR_RETURN(Tensor raw, st.read(s.entry->hf));
          FATHOM_ASSIGN_OR_RETURN(Tensor scale, st.read(s.scale->name));
          dest.copy_from(raw);
          Tensor scale_dest =
              first.row >= 0 ? scales.narrow(static_cast<int64_t>(u - g), 1).view(scale.shape())
                             : scales;
          scale_dest.copy_from(scale);
          ++report.fp8_tensors;
        } else {
          FATHOM_ASSIGN_OR_RETURN(Tensor f32, read_as_f32(st, s));
          dest.copy_from(f32);
        }
      }
      const int64_t row_offset = first.row >= 0 ? first.row : 0;
      tensors.push_back(TensorShard{first.ours, values, first.our_shape, row_offset});
      report.bytes += values.nbytes();
      if (keep) {
        tensors.push_back(TensorShard{first.ours + kScaleInvSuffix, scales,
                                      fp8_scale_shape(first.our_shape, ScaleBlock::k128x128),
                                      row_offset});
        report.bytes += scales.nbytes();
      }
      g = h;
    }
    FATHOM_RETURN_IF_ERROR(
        write_checkpoint_shard(output.tmp().string(), shard, shard_count, tensors, meta));
    report.files += 1;
    begin = end;
  }
  report.tensors = static_cast<int64_t>(keep_of.size());
  FATHOM_RETURN_IF_ERROR(write_text(output.tmp() / "model.yaml", config_yaml));
  FATHOM_RETURN_IF_ERROR(output.commit());
  return report;
}

// ---- export ----

absl::StatusOr<ConvertReport> export_with_map(const std::string& checkpoint_dir,
                                              const std::string& out_dir,
                                              const std::vector<HfMapEntry>& full_table,
                                              json config_json, const HfExportOptions& options,
                                              const std::string& kind) {
  FATHOM_CHECK(options.dtype == DType::kF32 || options.dtype == DType::kBF16)
      << "export_with_map: dtype must be f32 or bf16";
  TempOutput output(out_dir);
  FATHOM_RETURN_IF_ERROR(output.prepare());
  std::vector<HfMapEntry> table;
  std::vector<const HfMapEntry*> zeros;
  for (const HfMapEntry& e : full_table) {
    if (e.hf.empty()) {
      zeros.push_back(&e);
    } else {
      table.push_back(e);
    }
  }
  FATHOM_ASSIGN_OR_RETURN(std::vector<std::string> names, list_checkpoint_tensors(checkpoint_dir));
  const std::set<std::string> have(names.begin(), names.end());

  std::set<std::string> expected;
  std::map<std::string, bool> stored_fp8;
  std::vector<std::string> missing;
  for (const HfMapEntry& e : table) {
    if (e.alias || stored_fp8.count(e.ours)) continue;
    stored_fp8[e.ours] = have.count(e.ours + kScaleInvSuffix) > 0;
    expected.insert(e.ours);
    if (stored_fp8[e.ours]) expected.insert(e.ours + kScaleInvSuffix);
    if (!have.count(e.ours)) missing.push_back(e.ours);
  }
  if (!missing.empty()) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", checkpoint_dir, ": missing tensor",
                                            missing.size() > 1 ? "s " : " ", list_some(missing),
                                            " of the ", kind, " model its config describes"));
  }
  for (const HfMapEntry* e : zeros) expected.insert(e->ours);
  std::vector<std::string> unexpected;
  for (const std::string& name : names) {
    if (!expected.count(name) && !absl::StartsWith(name, "optim.")) unexpected.push_back(name);
  }
  if (!unexpected.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint ", checkpoint_dir, ": unexpected tensor", unexpected.size() > 1 ? "s " : " ",
        list_some(unexpected), ": not part of the ", kind, " model its config describes"));
  }

  if (!zeros.empty()) {
    std::vector<TensorShard> requests;
    for (const HfMapEntry* e : zeros) {
      if (!have.count(e->ours)) continue;  // absent is as good as zero
      requests.push_back(TensorShard{e->ours, Tensor::empty(e->our_shape, DType::kF32)});
    }
    FATHOM_RETURN_IF_ERROR(read_checkpoint(checkpoint_dir, absl::MakeSpan(requests), nullptr));
    for (const TensorShard& r : requests) {
      const float* v = r.tensor.data<float>();
      for (int64_t i = 0; i < r.tensor.numel(); ++i) {
        if (v[i] != 0.0f) {
          return absl::InvalidArgumentError(
              absl::StrCat("checkpoint ", checkpoint_dir, ": tensor '", r.name,
                           "' has the nonzero value ", v[i], " at element ", i, ", which the ",
                           kind, " Hugging Face layout cannot hold (it has no such tensor)"));
        }
      }
    }
  }

  // The output tensors in table order, each with its bytes; an FP8 weight and its scales share
  // a file.
  std::vector<bool> out_fp8(table.size());
  std::vector<uint64_t> bytes(table.size());
  for (size_t i = 0; i < table.size(); ++i) {
    const HfMapEntry& e = table[i];
    out_fp8[i] = stored_fp8[e.ours] ? !options.dequantize : options.fp8 && e.fp8;
    const Shape shape = e.hf_shape();
    const uint64_t n = static_cast<uint64_t>(numel_of(shape));
    bytes[i] =
        out_fp8[i]
            ? n + 4 * static_cast<uint64_t>(numel_of(fp8_scale_shape(shape, ScaleBlock::k128x128)))
            : n * dtype_size(options.dtype);
  }
  const std::vector<int> shard_of = data::plan_shards(bytes, options.max_shard_bytes);
  const int shard_count = shard_of.empty() ? 1 : shard_of.back() + 1;
  std::error_code ec;
  fs::create_directories(output.tmp(), ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create directory ", output.tmp().string(), ": ", ec.message()));
  }

  ConvertReport report;
  report.kind = kind;
  std::vector<std::string> index_names;
  std::vector<std::string> index_files;
  for (size_t begin = 0; begin < table.size();) {
    const int shard = shard_of[begin];
    size_t end = begin;
    while (end < table.size() && shard_of[end] == shard) ++end;
    // Rows of each fathom tensor this file needs: one read request per tensor.
    std::map<std::string, std::pair<int64_t, int64_t>> rows;  // ours -> [first, last]
    for (size_t i = begin; i < end; ++i) {
      const HfMapEntry& e = table[i];
      const int64_t r = e.row < 0 ? -1 : e.row;
      auto [it, inserted] = rows.emplace(e.ours, std::make_pair(r, r));
      if (!inserted) {
        it->second.first = std::min(it->second.first, r);
        it->second.second = std::max(it->second.second, r);
      }
    }
    std::map<std::string, const HfMapEntry*> any_entry;
    for (size_t i = begin; i < end; ++i) any_entry.emplace(table[i].ours, &table[i]);
    std::vector<TensorShard> requests;
    std::map<std::string, size_t> request_of;
    for (const auto& [ours, range] : rows) {
      const HfMapEntry& e = *any_entry.at(ours);
      Shape shape = e.our_shape;
      if (range.first >= 0) shape[0] = range.second - range.first + 1;
      const bool fp8 = stored_fp8[ours];
      const int64_t offset = std::max<int64_t>(range.first, 0);
      request_of[ours] = requests.size();
      requests.push_back(TensorShard{ours, Tensor::empty(shape, fp8 ? DType::kF8E4M3 : DType::kF32),
                                     e.our_shape, offset});
      if (fp8) {
        requests.push_back(
            TensorShard{ours + kScaleInvSuffix,
                        Tensor::empty(fp8_scale_shape(shape, ScaleBlock::k128x128), DType::kF32),
                        fp8_scale_shape(e.our_shape, ScaleBlock::k128x128), offset});
      }
    }
    FATHOM_RETURN_IF_ERROR(read_checkpoint(checkpoint_dir, absl::MakeSpan(requests), nullptr));

    std::vector<data::StNamedTensor> tensors;
    for (size_t i = begin; i < end; ++i) {
      const HfMapEntry& e = table[i];
      const size_t r = request_of.at(e.ours);
      const Shape shape = e.hf_shape();
      const int64_t local = e.row < 0 ? 0 : e.row - requests[r].row_offset;
      Tensor values =
          e.row < 0 ? requests[r].tensor : requests[r].tensor.narrow(local, 1).view(shape);
      Fp8Tensor q;
      q.block = ScaleBlock::k128x128;
      if (stored_fp8[e.ours]) {
        const Tensor& s = requests[r + 1].tensor;
        q.data = values;
        q.scales =
            e.row < 0 ? s : s.narrow(local, 1).view(fp8_scale_shape(shape, ScaleBlock::k128x128));
        if (!out_fp8[i]) {
          Tensor f32 = Tensor::empty(shape, DType::kF32);
          dequantize_fp8(q, f32);
          values = f32;
        }
      } else if (out_fp8[i]) {
        q = quantize_fp8(values, ScaleBlock::k128x128);
      }
      if (out_fp8[i]) {
        tensors.push_back({e.hf, q.data.clone()});
        tensors.push_back({e.hf + kScaleInvSuffix, q.scales.clone()});
        index_names.push_back(e.hf);
        index_names.push_back(e.hf + kScaleInvSuffix);
        ++report.fp8_tensors;
      } else {
        tensors.push_back({e.hf, from_f32(values, options.dtype)});
        index_names.push_back(e.hf);
      }
      ++report.tensors;
    }
    const std::string file = data::shard_file_name(shard, shard_count);
    for (size_t k = index_files.size(); k < index_names.size(); ++k) index_files.push_back(file);
    for (const data::StNamedTensor& t : tensors) report.bytes += t.tensor.nbytes();
    FATHOM_RETURN_IF_ERROR(
        data::write_safetensors((output.tmp() / file).string(), tensors, {{"format", "pt"}}));
    report.files += 1;
    begin = end;
  }
  if (shard_count > 1) {
    FATHOM_RETURN_IF_ERROR(data::write_safetensors_index(output.tmp().string(), index_names,
                                                         index_files, report.bytes));
  }
  config_json["torch_dtype"] = options.dtype == DType::kBF16 ? "bfloat16" : "float32";
  if (report.fp8_tensors > 0) {
    config_json["quantization_config"] = {{"activation_scheme", "dynamic"},
                                          {"fmt", "e4m3"},
                                          {"quant_method", "fp8"},
                                          {"weight_block_size", {128, 128}}};
  }
  FATHOM_RETURN_IF_ERROR(write_text(output.tmp() / "config.json", config_json.dump(2) + "\n"));
  FATHOM_RETURN_IF_ERROR(output.commit());
  return report;
}

// ---- config.json ----

absl::StatusOr<json> read_config_json(const std::string& dir) {
  const fs::path path = fs::path(dir) / "config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path.string(), ": cannot read"));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  json config;
  try {
    config = json::parse(text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": bad JSON: ", e.what()));
  }
  if (!config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": expected a JSON object"));
  }
  return config;
}

std::optional<JsonConfigReader> JsonConfigReader::object(const char* key) {
  if (!has(key)) return std::nullopt;
  const nlohmann::json& value = config_[key];
  if (!value.is_object()) {
    fail(key, absl::StrCat("expected an object or null, got ", value.dump()));
    return std::nullopt;
  }
  return JsonConfigReader(value, absl::StrCat(source_, ": ", key));
}

std::string JsonConfigReader::rope_type() {
  std::string type;
  string(has("rope_type") ? "rope_type" : "type", &type);
  return type;
}

void JsonConfigReader::fail(std::string_view key, std::string_view message) {
  errors_.push_back(absl::StrCat(source_, ": ", std::string(key), ": ", std::string(message)));
}

void JsonConfigReader::integer(const char* key, int64_t* out, bool required) {
  if (!has(key)) {
    if (required) fail(key, "missing");
    return;
  }
  const nlohmann::json& v = config_[key];
  if (v.is_number_integer()) {
    *out = v.get<int64_t>();
  } else if (v.is_number_float() &&
             v.get<double>() == static_cast<double>(static_cast<int64_t>(v.get<double>()))) {
    *out = static_cast<int64_t>(v.get<double>());  // 4096.0 as written by some tools
  } else {
    fail(key, absl::StrCat("expected an integer, got ", v.dump()));
  }
}

void JsonConfigReader::real(const char* key, double* out, bool required) {
  if (!has(key)) {
    if (required) fail(key, "missing");
    return;
  }
  const nlohmann::json& v = config_[key];
  if (v.is_number()) {
    *out = v.get<double>();
  } else {
    fail(key, absl::StrCat("expected a number, got ", v.dump()));
  }
}

void JsonConfigReader::boolean(const char* key, bool* out, bool required) {
  if (!has(key)) {
    if (required) fail(key, "missing");
    return;
  }
  const nlohmann::json& v = config_[key];
  if (v.is_boolean()) {
    *out = v.get<bool>();
  } else {
    fail(key, absl::StrCat("expected true or false, got ", v.dump()));
  }
}

void JsonConfigReader::string(const char* key, std::string* out, bool required) {
  if (!has(key)) {
    if (required) fail(key, "missing");
    return;
  }
  const nlohmann::json& v = config_[key];
  if (v.is_string()) {
    *out = v.get<std::string>();
  } else {
    fail(key, absl::StrCat("expected a string, got ", v.dump()));
  }
}

absl::Status JsonConfigReader::status() const {
  if (errors_.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(errors_, "\n"));
}

// ---- dispatch ----

absl::StatusOr<ConvertReport> convert_hf_to_fathom(const std::string& hf_dir,
                                                   const std::string& out_dir,
                                                   const HfImportOptions& options) {
  FATHOM_ASSIGN_OR_RETURN(json config, read_config_json(hf_dir));
  const std::string type = config.contains("model_type") && config["model_type"].is_string()
                               ? config["model_type"].get<std::string>()
                               : "";
  if (type == "deepseek_v3" || type == "deepseek_v2") return import_hf_v3(hf_dir, out_dir, options);
  if (type == "llama" || type == "qwen2") return import_hf_dense(hf_dir, out_dir, options);
  return absl::InvalidArgumentError(absl::StrCat(
      (fs::path(hf_dir) / "config.json").string(), ": model_type ",
      config.contains("model_type") ? config["model_type"].dump() : std::string("missing"),
      ": expected \"deepseek_v3\", \"deepseek_v2\", \"llama\" or \"qwen2\""));
}

absl::StatusOr<ConvertReport> convert_fathom_to_hf(const std::string& checkpoint_dir,
                                                   const std::string& out_dir,
                                                   const HfExportOptions& options) {
  FATHOM_ASSIGN_OR_RETURN(SavedModelConfig saved, read_saved_model_config(checkpoint_dir));
  if (saved.dense.has_value()) {
    // DeepSeek's release quantizes V3's linears; the students are published in BF16.
    if (options.fp8) {
      return absl::InvalidArgumentError(absl::StrCat(
          checkpoint_dir, ": --fp8 export applies to DeepSeek-V3 checkpoints, not to dense "
          "students (export them with --dtype bf16 or f32)"));
    }
    return export_hf_dense(checkpoint_dir, *saved.dense, out_dir, options);
  }
  return export_hf_v3(checkpoint_dir, *saved.v3, out_dir, options);
}

absl::StatusOr<SavedModelConfig> read_saved_model_config(const std::string& checkpoint_dir) {
  CheckpointMeta meta;
  FATHOM_RETURN_IF_ERROR(read_checkpoint(checkpoint_dir, {}, &meta));
  auto it = meta.text.find(kConfigKey);
  if (it == meta.text.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint ", checkpoint_dir, " has no saved config (metadata text 'config')"));
  }
  const std::string source = absl::StrCat(checkpoint_dir, " (saved config)");
  YAML::Node root;
  try {
    root = YAML::Load(it->second);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid YAML: ", e.what()));
  }
  SavedModelConfig out;
  if (root.IsMap() && root["student"].IsDefined()) {
    FATHOM_ASSIGN_OR_RETURN(out.dense,
                            model::parse_dense_config(root["student"], "student", source));
    return out;
  }
  if (root.IsMap() && root["model"].IsDefined()) {
    FATHOM_ASSIGN_OR_RETURN(out.v3, model::parse_model_config(root["model"], "model", source));
    return out;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": neither a 'model' (DeepSeek-V3) nor a 'student' section"));
}

}  // namespace fathom::trainer
