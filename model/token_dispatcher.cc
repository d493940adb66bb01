#include "model/token_dispatcher.h"

#include <utility>
#include <vector>

#include "kernels/ops/index.h"

namespace fathom::model {
namespace {

void check_rows(const char* fn, const char* name, const Tensor& t, int64_t rows) {
  check_defined(fn, name, t);
  check_dtype(fn, name, t, DType::kF32);
  FATHOM_CHECK(t.ndim() == 2 && t.dim(0) == rows)
      << fn << ": " << name << " must be (" << rows << ", dim), got " << t.str();
}

}  // namespace

void sort_selections_by_expert(const Tensor& topk_idx, int64_t n_experts, Device device,
                               DispatchPlan& plan) {
  constexpr const char* kFn = "sort_selections_by_expert";
  check_defined(kFn, "topk_idx", topk_idx);
  check_dtype(kFn, "topk_idx", topk_idx, DType::kI32);
  FATHOM_CHECK(topk_idx.ndim() == 2) << kFn << ": topk_idx must be (T, K), got " << topk_idx.str();
  const int64_t t = topk_idx.dim(0);
  const int64_t k = topk_idx.dim(1);
  const int64_t n = t * k;
  const std::vector<int32_t> idx = topk_idx.to_vector<int32_t>();
  std::vector<int64_t> counts(static_cast<size_t>(n_experts), 0);
  for (int64_t s = 0; s < n; ++s) {
    FATHOM_CHECK(idx[s] >= 0 && idx[s] < n_experts)
        << kFn << ": topk_idx[" << s / k << ", " << s % k << "] = " << idx[s] << " not in [0, "
        << n_experts << ")";
    ++counts[idx[s]];
  }
  // Counting sort: stable, so one expert's rows keep increasing selection order.
  std::vector<int64_t> next(static_cast<size_t>(n_experts), 0);
  for (int64_t e = 1; e < n_experts; ++e) next[e] = next[e - 1] + counts[e - 1];
  std::vector<int32_t> sorted_selection(static_cast<size_t>(n));
  std::vector<int32_t> sorted_token(static_cast<size_t>(n));
  std::vector<int32_t> position(static_cast<size_t>(n));
  for (int64_t s = 0; s < n; ++s) {
    const int64_t r = next[idx[s]]++;
    sorted_selection[r] = static_cast<int32_t>(s);
    sorted_token[r] = static_cast<int32_t>(s / k);
    position[s] = static_cast<int32_t>(r);
  }
  plan.n_tokens = t;
  plan.top_k = k;
  plan.sorted_selection = Tensor::from_vector(sorted_selection, {n}, device);
  plan.sorted_token = Tensor::from_vector(sorted_token, {n}, device);
  plan.selection_position = Tensor::from_vector(position, {n}, device);
  plan.expert_counts = std::move(counts);
}

LocalDispatcher::LocalDispatcher(int64_t n_experts) : n_experts_(n_experts) {
  FATHOM_CHECK(n_experts >= 1) << "LocalDispatcher: n_experts must be >= 1, got " << n_experts;
}

void LocalDispatcher::dispatch(const Tensor& x, const Tensor& topk_idx, DispatchPlan& plan,
                               Tensor& expert_tokens, std::vector<int64_t>& counts) {
  constexpr const char* kFn = "LocalDispatcher::dispatch";
  check_defined(kFn, "x", x);
  sort_selections_by_expert(topk_idx, n_experts_, x.device(), plan);
  check_rows(kFn, "x", x, plan.n_tokens);
  expert_tokens = Tensor::empty({plan.n_tokens * plan.top_k, x.dim(1)}, DType::kF32, x.device());
  gather_rows(x, plan.sorted_token, Tensor(), expert_tokens);
  counts = plan.expert_counts;
}

void LocalDispatcher::combine(const Tensor& expert_out, const DispatchPlan& plan,
                              Tensor& selection_out) {
  const int64_t n = plan.n_tokens * plan.top_k;
  check_rows("LocalDispatcher::combine", "expert_out", expert_out, n);
  selection_out = Tensor::empty({n, expert_out.dim(1)}, DType::kF32, expert_out.device());
  gather_rows(expert_out, plan.selection_position, Tensor(), selection_out);
}

void LocalDispatcher::combine_backward(const Tensor& d_selection_out, const DispatchPlan& plan,
                                       Tensor& d_expert_out) {
  const int64_t n = plan.n_tokens * plan.top_k;
  check_rows("LocalDispatcher::combine_backward", "d_selection_out", d_selection_out, n);
  d_expert_out = Tensor::empty({n, d_selection_out.dim(1)}, DType::kF32, d_selection_out.device());
  gather_rows(d_selection_out, plan.sorted_selection, Tensor(), d_expert_out);
}

void LocalDispatcher::dispatch_backward(const Tensor& d_expert_tokens, const DispatchPlan& plan,
                                        Tensor& dx) {
  check_rows("LocalDispatcher::dispatch_backward", "d_expert_tokens", d_expert_tokens,
             plan.n_tokens * plan.top_k);
  dx =
      Tensor::zeros({plan.n_tokens, d_expert_tokens.dim(1)}, DType::kF32, d_expert_tokens.device());
  scatter_add_rows(d_expert_tokens, plan.sorted_token, Tensor(), dx);
}

}  // namespace fathom::model
