// The expert-parallel token dispatcher (DESIGN.md "Two seams", SPEC.md section 2 "Expert-parallel
// all-to-all"): model::TokenDispatcher over the ranks of one EP group, with DeepEP "normal"-mode
// semantics for training.
//
// The group's P ranks split the E routed experts evenly: rank r owns global experts
// [r * E / P, (r + 1) * E / P) (E % P == 0). Every rank routes its own tokens; then
//   dispatch:  this rank's selections (t, k) are sorted by global expert, which also sorts them by
//              destination rank; the per-(rank, expert) counts are exchanged first (a small
//              all_to_all_v), then the rows of x go out with all_to_all_v. On arrival the rows are
//              regrouped by local expert (within an expert: by source rank, then by the source's
//              selection order t * K + k), the contiguous layout of the grouped GEMM. When the EP
//              group holds consecutive slices of one global batch in rank order, each expert's
//              segment is therefore in global selection order, exactly as LocalDispatcher on the
//              whole batch would give it.
//   combine:   the reverse: un-group, all_to_all_v back to the origins, un-sort to selection order.
//   combine_backward / dispatch_backward: the adjoints, the same exchanges in the other direction
//              (dispatch_backward sums a token's K rows in expert-sorted order, like
//              LocalDispatcher, so one rank reproduces it bit for bit).
// Routing is dropless: every selection is sent, once per (t, k) (no per-rank deduplication).
//
// FP8 dispatch (ExpertParallelOptions::fp8_dispatch, as in V3): the forward dispatch quantizes the
// outgoing rows to E4M3 with 1x128 scales (kernels/fp8.h), sends the data (as u8) and the scales
// (f32) and dequantizes on arrival, so expert_tokens = dequantize(quantize(x)) row for row.
// combine and both backward exchanges stay f32.
//
// Between calls the dispatcher keeps no per-micro-batch state: model::DispatchPlan carries this
// rank's per-expert counts, and combine / combine_backward / dispatch_backward re-exchange the
// small count table to rebuild the receive layout (one extra all_to_all_v of P x (E/P + 2) i64
// each). That exchange also checks that all ranks agree on the call and the row width: a mismatch
// throws fathom::Error on every rank.
//
// Every call is collective over the EP group: all ranks call dispatch, combine, combine_backward
// and dispatch_backward in the same order (micro-batches interleaved the same way on every rank).
// Tensors live on x's device, which must be the communicator's (host for MPI, CUDA for NCCL).
// Calls run on the calling thread. Bad shapes, expert ids or a non-dividing E throw fathom::Error.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "kernels/tensor.h"
#include "model/token_dispatcher.h"
#include "parallel/communicator.h"

namespace fathom::parallel {

struct ExpertParallelOptions {
  // Send the forward dispatch in E4M3 with 1x128 scales (combine and backward stay f32).
  bool fp8_dispatch = false;
};

// Accumulated since construction or the last reset_metrics().
struct ExpertParallelMetrics {
  // (P) rows the forward dispatch sent to / received from each rank of the group, this rank
  // included. combine returns the same rows, and the backward exchanges mirror them.
  std::vector<int64_t> rows_sent;
  std::vector<int64_t> rows_received;
  // Bytes this rank sent to other ranks in every exchange (counts, rows, FP8 scales).
  int64_t bytes_sent = 0;
  // all_to_all_v calls and the host wall time spent posting and waiting for them (for NCCL:
  // until they are enqueued on the stream).
  int64_t n_all_to_all = 0;
  double all_to_all_seconds = 0;
  int64_t n_dispatch = 0;  // dispatch() calls
};

class ExpertParallelDispatcher final : public model::TokenDispatcher {
 public:
  // ep: the EP group (not owned, must outlive the dispatcher); its rank r owns experts
  // [r * E / P, (r + 1) * E / P). Throws fathom::Error unless n_routed_experts >= 1 and
  // n_routed_experts % ep.size() == 0.
  ExpertParallelDispatcher(Communicator& ep, int64_t n_routed_experts,
                           ExpertParallelOptions options = {});

  int64_t n_local_experts() const override { return n_local_; }
  int64_t first_local_expert() const override { return first_local_; }
  int64_t n_routed_experts() const { return n_experts_; }
  int ep_size() const { return size_; }
  int ep_rank() const { return rank_; }
  const ExpertParallelOptions& options() const { return options_; }

  // See model::TokenDispatcher. x: (T, dim) f32, T may differ between ranks, dim may not;
  // topk_idx: (T, K) i32 in [0, E). -> expert_tokens (N, dim) f32 with N = sum over ranks of the
  // selections routed to this rank's experts, grouped by local expert; counts (E/P) host.
  void dispatch(const Tensor& x, const Tensor& topk_idx, model::DispatchPlan& plan,
                Tensor& expert_tokens, std::vector<int64_t>& counts) override;
  // expert_out: (N, dim) f32 in expert_tokens' order -> selection_out (T * K, dim) f32.
  void combine(const Tensor& expert_out, const model::DispatchPlan& plan,
               Tensor& selection_out) override;
  // d_selection_out: (T * K, dim) f32 -> d_expert_out (N, dim) f32.
  void combine_backward(const Tensor& d_selection_out, const model::DispatchPlan& plan,
                        Tensor& d_expert_out) override;
  // d_expert_tokens: (N, dim) f32 -> dx (T, dim) f32, each token's K rows summed.
  void dispatch_backward(const Tensor& d_expert_tokens, const model::DispatchPlan& plan,
                         Tensor& dx) override;

  const ExpertParallelMetrics& metrics() const { return metrics_; }
  void reset_metrics();

 private:
  // Where received rows go. Rows from rank s for local expert j arrive in rank order, then expert
  // order; expert_tokens holds them in expert order, then rank order.
  struct Layout {
    std::vector<int64_t> send_rows;  // (P) selection rows to each rank
    std::vector<int64_t> recv_rows;  // (P) rows from each rank
    std::vector<int64_t> counts;     // (E/P) rows per local expert
    Tensor grouped_from_received;    // (N) i32: grouped row i = received row [i]
    Tensor received_from_grouped;    // (N) i32: the inverse permutation
    bool identity = false;           // both are the identity (then left undefined)
  };
  enum class Call : int64_t { kDispatch = 1, kCombine, kCombineBackward, kDispatchBackward };

  // Exchanges the count table for `plan` and builds the layout; checks that every rank is in the
  // same `call` with the same row width `dim`.
  Layout exchange_layout(const model::DispatchPlan& plan, Call call, int64_t dim, Device device);
  // all_to_all_v_sync with the metrics (time, calls, bytes to other ranks).
  // Expert-grouped rows (n, dim) of this rank back to the ranks and selection slots they came
  // from: (T * K, dim) in this rank's expert-sorted selection order. Shared by combine and
  // dispatch_backward, which move rows the same way.
  Tensor return_to_origin(const Tensor& grouped, const Layout& layout, int64_t n_selections);
  void timed_all_to_all(const Tensor& input, absl::Span<const int64_t> send_rows, Tensor& output,
                        absl::Span<const int64_t> recv_rows);

  Communicator& ep_;
  int rank_;
  int size_;
  int64_t n_experts_;
  int64_t n_local_;
  int64_t first_local_;
  ExpertParallelOptions options_;
  ExpertParallelMetrics metrics_;
};

}  // namespace fathom::parallel
