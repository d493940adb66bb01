#include "parallel/expert_parallel.h"

#include <chrono>
#include <cstring>
#include <numeric>
#include <sstream>
#include <utility>
#include <vector>

#include "kernels/check.h"
#include "kernels/fp8.h"
#include "kernels/ops/index.h"

namespace fathom::parallel {
namespace {

// t: (rows, dim) f32 with the given rows (rows < 0: any).
void check_rows(const char* fn, const char* name, const Tensor& t, int64_t rows) {
  check_defined(fn, name, t);
  check_dtype(fn, name, t, DType::kF32);
  FATHOM_CHECK(t.ndim() == 2 && (rows < 0 || t.dim(0) == rows))
      << fn << ": " << name << " must be (" << (rows < 0 ? std::string("N") : std::to_string(rows))
      << ", dim), got " << t.str();
}

// out[i] = x[index[i]] into a new (index.numel(), dim) tensor.
Tensor gather(const Tensor& x, const Tensor& index) {
  Tensor out = Tensor::empty({index.numel(), x.dim(1)}, x.dtype(), x.device());
  gather_rows(x, index, Tensor(), out);
  return out;
}

// The bytes of `src` as a tensor of another 1-byte dtype (a copy, same shape and device): the
// E4M3 rows travel as u8, the dtype the communicators move.
Tensor copy_bytes_as(const Tensor& src, DType dtype) {
  FATHOM_CHECK(dtype_size(src.dtype()) == dtype_size(dtype))
      << "copy_bytes_as: " << src.str() << " to " << dtype_name(dtype);
  const Tensor host_src = src.device().is_cpu() ? src : src.to(Device::cpu());
  Tensor out = Tensor::empty(src.shape(), dtype);
  if (src.nbytes() > 0) std::memcpy(out.raw_data(), host_src.raw_data(), src.nbytes());
  return src.device().is_cpu() ? out : out.to(src.device());
}

const char* call_name(int64_t call) {
  switch (call) {
    case 1: return "dispatch";
    case 2: return "combine";
    case 3: return "combine_backward";
    case 4: return "dispatch_backward";
    default: return "?";
  }
}

}  // namespace

ExpertParallelDispatcher::ExpertParallelDispatcher(Communicator& ep, int64_t n_routed_experts,
                                                   ExpertParallelOptions options)
    : ep_(ep),
      rank_(ep.rank()),
      size_(ep.size()),
      n_experts_(n_routed_experts),
      n_local_(0),
      first_local_(0),
      options_(options) {
  FATHOM_CHECK(size_ >= 1 && rank_ >= 0 && rank_ < size_)
      << "ExpertParallelDispatcher: bad communicator rank " << rank_ << " of " << size_;
  FATHOM_CHECK(n_routed_experts >= 1 && n_routed_experts % size_ == 0)
      << "ExpertParallelDispatcher: " << n_routed_experts
      << " routed experts cannot be split evenly over " << size_ << " expert-parallel ranks";
  n_local_ = n_routed_experts / size_;
  first_local_ = rank_ * n_local_;
  reset_metrics();
}

void ExpertParallelDispatcher::reset_metrics() {
  metrics_ = ExpertParallelMetrics{};
  metrics_.rows_sent.assign(static_cast<size_t>(size_), 0);
  metrics_.rows_received.assign(static_cast<size_t>(size_), 0);
}

void ExpertParallelDispatcher::timed_all_to_all(const Tensor& input,
                                                absl::Span<const int64_t> send_rows, Tensor& output,
                                                absl::Span<const int64_t> recv_rows) {
  int64_t row_bytes = static_cast<int64_t>(dtype_size(input.dtype()));
  for (int i = 1; i < input.ndim(); ++i) row_bytes *= input.dim(i);
  const auto start = std::chrono::steady_clock::now();
  all_to_all_v_sync(ep_, input, send_rows, output, recv_rows);
  metrics_.all_to_all_seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ++metrics_.n_all_to_all;
  for (int p = 0; p < size_; ++p) {
    if (p != rank_) metrics_.bytes_sent += send_rows[p] * row_bytes;
  }
}

ExpertParallelDispatcher::Layout ExpertParallelDispatcher::exchange_layout(
    const model::DispatchPlan& plan, Call call, int64_t dim, Device device) {
  const char* fn = call_name(static_cast<int64_t>(call));
  FATHOM_CHECK(static_cast<int64_t>(plan.expert_counts.size()) == n_experts_)
      << "ExpertParallelDispatcher::" << fn << ": the plan has " << plan.expert_counts.size()
      << " expert counts, expected " << n_experts_ << " (a plan from another dispatcher?)";
  const int64_t p_count = size_;
  const int64_t width = n_local_ + 2;  // counts for the destination's experts, dim, call
  std::vector<int64_t> table(static_cast<size_t>(p_count * width));
  Layout layout;
  layout.send_rows.assign(static_cast<size_t>(p_count), 0);
  for (int64_t p = 0; p < p_count; ++p) {
    for (int64_t j = 0; j < n_local_; ++j) {
      const int64_t c = plan.expert_counts[p * n_local_ + j];
      table[p * width + j] = c;
      layout.send_rows[p] += c;
    }
    table[p * width + n_local_] = dim;
    table[p * width + n_local_ + 1] = static_cast<int64_t>(call);
  }
  const Tensor send = Tensor::from_vector(table, {p_count, width}, device);
  Tensor recv = Tensor::empty({p_count, width}, DType::kI64, device);
  const std::vector<int64_t> one_row(static_cast<size_t>(p_count), 1);
  timed_all_to_all(send, one_row, recv, one_row);
  const std::vector<int64_t> got = recv.to_vector<int64_t>();

  // Every rank receives every rank's (dim, call), so a disagreement throws on all of them.
  bool agree = true;
  for (int64_t s = 0; s < p_count; ++s) {
    agree = agree && got[s * width + n_local_] == dim &&
            got[s * width + n_local_ + 1] == static_cast<int64_t>(call);
  }
  if (!agree) {
    std::ostringstream ranks;
    for (int64_t s = 0; s < p_count; ++s) {
      ranks << (s ? ", " : "") << "rank " << s << ": " << call_name(got[s * width + n_local_ + 1])
            << " dim " << got[s * width + n_local_];
    }
    FATHOM_CHECK(agree) << "ExpertParallelDispatcher::" << fn
                        << ": the EP ranks disagree on the call or the row width (" << ranks.str()
                        << ")";
  }

  layout.recv_rows.assign(static_cast<size_t>(p_count), 0);
  layout.counts.assign(static_cast<size_t>(n_local_), 0);
  std::vector<int64_t> offset(static_cast<size_t>(p_count * n_local_));  // first received row
  int64_t n = 0;
  for (int64_t s = 0; s < p_count; ++s) {
    for (int64_t j = 0; j < n_local_; ++j) {
      const int64_t c = got[s * width + j];
      FATHOM_CHECK(c >= 0) << "ExpertParallelDispatcher::" << fn << ": rank " << s << " sends " << c
                           << " rows for local expert " << j;
      offset[s * n_local_ + j] = n;
      n += c;
      layout.recv_rows[s] += c;
      layout.counts[j] += c;
    }
  }
  std::vector<int32_t> grouped_from_received(static_cast<size_t>(n));
  std::vector<int32_t> received_from_grouped(static_cast<size_t>(n));
  int64_t g = 0;
  for (int64_t j = 0; j < n_local_; ++j) {
    for (int64_t s = 0; s < p_count; ++s) {
      const int64_t c = got[s * width + j];
      for (int64_t i = 0; i < c; ++i, ++g) {
        const int64_t r = offset[s * n_local_ + j] + i;
        grouped_from_received[g] = static_cast<int32_t>(r);
        received_from_grouped[r] = static_cast<int32_t>(g);
      }
    }
  }
  layout.identity = true;
  for (int64_t i = 0; i < n && layout.identity; ++i) {
    layout.identity = grouped_from_received[i] == i;
  }
  if (!layout.identity) {
    layout.grouped_from_received = Tensor::from_vector(grouped_from_received, {n}, device);
    layout.received_from_grouped = Tensor::from_vector(received_from_grouped, {n}, device);
  }
  return layout;
}

void ExpertParallelDispatcher::dispatch(const Tensor& x, const Tensor& topk_idx,
                                        model::DispatchPlan& plan, Tensor& expert_tokens,
                                        std::vector<int64_t>& counts) {
  constexpr const char* kFn = "ExpertParallelDispatcher::dispatch";
  check_rows(kFn, "x", x, -1);
  model::sort_selections_by_expert(topk_idx, n_experts_, x.device(), plan);
  check_rows(kFn, "x", x, plan.n_tokens);
  const Device device = x.device();
  const int64_t dim = x.dim(1);
  const int64_t n_sel = plan.n_tokens * plan.top_k;
  const Layout layout = exchange_layout(plan, Call::kDispatch, dim, device);
  const int64_t n = std::accumulate(layout.counts.begin(), layout.counts.end(), int64_t{0});

  // Rows in expert order are rows in destination-rank order.
  const Tensor send = gather(x, plan.sorted_token);
  Tensor received = Tensor::empty({n, dim}, DType::kF32, device);
  if (options_.fp8_dispatch) {
    Fp8Tensor q;
    q.block = ScaleBlock::k1x128;
    q.data = Tensor::empty({n_sel, dim}, DType::kF8E4M3, device);
    q.scales =
        Tensor::empty(fp8_scale_shape(q.data.shape(), ScaleBlock::k1x128), DType::kF32, device);
    if (n_sel > 0) quantize_fp8_into(send, q);
    Fp8Tensor rq;
    rq.block = ScaleBlock::k1x128;
    Tensor received_bytes = Tensor::empty({n, dim}, DType::kU8, device);
    rq.scales = Tensor::empty(fp8_scale_shape(received_bytes.shape(), ScaleBlock::k1x128),
                              DType::kF32, device);
    timed_all_to_all(copy_bytes_as(q.data, DType::kU8), layout.send_rows, received_bytes,
                     layout.recv_rows);
    timed_all_to_all(q.scales, layout.send_rows, rq.scales, layout.recv_rows);
    rq.data = copy_bytes_as(received_bytes, DType::kF8E4M3);
    if (n > 0) dequantize_fp8(rq, received);
  } else {
    timed_all_to_all(send, layout.send_rows, received, layout.recv_rows);
  }
  expert_tokens = layout.identity ? received : gather(received, layout.grouped_from_received);
  counts = layout.counts;

  ++metrics_.n_dispatch;
  for (int p = 0; p < size_; ++p) {
    metrics_.rows_sent[p] += layout.send_rows[p];
    metrics_.rows_received[p] += layout.recv_rows[p];
  }
}

Tensor ExpertParallelDispatcher::return_to_origin(const Tensor& grouped, const Layout& layout,
                                                  int64_t n_selections) {
  const Tensor back = layout.identity ? grouped : gather(grouped, layout.received_from_grouped);
  Tensor returned =
      Tensor::empty({n_selections, grouped.dim(1)}, DType::kF32, grouped.device());
  timed_all_to_all(back, layout.recv_rows, returned, layout.send_rows);
  return returned;
}

void ExpertParallelDispatcher::combine(const Tensor& expert_out, const model::DispatchPlan& plan,
                                       Tensor& selection_out) {
  constexpr const char* kFn = "ExpertParallelDispatcher::combine";
  check_rows(kFn, "expert_out", expert_out, -1);
  const Device device = expert_out.device();
  const int64_t dim = expert_out.dim(1);
  const Layout layout = exchange_layout(plan, Call::kCombine, dim, device);
  const int64_t n = std::accumulate(layout.counts.begin(), layout.counts.end(), int64_t{0});
  check_rows(kFn, "expert_out", expert_out, n);
  const int64_t n_sel = plan.n_tokens * plan.top_k;

  selection_out = gather(return_to_origin(expert_out, layout, n_sel), plan.selection_position);
}

void ExpertParallelDispatcher::combine_backward(const Tensor& d_selection_out,
                                                const model::DispatchPlan& plan,
                                                Tensor& d_expert_out) {
  constexpr const char* kFn = "ExpertParallelDispatcher::combine_backward";
  const int64_t n_sel = plan.n_tokens * plan.top_k;
  check_rows(kFn, "d_selection_out", d_selection_out, n_sel);
  const Device device = d_selection_out.device();
  const int64_t dim = d_selection_out.dim(1);
  const Layout layout = exchange_layout(plan, Call::kCombineBackward, dim, device);
  const int64_t n = std::accumulate(layout.counts.begin(), layout.counts.end(), int64_t{0});

  const Tensor send = gather(d_selection_out, plan.sorted_selection);
  Tensor received = Tensor::empty({n, dim}, DType::kF32, device);
  timed_all_to_all(send, layout.send_rows, received, layout.recv_rows);
  d_expert_out = layout.identity ? received : gather(received, layout.grouped_from_received);
}

void ExpertParallelDispatcher::dispatch_backward(const Tensor& d_expert_tokens,
                                                 const model::DispatchPlan& plan, Tensor& dx) {
  constexpr const char* kFn = "ExpertParallelDispatcher::dispatch_backward";
  check_rows(kFn, "d_expert_tokens", d_expert_tokens, -1);
  const Device device = d_expert_tokens.device();
  const int64_t dim = d_expert_tokens.dim(1);
  const Layout layout = exchange_layout(plan, Call::kDispatchBackward, dim, device);
  const int64_t n = std::accumulate(layout.counts.begin(), layout.counts.end(), int64_t{0});
  check_rows(kFn, "d_expert_tokens", d_expert_tokens, n);
  const int64_t n_sel = plan.n_tokens * plan.top_k;

  const Tensor returned = return_to_origin(d_expert_tokens, layout, n_sel);
  // Summed in expert-sorted order, as LocalDispatcher does.
  dx = Tensor::zeros({plan.n_tokens, dim}, DType::kF32, device);
  scatter_add_rows(returned, plan.sorted_token, Tensor(), dx);
}

}  // namespace fathom::parallel
