#include "model/moe.h"

#include <algorithm>
#include <memory>
#include <numeric>
#include <vector>

#include "kernels/ops/elementwise.h"
#include "kernels/ops/index.h"

namespace fathom::model {
namespace {

int64_t local_experts(const ModelConfig& config, const TokenDispatcher* dispatcher) {
  return dispatcher != nullptr ? dispatcher->n_local_experts() : config.n_routed_experts;
}

}  // namespace

Moe::Moe(const std::string& prefix, const ModelConfig& config, TrainingPrecision precision,
         Device device, TokenDispatcher* dispatcher)
    : gate(prefix + ".gate.weight", config.n_routed_experts, config.dim, TrainingPrecision::kFp32,
           device),
      gate_bias{prefix + ".gate.bias",
                Tensor::zeros({config.n_routed_experts}, DType::kF32, device)},
      w1(prefix + ".experts.w1.weight", local_experts(config, dispatcher), config.moe_inter_dim,
         config.dim, precision, device),
      w2(prefix + ".experts.w2.weight", local_experts(config, dispatcher), config.dim,
         config.moe_inter_dim, precision, device),
      w3(prefix + ".experts.w3.weight", local_experts(config, dispatcher), config.moe_inter_dim,
         config.dim, precision, device),
      router_(router_config(config)),
      dim_(config.dim),
      balance_alpha_(config.balance_loss_alpha),
      dispatcher_(dispatcher),
      load_(static_cast<size_t>(config.n_routed_experts), 0) {
  if (config.n_shared_experts > 0) {
    shared_experts.emplace(prefix + ".shared_experts", config.dim,
                           config.n_shared_experts * config.moe_inter_dim, precision, device);
  }
  if (dispatcher_ == nullptr) {
    own_dispatcher_ = std::make_unique<LocalDispatcher>(config.n_routed_experts);
    dispatcher_ = own_dispatcher_.get();
  }
  const int64_t first = dispatcher_->first_local_expert();
  const int64_t n_local = dispatcher_->n_local_experts();
  FATHOM_CHECK(n_local >= 1 && first >= 0 && first + n_local <= config.n_routed_experts)
      << "Moe " << prefix << ": dispatcher owns experts [" << first << ", " << first + n_local
      << ") outside [0, " << config.n_routed_experts << ")";
  check_router_config(router_, "Moe " + prefix);
  for (GroupedLinear* w : {&w1, &w2, &w3}) {
    w->weight.global_shape = w->weight.value.shape();
    w->weight.global_shape[0] = config.n_routed_experts;
    w->weight.row_offset = first;
  }
}

void Moe::forward(const Tensor& x, int64_t seq_len, Tensor& y, Saved& saved) {
  constexpr const char* kFn = "Moe::forward";
  check_defined(kFn, "x", x);
  check_dtype(kFn, "x", x, DType::kF32);
  FATHOM_CHECK(x.ndim() == 2 && x.dim(1) == dim_)
      << kFn << ": x must be (T, " << dim_ << "), got " << x.str();
  const int64_t t = x.dim(0);
  const int64_t k = router_.top_k;
  check_shape(kFn, "y", y, {t, dim_});

  Tensor logits = Tensor::empty({t, router_.n_experts}, DType::kF32, x.device());
  gate.forward(x, logits);
  saved.routing = fixed_topk_idx_.defined() ? route_fixed(logits, fixed_topk_idx_, router_)
                                            : route(logits, gate_bias.value, router_);
  saved.x = x;
  saved.seq_len = seq_len;
  saved.balance_loss = balance_loss(saved.routing, seq_len, balance_alpha_, router_);
  for (int32_t e : saved.routing.topk_idx.to_vector<int32_t>()) ++load_[e];

  dispatcher_->dispatch(x, saved.routing.topk_idx, saved.plan, saved.expert_tokens, saved.counts);
  const int64_t n = saved.expert_tokens.dim(0);
  const int64_t inter = w1.out_features();
  saved.gate = Tensor::empty({n, inter}, DType::kF32, x.device());
  saved.up = Tensor::empty({n, inter}, DType::kF32, x.device());
  saved.hidden = Tensor::empty({n, inter}, DType::kF32, x.device());
  w1.forward(saved.expert_tokens, saved.counts, saved.gate);
  w3.forward(saved.expert_tokens, saved.counts, saved.up);
  swiglu_forward(saved.gate, saved.up, saved.hidden);
  Tensor expert_out = Tensor::empty({n, dim_}, DType::kF32, x.device());
  w2.forward(saved.hidden, saved.counts, expert_out);
  dispatcher_->combine(expert_out, saved.plan, saved.selection_out);

  std::vector<int32_t> token(static_cast<size_t>(t * k));
  for (int64_t s = 0; s < t * k; ++s) token[s] = static_cast<int32_t>(s / k);
  saved.selection_token = Tensor::from_vector(token, {t * k}, x.device());

  if (shared_experts) {
    shared_experts->forward(x, y, saved.shared);
  } else {
    fill(y, 0.0f);
  }
  scatter_add_rows(saved.selection_out, saved.selection_token,
                   saved.routing.topk_weight.view({t * k}), y);
}

void Moe::backward(const Tensor& dy, double balance_loss_grad, const Saved& saved, Tensor& dx,
                   WeightGradStore* store) {
  constexpr const char* kFn = "Moe::backward";
  const int64_t t = saved.x.dim(0);
  const int64_t k = router_.top_k;
  check_shape(kFn, "dy", dy, {t, dim_});
  check_shape(kFn, "dx", dx, {t, dim_});
  const Device device = dy.device();

  // Gate weights applied at the origin: y[t] += w[t,k] * selection_out[t*K+k].
  Tensor d_weight = Tensor::empty({t * k}, DType::kF32, device);
  gathered_row_dot(dy, saved.selection_token, saved.selection_out, d_weight);
  Tensor d_selection = Tensor::empty({t * k, dim_}, DType::kF32, device);
  gather_rows(dy, saved.selection_token, saved.routing.topk_weight.view({t * k}), d_selection);

  // Routed experts.
  Tensor d_expert_out;
  dispatcher_->combine_backward(d_selection, saved.plan, d_expert_out);
  const int64_t n = saved.expert_tokens.dim(0);
  const int64_t inter = w1.out_features();
  Tensor d_hidden = Tensor::empty({n, inter}, DType::kF32, device);
  w2.backward_input(d_expert_out, saved.counts, d_hidden);
  w2.backward_weight_or_defer(d_expert_out, saved.hidden, saved.counts, store);
  Tensor d_gate = Tensor::empty({n, inter}, DType::kF32, device);
  Tensor d_up = Tensor::empty({n, inter}, DType::kF32, device);
  swiglu_backward(d_hidden, saved.gate, saved.up, d_gate, d_up);
  Tensor d_tokens = Tensor::empty({n, dim_}, DType::kF32, device);
  w1.backward_input(d_gate, saved.counts, d_tokens);
  Tensor d_tokens_up = Tensor::empty({n, dim_}, DType::kF32, device);
  w3.backward_input(d_up, saved.counts, d_tokens_up);
  axpy(1.0f, d_tokens_up, d_tokens);
  w1.backward_weight_or_defer(d_gate, saved.expert_tokens, saved.counts, store);
  w3.backward_weight_or_defer(d_up, saved.expert_tokens, saved.counts, store);
  Tensor dx_routed;
  dispatcher_->dispatch_backward(d_tokens, saved.plan, dx_routed);
  dx.copy_from(dx_routed);

  // Router: gate values, plus the balance loss with the selection counts held constant.
  Tensor d_logits = Tensor::empty({t, router_.n_experts}, DType::kF32, device);
  route_backward(d_weight.view({t, k}), saved.routing, router_, d_logits);
  if (balance_loss_grad != 0.0 && balance_alpha_ != 0.0) {
    balance_loss_backward(saved.routing, saved.seq_len, balance_alpha_, balance_loss_grad, router_,
                          d_logits);
  }
  Tensor dx_part = Tensor::empty({t, dim_}, DType::kF32, device);
  gate.backward_input(d_logits, dx_part);
  axpy(1.0f, dx_part, dx);
  gate.backward_weight_or_defer(d_logits, saved.x, store);

  if (shared_experts) {
    shared_experts->backward(dy, saved.shared, dx_part, store);
    axpy(1.0f, dx_part, dx);
  }
}

void Moe::append_parameters(ParameterList& out) {
  gate.append_parameters(out);
  w1.append_parameters(out);
  w2.append_parameters(out);
  w3.append_parameters(out);
  if (shared_experts) shared_experts->append_parameters(out);
}

void Moe::append_buffers(BufferList& out) { out.push_back(&gate_bias); }

void Moe::init(uint64_t seed, double std) {
  init_normal(gate.weight, seed, std);
  // Local experts draw the values they have in the global (E, ...) stack: the same model under
  // any expert-parallel layout.
  for (GroupedLinear* w : {&w1, &w2, &w3}) {
    init_normal(w->weight, seed, std, w->weight.row_offset * w->out_features() * w->in_features());
  }
  if (shared_experts) shared_experts->init(seed, std);
  fill(gate_bias.value, 0.0f);
}

void Moe::reset_load() { std::fill(load_.begin(), load_.end(), 0); }

void Moe::set_expert_load(absl::Span<const int64_t> load) {
  FATHOM_CHECK(load.size() == load_.size())
      << "Moe::set_expert_load: " << load.size() << " entries, expected " << load_.size();
  load_.assign(load.begin(), load.end());
}

void Moe::update_bias(absl::Span<const double> load, double gamma) {
  const int64_t e = router_.n_experts;
  FATHOM_CHECK(static_cast<int64_t>(load.size()) == e)
      << "Moe::update_bias: load has " << load.size() << " entries, expected " << e;
  const double mean = std::accumulate(load.begin(), load.end(), 0.0) / static_cast<double>(e);
  std::vector<float> bias = gate_bias.value.to_vector<float>();
  for (int64_t i = 0; i < e; ++i) {
    if (load[i] > mean) {
      bias[i] = static_cast<float>(bias[i] - gamma);
    } else if (load[i] < mean) {
      bias[i] = static_cast<float>(bias[i] + gamma);
    }
  }
  gate_bias.value.copy_from(Tensor::from_vector(bias, {e}));
}

void Moe::set_fixed_routing(const Tensor& topk_idx) {
  if (topk_idx.defined()) {
    check_dtype("Moe::set_fixed_routing", "topk_idx", topk_idx, DType::kI32);
    FATHOM_CHECK(topk_idx.ndim() == 2 && topk_idx.dim(1) == router_.top_k)
        << "Moe::set_fixed_routing: topk_idx must be (T, " << router_.top_k << "), got "
        << topk_idx.str();
  }
  fixed_topk_idx_ = topk_idx;
}

}  // namespace fathom::model
