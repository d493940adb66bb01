// Configuration of a dense student model (SPEC.md section 3, distillation): a standard decoder in
// the Llama or Qwen2 layout (GQA attention with RoPE, SwiGLU FFN, RMSNorm, pre-norm residuals),
// the models DeepSeek-R1 distils into. Field names are those of the Hugging Face config.json, so
// a preset reads like the published config. A student YAML has one `student:` mapping:
//   student:
//     architecture: qwen2
//     hidden_size: 1536
//     ...
// Presets: configs/models/student-*.yaml.
//
// Global parameter names and shapes (the keys of a fathom dense checkpoint; the student model
// uses them; H = hidden_size, I = intermediate_size, V = vocab_size, d = head_dim,
// nh = num_attention_heads, nkv = num_key_value_heads):
//   embed.weight                    [V, H]
//   layers.N.attn_norm.weight       [H]
//   layers.N.attn.wq.weight         [nh * d, H]
//   layers.N.attn.wk.weight         [nkv * d, H]
//   layers.N.attn.wv.weight         [nkv * d, H]
//   layers.N.attn.{wq,wk,wv}.bias   [nh * d], [nkv * d], [nkv * d]   (attention_bias only)
//   layers.N.attn.wo.weight         [H, nh * d]
//   layers.N.ffn_norm.weight        [H]
//   layers.N.ffn.w1.weight          [I, H]   gate projection: y = w2 (silu(w1 x) * w3 x)
//   layers.N.ffn.w2.weight          [H, I]
//   layers.N.ffn.w3.weight          [I, H]
//   norm.weight                     [H]
//   head.weight                     [V, H]   (absent when tie_word_embeddings: the head is embed)
// Linear weights are [out, in]. RoPE rotates the two halves of each head (x[i], x[i + d/2]): the
// Hugging Face Llama/Qwen2 convention, so q/k weights need no permutation.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/tensor.h"
#include "yaml-cpp/yaml.h"

namespace fathom::model {

enum class DenseArchitecture : uint8_t { kLlama, kQwen2 };
std::string_view dense_architecture_name(DenseArchitecture a);  // "llama" / "qwen2"

// Llama 3.1's RoPE frequency scaling ("rope_type": "llama3"); kNone: plain RoPE.
enum class DenseRopeScaling : uint8_t { kNone, kLlama3 };

struct DenseConfig {
  DenseArchitecture architecture = DenseArchitecture::kLlama;
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;
  int64_t head_dim = 128;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 4096;
  bool tie_word_embeddings = false;
  bool attention_bias = false;      // q/k/v biases (Qwen2: true)
  double initializer_range = 0.02;  // std of the normal init of matrices
  // rope_scaling (Llama 3.1): frequencies with wavelength above original / low_freq_factor are
  // divided by rope_factor, those below original / high_freq_factor kept, a smooth blend between.
  DenseRopeScaling rope_scaling = DenseRopeScaling::kNone;
  double rope_factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;

  bool operator==(const DenseConfig&) const = default;
};

// Checks every constraint, reporting every violation as "<path>.<key>: <problem>" lines
// (InvalidArgument): sizes positive and at most 2^31 - 1; num_key_value_heads divides
// num_attention_heads; head_dim even; rope_theta > 1; rms_norm_eps, initializer_range > 0; with
// llama3 scaling: rope_factor >= 1, 0 < low_freq_factor < high_freq_factor,
// original_max_position_embeddings positive.
absl::Status validate(const DenseConfig& config, std::string_view path = "student");

// Reads a `student:` mapping (node: its value) and validates it; errors as parse_model_config()
// (wrong types, unknown keys with suggestions, an unknown architecture or rope_scaling), each
// naming the key path and, when `source` is given, "file:line".
absl::StatusOr<DenseConfig> parse_dense_config(const YAML::Node& node,
                                               std::string_view path = "student",
                                               std::string_view source = "");
// The `student:` section of a YAML file. NotFound for a missing file; InvalidArgument for
// invalid YAML, a missing `student:` section and everything parse_dense_config() reports.
absl::StatusOr<DenseConfig> load_dense_config(const std::string& file);
// "student:\n  architecture: qwen2\n  ..." with every field; parse gives back an equal config.
std::string dense_config_to_yaml(const DenseConfig& config);

// One parameter of the dense model.
struct DenseParameterInfo {
  std::string name;  // see the table above
  Shape shape;
  bool weight_decay = true;  // matrices; norms and biases are not decayed
};
// Every parameter of the model in a fixed order (embedding, layers, norm, head).
std::vector<DenseParameterInfo> dense_parameters(const DenseConfig& config);
// Their total element count.
int64_t dense_parameter_count(const DenseConfig& config);

}  // namespace fathom::model
