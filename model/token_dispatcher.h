// The token dispatcher: the seam through which the MoE layer sends each token's selections to the
// experts that own them and brings the expert outputs back (DESIGN.md, "Two seams"). The model
// declares it and never includes parallel/; LocalDispatcher below serves one rank that owns every
// routed expert, and parallel/ implements it with an all-to-all over a Communicator.
//
// A selection is one (token t, slot k) pair of topk_idx, numbered t * K + k. dispatch() gathers the
// rows of x for the selections that go to this rank's experts, grouped by local expert (the
// contiguous layout of grouped_gemm); combine() returns every selection's expert output in
// selection order. The gate weights are applied by the MoE layer at the origin, so neither call
// takes them. combine_backward and dispatch_backward are the adjoints (transposes) of combine and
// dispatch.
//
// Outputs are allocated by each call (their row counts depend on the routing), f32 on x's device.
// Calls run on the calling thread; a dispatcher may keep state between dispatch and combine, so
// one instance serves one MoE layer at a time in the order dispatch, combine, combine_backward,
// dispatch_backward of each micro-batch, with other micro-batches' calls allowed in between
// (everything a later call needs is in the plan). Bad shapes or expert ids throw fathom::Error.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/tensor.h"

namespace fathom::model {

// The handle dispatch() fills and the later calls read. The permutation here sorts this rank's
// selections by global expert id (stable: equal experts keep increasing t * K + k), which is both
// LocalDispatcher's whole plan and the send-buffer order of an all-to-all implementation (experts
// are contiguous per rank); that one adds the per-rank counts it exchanges.
struct DispatchPlan {
  int64_t n_tokens = 0;  // T
  int64_t top_k = 0;     // K
  // Row r of the expert-sorted order came from selection sorted_selection[r], i.e. token
  // sorted_token[r] = sorted_selection[r] / K. selection_position is the inverse permutation.
  // (T * K) i32 each, on x's device.
  Tensor sorted_selection;
  Tensor sorted_token;
  Tensor selection_position;
  // Selections of this rank per global expert (host).
  std::vector<int64_t> expert_counts;
};

class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;

  // Experts this rank owns: global ids [first_local_expert, first_local_expert + n_local_experts).
  virtual int64_t n_local_experts() const = 0;
  virtual int64_t first_local_expert() const = 0;

  // x: (T, dim) f32;  topk_idx: (T, K) i32 global expert ids (on any device).
  // -> plan;  expert_tokens: (N, dim), the rows of every selection (from any rank) routed to a
  // local
  //    expert, grouped by local expert;  counts: (n_local_experts) rows per local expert, host.
  virtual void dispatch(const Tensor& x, const Tensor& topk_idx, DispatchPlan& plan,
                        Tensor& expert_tokens, std::vector<int64_t>& counts) = 0;
  // expert_out: (N, dim) f32, rows as expert_tokens -> selection_out: (T * K, dim), row t * K + k
  // the output of selection (t, k).
  virtual void combine(const Tensor& expert_out, const DispatchPlan& plan,
                       Tensor& selection_out) = 0;
  // Adjoint of combine: d_selection_out (T * K, dim) -> d_expert_out (N, dim).
  virtual void combine_backward(const Tensor& d_selection_out, const DispatchPlan& plan,
                                Tensor& d_expert_out) = 0;
  // Adjoint of dispatch: d_expert_tokens (N, dim) -> dx (T, dim), summed over each token's k.
  virtual void dispatch_backward(const Tensor& d_expert_tokens, const DispatchPlan& plan,
                                 Tensor& dx) = 0;
};

// One rank owns all n_experts experts: dispatch is gather_rows over the stable expert-sorted
// permutation (N = T * K), combine its inverse gather, and the backwards gather / scatter_add_rows
// (deterministic: a token's K rows are summed in expert-sorted order).
class LocalDispatcher final : public TokenDispatcher {
 public:
  explicit LocalDispatcher(int64_t n_experts);

  int64_t n_local_experts() const override { return n_experts_; }
  int64_t first_local_expert() const override { return 0; }

  void dispatch(const Tensor& x, const Tensor& topk_idx, DispatchPlan& plan, Tensor& expert_tokens,
                std::vector<int64_t>& counts) override;
  void combine(const Tensor& expert_out, const DispatchPlan& plan, Tensor& selection_out) override;
  void combine_backward(const Tensor& d_selection_out, const DispatchPlan& plan,
                        Tensor& d_expert_out) override;
  void dispatch_backward(const Tensor& d_expert_tokens, const DispatchPlan& plan,
                         Tensor& dx) override;

 private:
  int64_t n_experts_;
};

// The expert-sorted permutation of `topk_idx` ((T, K) i32 in [0, n_experts), any device) for a plan
// on `device`: fills n_tokens, top_k, the three permutation tensors and expert_counts. Shared by
// dispatcher implementations. Out-of-range ids throw fathom::Error.
void sort_selections_by_expert(const Tensor& topk_idx, int64_t n_experts, Device device,
                               DispatchPlan& plan);

}  // namespace fathom::model
