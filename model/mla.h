// Multi-head Latent Attention (MLA), DeepSeek-V2/V3's attention layer (SPEC.md section 1), with an
// explicit backward. It computes what DeepSeek's inference/model.py MLA computes in "naive" mode:
//
//   q     = wq(x)                          (q_lora_rank == 0), or
//   q     = wq_b(q_norm(wq_a(x)))          (q_lora_rank > 0)            (T, H, qk_nope + qk_rope)
//   [c_kv | k_pe] = wkv_a(x)                                            (T, kv_lora_rank + qk_rope)
//   [k_nope | v]  = wkv_b(kv_norm(c_kv))   per head                     (T, H, qk_nope + v_head)
//   RoPE (interleaved pairs) on the last qk_rope dims of every query head and on k_pe, which is
//   ONE rotary key shared by all heads and does not pass through kv_norm;
//   k     = [k_nope ; k_pe] per head
//   o     = causal softmax(q k^T * softmax_scale) v                    (T, H * v_head)
//   y     = wo(o)
//
// softmax_scale is ModelConfig::softmax_scale() (qk_head_dim^-0.5, times YaRN's mscale^2). The
// Linears run in the layer's TrainingPrecision; the norms, RoPE and the attention core in f32.
// Parameters (prefix "layers.0.attn"): wq_a, q_norm, wq_b (or wq), wkv_a, kv_norm, wkv_b, wo, in
// that order; DeepSeek's checkpoint names and [out, in] layouts.
//
// Activation recomputation (V3 report, section 3.2.3): with `recompute`, forward does not keep the
// outputs of q_norm / kv_norm nor those of the up-projections wq_b / wkv_b (q and k, v); backward
// rebuilds them from the saved wq_a / wkv_a outputs with the same kernels, so gradients are
// bitwise those of the non-recomputing layer. Without query compression (q_lora_rank == 0) q is
// kept either way: it comes straight from x, there is no up-projection to redo.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "kernels/ops/rope.h"
#include "kernels/tensor.h"
#include "model/config.h"
#include "model/linear.h"
#include "model/module.h"
#include "model/norm.h"
#include "model/precision.h"

namespace fathom::model {

class Mla {
 public:
  // prefix: "layers.0.attn" gives "layers.0.attn.wq_a.weight", ... . config must be valid
  // (validate()). All parameters live on `device`; every input must be on it too.
  Mla(const std::string& prefix, const ModelConfig& config, TrainingPrecision precision,
      Device device, bool recompute = false);

  // What forward keeps for backward, for one micro-batch (owned by the caller). Tensors marked
  // "recompute: empty" are left undefined when the layer recomputes.
  struct Saved {
    int64_t batch = 0;
    Tensor x;          // (T, dim) input (shared, not copied)
    Tensor positions;  // (T) i32
    RopeTable rope;    // the caller's table (tensors shared, not copied)
    // q_lora_rank > 0 only: q_norm's input, the wq_a output (T, q_lora_rank), and its rstd.
    RmsNorm::Saved q_norm;
    Tensor q_c;  // (T, q_lora_rank) q_norm output, the input of wq_b; recompute: empty
    Tensor q;    // (B, S, H, qk_head_dim) roped queries; recompute with wq_b: empty
    // kv_norm's input c_kv (T, kv_lora_rank), the first columns of wkv_a's output, and its rstd.
    RmsNorm::Saved kv_norm;
    Tensor k_pe;        // (T, qk_rope_head_dim) the roped shared rotary key
    Tensor kv_c;        // (T, kv_lora_rank) kv_norm output, the input of wkv_b; recompute: empty
    Tensor k;           // (B, S, H, qk_head_dim); recompute: empty
    Tensor v;           // (B, S, H, v_head_dim); recompute: empty
    Tensor head_index;  // (T * H) i32: row t * H + h -> t, broadcasts / sums k_pe over heads
    Tensor out;         // (B, S, H, v_head_dim) attention output, the input of wo
    Tensor lse;         // (B, H, S) f32 row log-sum-exp of the attention
  };

  // x: (B*S, dim) f32; batch: B (x.dim(0) must be a multiple of it); positions: (B*S) i32, each
  // below rope's max position; rope: make_rope_table(rope_config(config), config.max_seq_len) on
  // the layer's device (saved shares its tensors). y: (B*S, dim) f32 (=). Throws fathom::Error on
  // a shape, dtype or device mismatch or an out-of-range position (CPU).
  void forward(const Tensor& x, int64_t batch, const Tensor& positions, const RopeTable& rope,
               Tensor& y, Saved& saved) const;
  // dy: (B*S, dim) f32 -> dx: (B*S, dim) f32 (=). Parameter gradients (+=): the GEMM weight
  // gradients now, or deferred into `store` when one is given; the norm weight gradients now.
  void backward(const Tensor& dy, const Saved& saved, Tensor& dx, WeightGradStore* store);

  // wq_a, q_norm, wq_b (or wq), wkv_a, kv_norm, wkv_b, wo.
  void append_parameters(ParameterList& out);
  // Linear weights Normal(0, std) keyed by (seed, name); norm weights 1.
  void init(uint64_t seed, double std);

  bool recompute() const { return recompute_; }
  const ModelConfig& config() const { return config_; }

  std::optional<Linear> wq;    // q_lora_rank == 0: (H * qk_head_dim, dim)
  std::optional<Linear> wq_a;  // q_lora_rank > 0: (q_lora_rank, dim)
  std::optional<RmsNorm> q_norm;
  std::optional<Linear> wq_b;  // (H * qk_head_dim, q_lora_rank)
  Linear wkv_a;                // (kv_lora_rank + qk_rope_head_dim, dim)
  RmsNorm kv_norm;
  Linear wkv_b;  // (H * (qk_nope_head_dim + v_head_dim), kv_lora_rank)
  Linear wo;     // (dim, H * v_head_dim)

 private:
  // q (B, S, H, qk_head_dim), roped, from q_c = q_norm(wq_a(x)) (or from x without compression).
  Tensor project_q(const Tensor& q_in, int64_t batch, const Tensor& positions,
                   const RopeTable& rope) const;
  // k (B, S, H, qk_head_dim) and v (B, S, H, v_head_dim) from kv_c = kv_norm(c_kv) and the roped
  // k_pe.
  void project_kv(const Tensor& kv_c, const Tensor& k_pe, const Tensor& head_index, int64_t batch,
                  Tensor& k, Tensor& v) const;

  ModelConfig config_;
  bool recompute_;
};

}  // namespace fathom::model
