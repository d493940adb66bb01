#include "model/param_count.h"

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/check.h"

namespace fathom::model {
namespace {

constexpr int64_t kFp8Block = 128;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Weights of the Linears of one module that run in FP8, and their 128x128 block-scale count.
struct Fp8Linears {
  int64_t weights = 0;
  int64_t scales = 0;

  // A Linear stored [out, in], `copies` times.
  void add(int64_t out, int64_t in, int64_t copies = 1) {
    weights += copies * out * in;
    scales += copies * ceil_div(out, kFp8Block) * ceil_div(in, kFp8Block);
  }
  void add(const Fp8Linears& other, int64_t copies = 1) {
    weights += copies * other.weights;
    scales += copies * other.scales;
  }
};

Fp8Linears mla_linears(const ModelConfig& c) {
  Fp8Linears l;
  const int64_t q_out = c.n_heads * c.qk_head_dim();
  if (c.q_lora_rank > 0) {
    l.add(c.q_lora_rank, c.dim);  // wq_a
    l.add(q_out, c.q_lora_rank);  // wq_b
  } else {
    l.add(q_out, c.dim);  // wq
  }
  l.add(c.kv_lora_rank + c.qk_rope_head_dim, c.dim);  // wkv_a
  l.add(c.n_heads * (c.qk_nope_head_dim + c.v_head_dim),
        c.kv_lora_rank);                   // wkv_b
  l.add(c.dim, c.n_heads * c.v_head_dim);  // wo
  return l;
}

// w1, w3: [hidden, dim]; w2: [dim, hidden].
Fp8Linears swiglu_linears(int64_t dim, int64_t hidden) {
  Fp8Linears l;
  if (hidden == 0) return l;
  l.add(hidden, dim, 2);
  l.add(dim, hidden);
  return l;
}

Fp8Linears block_linears(const ModelConfig& c, bool moe) {
  Fp8Linears l = mla_linears(c);
  if (moe) {
    l.add(swiglu_linears(c.dim, c.moe_inter_dim), c.n_routed_experts);
    l.add(swiglu_linears(c.dim, c.n_shared_experts * c.moe_inter_dim));
  } else {
    l.add(swiglu_linears(c.dim, c.inter_dim));
  }
  return l;
}

// The MTP block is built like layer n_layers + k of the main model: MoE unless the model is dense.
bool mtp_block_is_moe(const ModelConfig& c) { return c.n_moe_layers() > 0; }

// "671,026,404,352"
std::string with_commas(int64_t v) {
  std::string digits = absl::StrCat(v < 0 ? -v : v);
  std::string out;
  const int n = static_cast<int>(digits.size());
  for (int i = 0; i < n; ++i) {
    if (i > 0 && (n - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return v < 0 ? "-" + out : out;
}

// "671.03B", "926.68M", "16.83K", "512"
std::string approx(int64_t v) {
  char buf[32];
  const double d = static_cast<double>(v);
  if (v >= 1'000'000'000) {
    std::snprintf(buf, sizeof(buf), "%.2fB", d / 1e9);
  } else if (v >= 1'000'000) {
    std::snprintf(buf, sizeof(buf), "%.2fM", d / 1e6);
  } else if (v >= 1'000) {
    std::snprintf(buf, sizeof(buf), "%.2fK", d / 1e3);
  } else {
    std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(v));
  }
  return buf;
}

std::string count_row(const char* label, int64_t v, const std::string& note = "") {
  char buf[160];
  std::snprintf(buf, sizeof(buf), "  %-28s %20s  %9s", label, with_commas(v).c_str(),
                approx(v).c_str());
  std::string row = buf;
  if (!note.empty()) absl::StrAppend(&row, "   ", note);
  return row + "\n";
}

}  // namespace

int64_t mla_parameters(const ModelConfig& c) {
  int64_t n = mla_linears(c).weights + c.kv_lora_rank;  // kv_norm
  if (c.q_lora_rank > 0) n += c.q_lora_rank;            // q_norm
  return n;
}

int64_t dense_ffn_parameters(const ModelConfig& c) {
  return swiglu_linears(c.dim, c.inter_dim).weights;
}

int64_t expert_parameters(const ModelConfig& c) {
  return swiglu_linears(c.dim, c.moe_inter_dim).weights;
}

int64_t shared_expert_parameters(const ModelConfig& c) {
  return swiglu_linears(c.dim, c.n_shared_experts * c.moe_inter_dim).weights;
}

int64_t gate_parameters(const ModelConfig& c) { return c.n_routed_experts * c.dim; }

int64_t block_parameters(const ModelConfig& c, bool moe) {
  const int64_t ffn = moe ? gate_parameters(c) + c.n_routed_experts * expert_parameters(c) +
                                shared_expert_parameters(c)
                          : dense_ffn_parameters(c);
  return 2 * c.dim + mla_parameters(c) + ffn;
}

int64_t mtp_module_parameters(const ModelConfig& c) {
  // enorm, hnorm, eh_proj, the block, the norm before the shared head.
  return 2 * c.dim + 2 * c.dim * c.dim + block_parameters(c, mtp_block_is_moe(c)) + c.dim;
}

ParamCount count_parameters(const ModelConfig& c) {
  FATHOM_CHECK(validate(c).ok()) << "count_parameters needs a valid config: " << validate(c);
  ParamCount p;
  const int64_t n_moe = c.n_moe_layers();
  const int64_t n_dense = c.n_dense_layers;
  p.embedding = c.vocab_size * c.dim;
  p.head = c.vocab_size * c.dim;
  p.attention = c.n_layers * mla_parameters(c);
  p.dense_ffn = n_dense * dense_ffn_parameters(c);
  p.gates = n_moe * gate_parameters(c);
  p.routed_experts = n_moe * c.n_routed_experts * expert_parameters(c);
  p.shared_experts = n_moe * shared_expert_parameters(c);
  p.norms = 2 * c.dim * c.n_layers + c.dim;
  p.total = p.embedding + p.head + p.attention + p.dense_ffn + p.gates + p.routed_experts +
            p.shared_experts + p.norms;
  FATHOM_CHECK_EQ(p.total - p.embedding - p.head - c.dim,
                  n_dense * block_parameters(c, false) + n_moe * block_parameters(c, true));

  const int64_t unused_experts =
      (c.n_routed_experts - c.n_activated_experts) * expert_parameters(c);
  p.activated = p.total - p.embedding - n_moe * unused_experts;

  const bool mtp_moe = mtp_block_is_moe(c);
  p.mtp = c.mtp_depth * mtp_module_parameters(c);
  p.mtp_activated = p.mtp - (mtp_moe ? c.mtp_depth * unused_experts : 0);

  p.router_bias = (n_moe + (mtp_moe ? c.mtp_depth : 0)) * c.n_routed_experts;

  Fp8Linears fp8;
  fp8.add(block_linears(c, false), n_dense);
  fp8.add(block_linears(c, true), n_moe);
  Fp8Linears mtp_linears = block_linears(c, mtp_moe);
  mtp_linears.add(c.dim, 2 * c.dim);  // eh_proj
  fp8.add(mtp_linears, c.mtp_depth);
  p.fp8_linear = fp8.weights;
  p.fp8_block_scales = fp8.scales;
  return p;
}

int64_t training_state_bytes(const ParamCount& count, TrainingPrecision precision) {
  const int64_t params = count.trained();
  const int64_t buffers = 4 * count.router_bias;
  switch (precision) {
    case TrainingPrecision::kFp32:
      return 16 * params + buffers;
    case TrainingPrecision::kBf16:
      return 18 * params + buffers;
    case TrainingPrecision::kFp8: {
      // Master 4 + grads 4 + BF16 moments 4 for all; working copy 1 B (FP8) or 2 B (BF16).
      const int64_t other = params - count.fp8_linear;
      return 12 * params + count.fp8_linear + 4 * count.fp8_block_scales + 2 * other + buffers;
    }
  }
  return 0;
}

double bytes_per_parameter(const ParamCount& count, TrainingPrecision precision) {
  return static_cast<double>(training_state_bytes(count, precision)) /
         static_cast<double>(count.trained());
}

std::string describe_parameters(const ModelConfig& c) {
  const ParamCount p = count_parameters(c);
  std::string out;
  absl::StrAppend(&out, "model: ", c.n_layers, " layers (", c.n_dense_layers, " dense, ",
                  c.n_moe_layers(), " MoE)");
  if (c.mtp_depth > 0) {
    absl::StrAppend(&out, " + ", c.mtp_depth, " MTP module", c.mtp_depth > 1 ? "s" : "");
  }
  absl::StrAppend(&out, ", dim ", c.dim, ", vocab ", c.vocab_size, "\n");
  absl::StrAppend(&out, "attention: MLA, ", c.n_heads, " heads, q_lora_rank ", c.q_lora_rank,
                  ", kv_lora_rank ", c.kv_lora_rank, ", head dims ", c.qk_nope_head_dim, "+",
                  c.qk_rope_head_dim, " (qk) / ", c.v_head_dim, " (v)\n");
  if (c.n_moe_layers() > 0) {
    absl::StrAppend(&out, "experts: ", c.n_routed_experts, " routed (top-", c.n_activated_experts);
    if (c.n_expert_groups > 1) {
      absl::StrAppend(&out, " within ", c.n_limited_groups, " of ", c.n_expert_groups, " groups");
    }
    absl::StrAppend(&out, ", ", std::string(score_func_name(c.score_func)), ") + ",
                    c.n_shared_experts, " shared per MoE block, moe_inter_dim ", c.moe_inter_dim,
                    "\n");
  }

  out += "\nparameters\n";
  out += count_row("total (main model)", p.total);
  out += count_row("activated per token", p.activated,
                   c.n_moe_layers() > 0
                       ? absl::StrCat(c.n_activated_experts, " of ", c.n_routed_experts,
                                      " routed experts; embedding lookup not counted")
                       : "embedding lookup not counted");
  out += count_row("embedding", p.embedding);
  out += count_row("output head", p.head, "not tied to the embedding");
  const std::string mtp_label =
      c.mtp_depth == 1 ? "MTP (1 module)" : absl::StrCat("MTP (", c.mtp_depth, " modules)");
  out += count_row(mtp_label.c_str(), p.mtp, "embedding and head shared with the main model");
  out += count_row("trained (main + MTP)", p.trained());
  out += count_row("router bias (FP32 buffers)", p.router_bias, "not trained by gradients");

  out +=
      "\ntraining state: weights, gradients, AdamW m and v (main + MTP; no "
      "activations)\n";
  char buf[160];
  std::snprintf(buf, sizeof(buf), "  %-9s %12s %16s\n", "precision", "bytes/param", "total GiB");
  out += buf;
  const TrainingPrecision modes[] = {TrainingPrecision::kFp32, TrainingPrecision::kBf16,
                                     TrainingPrecision::kFp8};
  const char* notes[] = {"FP32 weights, grads, m, v", "BF16 weights; FP32 master, grads, m, v",
                         "FP8 linear weights + 128x128 scales, other weights BF16; FP32 master "
                         "and grads; BF16 m, v"};
  for (int i = 0; i < 3; ++i) {
    const double gib =
        static_cast<double>(training_state_bytes(p, modes[i])) / (1024.0 * 1024.0 * 1024.0);
    char total[32];
    std::snprintf(total, sizeof(total), gib >= 100 ? "%.1f" : (gib >= 1 ? "%.2f" : "%.4f"), gib);
    std::snprintf(buf, sizeof(buf), "  %-9s %12.2f %16s   %s\n",
                  std::string(precision_name(modes[i])).c_str(), bytes_per_parameter(p, modes[i]),
                  total, notes[i]);
    out += buf;
  }
  return out;
}

}  // namespace fathom::model
