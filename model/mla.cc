#include "model/mla.h"

#include <vector>

#include "absl/types/span.h"
#include "kernels/check.h"
#include "kernels/ops/attention.h"
#include "kernels/ops/elementwise.h"
#include "kernels/ops/index.h"

namespace fathom::model {
namespace {

// Tensors have no strided views, so column blocks are cut and joined through the transpose:
// columns of x are rows of x^T, and rows narrow without copying.

// x (R, sum(widths)) -> one (R, w) tensor per width, in order.
std::vector<Tensor> split_columns(const Tensor& x, absl::Span<const int64_t> widths) {
  const int64_t rows = x.dim(0);
  std::vector<Tensor> parts;
  int64_t start = 0;
  for (int64_t w : widths) {
    Tensor part = Tensor::empty({rows, w}, x.dtype(), x.device());
    copy_columns(x, start, part, 0, w);
    parts.push_back(part);
    start += w;
  }
  FATHOM_CHECK(start == x.dim(1)) << "split_columns: widths sum to " << start << ", x is "
                                  << x.str();
  return parts;
}

// (R, w_i) tensors -> (R, sum w_i), side by side.
Tensor concat_columns(absl::Span<const Tensor> parts) {
  const int64_t rows = parts[0].dim(0);
  int64_t cols = 0;
  for (const Tensor& p : parts) cols += p.dim(1);
  Tensor out = Tensor::empty({rows, cols}, parts[0].dtype(), parts[0].device());
  int64_t start = 0;
  for (const Tensor& p : parts) {
    copy_columns(p, 0, out, start, p.dim(1));
    start += p.dim(1);
  }
  return out;
}

// Row t * heads + h -> t: broadcasts a per-token row to every head (gather_rows) and sums the
// heads' gradients back (scatter_add_rows).
Tensor make_head_index(int64_t tokens, int64_t heads, Device device) {
  std::vector<int32_t> index(static_cast<size_t>(tokens * heads));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < heads; ++h) index[t * heads + h] = static_cast<int32_t>(t);
  }
  return Tensor::from_vector(index, {tokens * heads}, device);
}

// In place on x (T, H * Dh) viewed as (T, H, Dh).
void rope_heads(const Tensor& x, int64_t heads, const Tensor& positions, const RopeTable& rope,
                bool inverse) {
  Tensor view = x.view({x.dim(0), heads, x.dim(1) / heads});
  rope_apply(view, positions, rope, inverse);
}

}  // namespace

Mla::Mla(const std::string& prefix, const ModelConfig& config, TrainingPrecision precision,
         Device device, bool recompute)
    : wkv_a(prefix + ".wkv_a.weight", config.kv_lora_rank + config.qk_rope_head_dim, config.dim,
            precision, device),
      kv_norm(prefix + ".kv_norm.weight", config.kv_lora_rank, static_cast<float>(config.norm_eps),
              device),
      wkv_b(prefix + ".wkv_b.weight",
            config.n_heads * (config.qk_nope_head_dim + config.v_head_dim), config.kv_lora_rank,
            precision, device),
      wo(prefix + ".wo.weight", config.dim, config.n_heads * config.v_head_dim, precision, device),
      config_(config),
      recompute_(recompute) {
  const int64_t q_out = config.n_heads * config.qk_head_dim();
  if (config.q_lora_rank > 0) {
    wq_a.emplace(prefix + ".wq_a.weight", config.q_lora_rank, config.dim, precision, device);
    q_norm.emplace(prefix + ".q_norm.weight", config.q_lora_rank,
                   static_cast<float>(config.norm_eps), device);
    wq_b.emplace(prefix + ".wq_b.weight", q_out, config.q_lora_rank, precision, device);
  } else {
    wq.emplace(prefix + ".wq.weight", q_out, config.dim, precision, device);
  }
}

Tensor Mla::project_q(const Tensor& q_in, int64_t batch, const Tensor& positions,
                      const RopeTable& rope) const {
  const int64_t t = q_in.dim(0);
  const int64_t heads = config_.n_heads;
  Tensor q =
      Tensor::empty({batch, t / batch, heads, config_.qk_head_dim()}, DType::kF32, q_in.device());
  Tensor q2 = q.view({t, heads * config_.qk_head_dim()});
  (wq_b ? *wq_b : *wq).forward(q_in, q2);
  rope_heads(q2, heads, positions, rope, /*inverse=*/false);
  return q;
}

void Mla::project_kv(const Tensor& kv_c, const Tensor& k_pe, const Tensor& head_index,
                     int64_t batch, Tensor& k, Tensor& v) const {
  const int64_t t = kv_c.dim(0);
  const int64_t s = t / batch;
  const int64_t heads = config_.n_heads;
  const int64_t nope = config_.qk_nope_head_dim;
  const int64_t rope_dim = config_.qk_rope_head_dim;
  const int64_t v_dim = config_.v_head_dim;
  Tensor kv = Tensor::empty({t, heads * (nope + v_dim)}, DType::kF32, kv_c.device());
  wkv_b.forward(kv_c, kv);
  const int64_t widths[] = {nope, v_dim};
  std::vector<Tensor> parts = split_columns(kv.view({t * heads, nope + v_dim}), widths);
  Tensor k_pe_heads = Tensor::empty({t * heads, rope_dim}, DType::kF32, kv_c.device());
  gather_rows(k_pe, head_index, Tensor(), k_pe_heads);
  const Tensor k_parts[] = {parts[0], k_pe_heads};
  k = concat_columns(k_parts).view({batch, s, heads, nope + rope_dim});
  v = parts[1].view({batch, s, heads, v_dim});
}

void Mla::forward(const Tensor& x, int64_t batch, const Tensor& positions, const RopeTable& rope,
                  Tensor& y, Saved& saved) const {
  constexpr const char* kOp = "Mla::forward";
  check_dtype(kOp, "x", x, DType::kF32);
  FATHOM_CHECK(x.ndim() == 2 && x.dim(1) == config_.dim)
      << kOp << ": x must be (T, " << config_.dim << "), got " << x.str();
  FATHOM_CHECK(batch >= 1 && x.dim(0) % batch == 0)
      << kOp << ": T = " << x.dim(0) << " is not a positive multiple of batch " << batch;
  check_shape(kOp, "y", y, x.shape());
  FATHOM_CHECK(rope.cos.defined() && 2 * rope.cos.dim(1) == config_.qk_rope_head_dim)
      << kOp << ": the rope table must rotate qk_rope_head_dim = " << config_.qk_rope_head_dim
      << " dims";
  const int64_t t = x.dim(0);
  const int64_t s = t / batch;
  const int64_t heads = config_.n_heads;
  const Device device = x.device();

  saved = Saved{};
  saved.batch = batch;
  saved.x = x;
  saved.positions = positions;
  saved.rope = rope;
  saved.head_index = make_head_index(t, heads, device);

  // Queries.
  Tensor q_in = x;
  if (wq_a) {
    Tensor q_a = Tensor::empty({t, config_.q_lora_rank}, DType::kF32, device);
    wq_a->forward(x, q_a);
    Tensor q_c = Tensor::empty({t, config_.q_lora_rank}, DType::kF32, device);
    q_norm->forward(q_a, q_c, saved.q_norm);
    if (!recompute_) saved.q_c = q_c;
    q_in = q_c;
  }
  Tensor q = project_q(q_in, batch, positions, rope);
  if (!recompute_ || wq) saved.q = q;

  // Keys and values: wkv_a(x) = [c_kv | k_pe]; only c_kv is normalised.
  Tensor kv_a =
      Tensor::empty({t, config_.kv_lora_rank + config_.qk_rope_head_dim}, DType::kF32, device);
  wkv_a.forward(x, kv_a);
  const int64_t widths[] = {config_.kv_lora_rank, config_.qk_rope_head_dim};
  std::vector<Tensor> parts = split_columns(kv_a, widths);
  saved.k_pe = parts[1];
  rope_heads(saved.k_pe, 1, positions, rope, /*inverse=*/false);
  Tensor kv_c = Tensor::empty({t, config_.kv_lora_rank}, DType::kF32, device);
  kv_norm.forward(parts[0], kv_c, saved.kv_norm);
  Tensor k, v;
  project_kv(kv_c, saved.k_pe, saved.head_index, batch, k, v);
  if (!recompute_) {
    saved.kv_c = kv_c;
    saved.k = k;
    saved.v = v;
  }

  // Attention and output projection.
  const AttentionOptions options{static_cast<float>(config_.softmax_scale()), /*causal=*/true};
  saved.out = Tensor::empty({batch, s, heads, config_.v_head_dim}, DType::kF32, device);
  saved.lse = Tensor::empty({batch, heads, s}, DType::kF32, device);
  attention_forward(q, k, v, options, saved.out, saved.lse);
  wo.forward(saved.out.view({t, heads * config_.v_head_dim}), y);
}

void Mla::backward(const Tensor& dy, const Saved& saved, Tensor& dx, WeightGradStore* store) {
  constexpr const char* kOp = "Mla::backward";
  FATHOM_CHECK(saved.x.defined()) << kOp << ": no saved forward";
  check_dtype(kOp, "dy", dy, DType::kF32);
  check_shape(kOp, "dy", dy, saved.x.shape());
  check_shape(kOp, "dx", dx, saved.x.shape());
  const int64_t t = saved.x.dim(0);
  const int64_t batch = saved.batch;
  const int64_t heads = config_.n_heads;
  const int64_t nope = config_.qk_nope_head_dim;
  const int64_t rope_dim = config_.qk_rope_head_dim;
  const int64_t v_dim = config_.v_head_dim;
  const Device device = dy.device();

  // What recomputation dropped, rebuilt with the forward's own kernels (bitwise the same).
  Tensor q_c = saved.q_c;
  Tensor q = saved.q;
  Tensor kv_c = saved.kv_c;
  Tensor k = saved.k;
  Tensor v = saved.v;
  if (wq_b && !q_c.defined()) {
    q_c = Tensor::empty({t, config_.q_lora_rank}, DType::kF32, device);
    q_norm->recompute(saved.q_norm, q_c);
  }
  if (!q.defined()) q = project_q(q_c, batch, saved.positions, saved.rope);
  if (!kv_c.defined()) {
    kv_c = Tensor::empty({t, config_.kv_lora_rank}, DType::kF32, device);
    kv_norm.recompute(saved.kv_norm, kv_c);
  }
  if (!k.defined()) project_kv(kv_c, saved.k_pe, saved.head_index, batch, k, v);

  // Output projection.
  Tensor dout = Tensor::empty(saved.out.shape(), DType::kF32, device);
  Tensor dout2 = dout.view({t, heads * v_dim});
  wo.backward_input(dy, dout2);
  wo.backward_weight_or_defer(dy, saved.out.view({t, heads * v_dim}), store);

  // Attention.
  const AttentionOptions options{static_cast<float>(config_.softmax_scale()), /*causal=*/true};
  Tensor dq = Tensor::empty(q.shape(), DType::kF32, device);
  Tensor dk = Tensor::empty(k.shape(), DType::kF32, device);
  Tensor dv = Tensor::empty(v.shape(), DType::kF32, device);
  attention_backward(q, k, v, saved.out, saved.lse, dout, options, dq, dk, dv);

  // Keys and values: the shared k_pe collects the rope part of every head's key gradient.
  const int64_t k_widths[] = {nope, rope_dim};
  std::vector<Tensor> dk_parts = split_columns(dk.view({t * heads, nope + rope_dim}), k_widths);
  Tensor dk_pe = Tensor::zeros({t, rope_dim}, DType::kF32, device);
  scatter_add_rows(dk_parts[1], saved.head_index, Tensor(), dk_pe);
  rope_heads(dk_pe, 1, saved.positions, saved.rope, /*inverse=*/true);
  const Tensor kv_parts[] = {dk_parts[0], dv.view({t * heads, v_dim})};
  Tensor dkv = concat_columns(kv_parts).view({t, heads * (nope + v_dim)});
  Tensor dkv_c = Tensor::empty({t, config_.kv_lora_rank}, DType::kF32, device);
  wkv_b.backward_input(dkv, dkv_c);
  wkv_b.backward_weight_or_defer(dkv, kv_c, store);
  Tensor dc_kv = Tensor::empty({t, config_.kv_lora_rank}, DType::kF32, device);
  kv_norm.backward(dkv_c, saved.kv_norm, dc_kv);
  const Tensor a_parts[] = {dc_kv, dk_pe};
  Tensor dkv_a = concat_columns(a_parts);
  wkv_a.backward_input(dkv_a, dx);
  wkv_a.backward_weight_or_defer(dkv_a, saved.x, store);

  // Queries.
  Tensor dq2 = dq.view({t, heads * config_.qk_head_dim()});
  rope_heads(dq2, heads, saved.positions, saved.rope, /*inverse=*/true);
  Tensor dx_q = Tensor::empty(dx.shape(), DType::kF32, device);
  if (wq) {
    wq->backward_input(dq2, dx_q);
    wq->backward_weight_or_defer(dq2, saved.x, store);
  } else {
    Tensor dq_c = Tensor::empty({t, config_.q_lora_rank}, DType::kF32, device);
    wq_b->backward_input(dq2, dq_c);
    wq_b->backward_weight_or_defer(dq2, q_c, store);
    Tensor dq_a = Tensor::empty({t, config_.q_lora_rank}, DType::kF32, device);
    q_norm->backward(dq_c, saved.q_norm, dq_a);
    wq_a->backward_input(dq_a, dx_q);
    wq_a->backward_weight_or_defer(dq_a, saved.x, store);
  }
  axpy(1.0f, dx_q, dx);
}

void Mla::append_parameters(ParameterList& out) {
  if (wq_a) {
    wq_a->append_parameters(out);
    q_norm->append_parameters(out);
    wq_b->append_parameters(out);
  } else {
    wq->append_parameters(out);
  }
  wkv_a.append_parameters(out);
  kv_norm.append_parameters(out);
  wkv_b.append_parameters(out);
  wo.append_parameters(out);
}

void Mla::init(uint64_t seed, double std) {
  if (wq_a) {
    init_normal(wq_a->weight, seed, std);
    init_constant(q_norm->weight, 1.0f);
    init_normal(wq_b->weight, seed, std);
  } else {
    init_normal(wq->weight, seed, std);
  }
  init_normal(wkv_a.weight, seed, std);
  init_constant(kv_norm.weight, 1.0f);
  init_normal(wkv_b.weight, seed, std);
  init_normal(wo.weight, seed, std);
}

}  // namespace fathom::model
