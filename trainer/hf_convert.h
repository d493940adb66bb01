// Conversion between fathom HDF5 checkpoints (trainer/checkpoint.h) and Hugging Face checkpoint
// directories (config.json + safetensors, data/safetensors.h), for any model whose tensors map
// one to one or by rows of a stacked tensor. The DeepSeek-V3 layout (trainer/hf_checkpoint.h)
// and the dense student layouts (trainer/hf_dense.h) are tables of HfMapEntry fed to the two
// engines here; convert_hf_to_fathom() / convert_fathom_to_hf() pick the table from the files.
// docs/checkpoints.md describes the mappings and rules.
//
// Import (HF -> fathom), everything checked before anything is written:
//   - every HF tensor of the table is present with its shape; a tensor that is neither in the
//     table nor the scale of an FP8 weight is an error ("unexpected tensor"), as is a missing one;
//   - dtypes: F32, BF16 and F16 become f32 exactly; F8_E4M3 needs `<name>_scale_inv` (F32,
//     [ceil(rows / 128), ceil(cols / 128)]) and is dequantized to f32 as
//     w[i][j] = e4m3(q[i][j]) * scale_inv[i / 128][j / 128] (one f32 rounding; ragged edge blocks)
//     or, with Fp8Import::kKeep, stored as f8e4m3 with its scales under `<name>_scale_inv`;
//   - HF copies of a tensor (alias entries, e.g. the MTP layer's embed_tokens) must equal it.
//   The checkpoint is written as shard files of at most max_shard_bytes each (stacked expert
//   tensors split by rows), into "<out>.tmp-<pid>" renamed to <out> at the end: <out> appears
//   complete or not at all. Its metadata text "config" holds the model YAML, also written as
//   <out>/model.yaml.
// Export (fathom -> HF) reads the checkpoint shard by shard (memory: one output file), writes
// config.json, the safetensors files (model.safetensors, or model-0000i-of-0000n.safetensors and
// model.safetensors.index.json) into a temporary directory renamed to <out> at the end. Optimizer
// states ("optim.*") are skipped; any other tensor that is not in the table is an error.
//
// Errors are absl::Status naming the file and tensor: NotFound (missing input, tensor),
// InvalidArgument (shape, dtype, config, unexpected tensors, differing copies), AlreadyExists
// (<out> exists), and I/O errors.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/tensor.h"
#include "model/config.h"
#include "model/dense_config.h"
#include "nlohmann/json.hpp"

namespace fathom::trainer {

// One HF tensor and where it lives in the fathom checkpoint.
struct HfMapEntry {
  std::string hf;      // "model.layers.3.mlp.experts.5.gate_proj.weight"
  std::string ours;    // "layers.3.ffn.experts.w1.weight"
  Shape our_shape;     // global shape of `ours`
  int64_t row = -1;    // -1: the HF tensor is all of `ours`; else row `row` of its dim 0
  bool fp8 = false;    // a linear weight stored as FP8 in DeepSeek's release (--fp8 export)
  bool alias = false;  // an HF copy of `ours` (written on export, checked equal on import)
  // hf empty: a fathom tensor the HF layout lacks because it is zero there (the router bias of
  // greedy routing): imported as zeros, checked to be zero on export.
  Shape hf_shape() const;
};

enum class Fp8Import : uint8_t { kDequantize, kKeep };

struct HfImportOptions {
  Fp8Import fp8 = Fp8Import::kDequantize;
  uint64_t max_shard_bytes = uint64_t{4} << 30;  // of each fathom checkpoint shard file
};

struct HfExportOptions {
  DType dtype = DType::kF32;  // f32 or bf16: tensors that are not written as FP8
  bool fp8 = false;           // quantize the fp8 entries to E4M3 with 128x128 weight_scale_inv
  bool dequantize = false;    // write FP8 tensors of a --keep-fp8 checkpoint as `dtype`
  uint64_t max_shard_bytes = uint64_t{5} << 30;  // of each safetensors file
};

struct ConvertReport {
  std::string kind;         // "deepseek_v3" or the dense architecture
  int64_t tensors = 0;      // written
  int64_t fp8_tensors = 0;  // written as FP8 (with scales)
  int64_t files = 0;        // data files written
  uint64_t bytes = 0;       // tensor bytes written
};

// The suffix of an FP8 weight's scale tensor, in both formats: "<name>_scale_inv".
constexpr char kScaleInvSuffix[] = "_scale_inv";

// Imports the HF directory `hf_dir` (config.json already parsed into `config_yaml`, the model
// YAML stored with the checkpoint, and `table`) into a new fathom checkpoint `out_dir`.
absl::StatusOr<ConvertReport> import_with_map(const std::string& hf_dir, const std::string& out_dir,
                                              const std::vector<HfMapEntry>& table,
                                              const std::string& config_yaml,
                                              const HfImportOptions& options,
                                              const std::string& kind);

// Exports `checkpoint_dir` to a new HF directory `out_dir` with `config_json` as config.json
// (quantization_config is added when FP8 tensors are written).
absl::StatusOr<ConvertReport> export_with_map(const std::string& checkpoint_dir,
                                              const std::string& out_dir,
                                              const std::vector<HfMapEntry>& table,
                                              nlohmann::json config_json,
                                              const HfExportOptions& options,
                                              const std::string& kind);

// Reads and parses `<dir>/config.json`. NotFound / InvalidArgument naming the file.
absl::StatusOr<nlohmann::json> read_config_json(const std::string& dir);

// Typed reads of config.json keys that record "<source>: <key>: <problem>" lines.
class JsonConfigReader {
 public:
  JsonConfigReader(const nlohmann::json& config, std::string source)
      : config_(config), source_(std::move(source)) {}
  bool has(const char* key) const { return config_.contains(key) && !config_[key].is_null(); }
  // Required unless a default is given (then absent or null keeps *out).
  void integer(const char* key, int64_t* out, bool required = true);
  void real(const char* key, double* out, bool required = true);
  void boolean(const char* key, bool* out, bool required = true);
  void string(const char* key, std::string* out, bool required = true);
  // The nested object `key` (e.g. rope_scaling) as a reader of its own, whose errors name
  // "<source>: <key>"; nullopt when absent or null, and a recorded problem when not an object.
  std::optional<JsonConfigReader> object(const char* key);
  // A rope_scaling object's kind: "rope_type", or the older spelling "type".
  std::string rope_type();
  // Records a problem with `key`.
  void fail(std::string_view key, std::string_view message);
  const nlohmann::json& json() const { return config_; }
  // OK, or InvalidArgument with every recorded line.
  absl::Status status() const;

 private:
  const nlohmann::json& config_;
  std::string source_;
  std::vector<std::string> errors_;
};

// The model config saved in a fathom checkpoint (metadata text "config": a run YAML or a model
// YAML): exactly one of the two is set. InvalidArgument when there is none or it does not parse.
struct SavedModelConfig {
  std::optional<model::ModelConfig> v3;     // a `model:` section
  std::optional<model::DenseConfig> dense;  // a `student:` section
};
absl::StatusOr<SavedModelConfig> read_saved_model_config(const std::string& checkpoint_dir);

// HF dir -> fathom checkpoint: DeepSeek-V3 (model_type deepseek_v3 / deepseek_v2) or a dense
// student (llama / qwen2), chosen by config.json's model_type.
absl::StatusOr<ConvertReport> convert_hf_to_fathom(const std::string& hf_dir,
                                                   const std::string& out_dir,
                                                   const HfImportOptions& options);
// fathom checkpoint -> HF dir, chosen by the checkpoint's saved config (`model:` for
// DeepSeek-V3, `student:` for a dense student).
absl::StatusOr<ConvertReport> convert_fathom_to_hf(const std::string& checkpoint_dir,
                                                   const std::string& out_dir,
                                                   const HfExportOptions& options);

}  // namespace fathom::trainer
