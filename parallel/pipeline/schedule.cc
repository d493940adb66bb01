#include "parallel/pipeline/schedule.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/check.h"

namespace fathom::parallel::pipeline {

std::string_view schedule_kind_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::k1F1B:
      return "1f1b";
    case ScheduleKind::kZB1P:
      return "zb1p";
    case ScheduleKind::kDualPipe:
      return "dualpipe";
    case ScheduleKind::kDualPipeV:
      return "dualpipev";
  }
  return "unknown";
}

absl::StatusOr<ScheduleKind> parse_schedule_kind(std::string_view name) {
  for (ScheduleKind kind : {ScheduleKind::k1F1B, ScheduleKind::kZB1P, ScheduleKind::kDualPipe,
                            ScheduleKind::kDualPipeV}) {
    if (name == schedule_kind_name(kind)) return kind;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown pipeline schedule '", std::string(name),
                                                 "' (expected 1f1b, zb1p, dualpipe or dualpipev)"));
}

std::string to_string(const Instruction& in) {
  const std::string fwd = absl::StrCat(in.chunk, ".", in.micro_batch);
  switch (in.op) {
    case Op::kForward:
      return absl::StrCat("F", fwd);
    case Op::kBackward:
      return absl::StrCat(in.defer_weight ? "Bi" : "B", fwd);
    case Op::kWeight:
      return "W";
    case Op::kForwardBackward:
      return absl::StrCat("F", fwd, "+", in.defer_weight ? "Bi" : "B", in.chunk_b, ".",
                          in.micro_batch_b);
    case Op::kSendForward:
      return absl::StrCat("sF", fwd, ">", in.peer);
    case Op::kRecvForward:
      return absl::StrCat("rF", fwd, "<", in.peer);
    case Op::kSendBackward:
      return absl::StrCat("sB", fwd, ">", in.peer);
    case Op::kRecvBackward:
      return absl::StrCat("rB", fwd, "<", in.peer);
  }
  return "?";
}

Location Schedule::locate(int stage, int micro_batch) const {
  FATHOM_CHECK(stage >= 0 && stage < stages) << "stage " << stage << " of " << stages;
  FATHOM_CHECK(micro_batch >= 0 && micro_batch < micro_batches)
      << "micro-batch " << micro_batch << " of " << micro_batches;
  switch (kind) {
    case ScheduleKind::k1F1B:
    case ScheduleKind::kZB1P:
      return {stage, 0};
    case ScheduleKind::kDualPipe:
      // The first half of the micro-batches enters at rank 0 and runs stage s on rank s (its
      // chunk 0); the second half enters at rank P-1 and runs stage s on rank P-1-s (chunk 1).
      if (micro_batch < micro_batches / 2) return {stage, 0};
      return {ranks - 1 - stage, 1};
    case ScheduleKind::kDualPipeV:
      if (stage < ranks) return {stage, 0};
      return {2 * ranks - 1 - stage, 1};
  }
  return {};
}

namespace {

// Emits one rank's instructions with the helpers of the DualPipe reference: per chunk, counters
// of the next micro-batch to forward, backward, send and receive (each chunk sees its
// micro-batches in one fixed order), and send/receive helpers that emit nothing at the ends of
// the pipeline or when the neighbouring stage is on this rank.
class ProgramBuilder {
 public:
  // order[c]: the micro-batches chunk c runs, in order.
  ProgramBuilder(const Schedule& schedule, int rank, std::vector<std::vector<int>> order)
      : schedule_(schedule), rank_(rank), order_(std::move(order)) {
    const size_t chunks = order_.size();
    next_f_.assign(chunks, 0);
    next_b_.assign(chunks, 0);
    next_send_f_.assign(chunks, 0);
    next_send_b_.assign(chunks, 0);
    next_recv_f_.assign(chunks, 0);
    next_recv_b_.assign(chunks, 0);
  }

  void recv_forward(int c) {
    const int s = stage(c);
    if (s == 0) return;
    const int m = next(c, next_recv_f_);
    const int peer = schedule_.locate(s - 1, m).rank;
    if (peer == rank_) return;
    ++next_recv_f_[c];
    emit({.op = Op::kRecvForward, .chunk = c, .micro_batch = m, .peer = peer});
  }
  void send_forward(int c) {
    const int s = stage(c);
    if (s == schedule_.stages - 1) return;
    const int m = next(c, next_send_f_);
    const int peer = schedule_.locate(s + 1, m).rank;
    if (peer == rank_) return;
    ++next_send_f_[c];
    emit({.op = Op::kSendForward, .chunk = c, .micro_batch = m, .peer = peer});
  }
  void recv_backward(int c) {
    const int s = stage(c);
    if (s == schedule_.stages - 1) return;
    const int m = next(c, next_recv_b_);
    const int peer = schedule_.locate(s + 1, m).rank;
    if (peer == rank_) return;
    ++next_recv_b_[c];
    emit({.op = Op::kRecvBackward, .chunk = c, .micro_batch = m, .peer = peer});
  }
  void send_backward(int c) {
    const int s = stage(c);
    if (s == 0) return;
    const int m = next(c, next_send_b_);
    const int peer = schedule_.locate(s - 1, m).rank;
    if (peer == rank_) return;
    ++next_send_b_[c];
    emit({.op = Op::kSendBackward, .chunk = c, .micro_batch = m, .peer = peer});
  }

  void forward_compute(int c) {
    emit({.op = Op::kForward, .chunk = c, .micro_batch = next(c, next_f_, true)});
  }
  void backward_compute(int c, bool defer_weight) {
    emit({.op = Op::kBackward,
          .chunk = c,
          .micro_batch = next(c, next_b_, true),
          .defer_weight = defer_weight});
  }
  void weight() { emit({.op = Op::kWeight}); }

  // Each step as in the reference: post receives, compute, post sends.
  void forward(int c, bool recv = true, bool send = true) {
    if (recv) recv_forward(c);
    forward_compute(c);
    if (send) send_forward(c);
  }
  void backward(int c, bool defer_weight = false, bool recv = true, bool send = true) {
    if (recv) recv_backward(c);
    backward_compute(c, defer_weight);
    if (send) send_backward(c);
  }
  // Forward of chunk cf overlapped with the (full) backward of chunk cb.
  void forward_backward(int cf, int cb, bool recv_f = true) {
    if (recv_f) recv_forward(cf);
    recv_backward(cb);
    emit({.op = Op::kForwardBackward,
          .chunk = cf,
          .micro_batch = next(cf, next_f_, true),
          .chunk_b = cb,
          .micro_batch_b = next(cb, next_b_, true)});
    send_forward(cf);
    send_backward(cb);
  }

  std::vector<Instruction> take() { return std::move(program_); }

 private:
  int stage(int c) const { return schedule_.chunk_stage[rank_][c]; }
  // The micro-batch at chunk c's position counter[c]; `advance` moves the counter on.
  int next(int c, std::vector<int>& counter, bool advance = false) {
    FATHOM_CHECK(counter[c] < int(order_[c].size()))
        << "rank " << rank_ << " chunk " << c << " has no micro-batch left";
    return advance ? order_[c][counter[c]++] : order_[c][counter[c]];
  }
  void emit(Instruction in) { program_.push_back(in); }

  const Schedule& schedule_;
  int rank_;
  std::vector<std::vector<int>> order_;
  std::vector<int> next_f_, next_b_, next_send_f_, next_send_b_, next_recv_f_, next_recv_b_;
  std::vector<Instruction> program_;
};

std::vector<int> iota(int begin, int end) {
  std::vector<int> v;
  for (int i = begin; i < end; ++i) v.push_back(i);
  return v;
}

// 1F1B, and ZB1P (ZB-H1 of Qi et al.): rank r runs P-1-r warm-up forwards, then alternates one
// forward and one backward, then drains the remaining backwards. ZB1P splits each backward into
// the input gradient (on the critical path) and a deferred W. After its last backward, rank r
// would idle for r input-gradient steps while the last gradient travels on to rank 0, so it
// holds back the weight steps of its first r micro-batches and runs them there; every later W
// follows its backward at once. Live activations stay at most P per rank, as in 1F1B.
std::vector<Instruction> one_f_one_b_program(const Schedule& schedule, int r, bool zero_bubble) {
  const int p = schedule.ranks;
  const int n = schedule.micro_batches;
  ProgramBuilder b(schedule, r, {iota(0, n)});
  const int warmup = std::min(p - 1 - r, n);
  const int held_back = zero_bubble ? std::min(r, n) : 0;
  int backwards = 0;
  auto backward_and_weight = [&] {
    b.backward(0, zero_bubble);
    if (zero_bubble && backwards++ >= held_back) b.weight();
  };
  for (int i = 0; i < warmup; ++i) b.forward(0);
  for (int i = 0; i < n - warmup; ++i) {
    b.forward(0);
    backward_and_weight();
  }
  for (int i = 0; i < warmup; ++i) backward_and_weight();
  for (int i = 0; i < held_back; ++i) b.weight();
  return b.take();
}

// DualPipe and DualPipeV: the 8 steps of SPEC.md section 2 / the DualPipe reference. Local phase
// 0 is the chunk whose stream reaches this rank first (`first`), phase 1 the other; h is the
// distance to the nearer end, half the number of ranks the streams cross (H), c the
// micro-batches per stream (C). `middle`: the rank where the two streams turn (DualPipe: ranks
// P/2-1 and P/2; DualPipeV: the last rank).
std::vector<Instruction> dual_pipe_program(const Schedule& schedule, int r) {
  const int p = schedule.ranks;
  const int n = schedule.micro_batches;
  const bool v = schedule.kind == ScheduleKind::kDualPipeV;
  int h, half, c, first;
  bool middle;
  std::vector<std::vector<int>> order;
  if (v) {
    h = r;
    half = p;
    c = n;
    first = 0;
    middle = r == p - 1;
    order = {iota(0, n), iota(0, n)};
  } else {
    h = std::min(r, p - 1 - r);
    half = p / 2;
    c = n / 2;
    first = r < p / 2 ? 0 : 1;
    middle = r == p / 2 - 1 || r == p / 2;
    order = {iota(0, c), iota(c, n)};
  }
  const int c0 = first;      // local phase 0
  const int c1 = 1 - first;  // local phase 1
  ProgramBuilder b(schedule, r, std::move(order));

  // Step 1: forwards of the first stream fill the pipe.
  for (int i = 0; i < 2 * (half - h - 1); ++i) b.forward(c0);
  // Step 2: alternate forwards of both streams. At the turning rank(s) a phase-0 output goes
  // out at once and the last phase-1 output waits for step 4, as in the reference.
  b.recv_forward(c0);
  for (int i = 0; i < h + 1; ++i) {
    b.forward(c0, /*recv=*/false, /*send=*/middle);
    b.recv_forward(c0);
    b.forward(c1, /*recv=*/true, /*send=*/!middle || i < h);
    if (!middle) b.send_forward(c0);
  }
  // Step 3: input-gradient backward, its weight step, then a forward, for phase 1.
  for (int i = 0; i < half - h - 1; ++i) {
    b.backward(c1, /*defer_weight=*/true);
    b.recv_forward(c1);
    b.weight();
    b.forward(c1, /*recv=*/false);
  }
  // Step 4: the steady state, two overlapped forward+backward pairs per iteration.
  for (int i = 0; i < c - 2 * half + h + 1; ++i) {
    if (i == 0) {
      if (middle) {
        // Unfused, so the forward's output reaches the other stream's next rank sooner.
        b.forward(c0, /*recv=*/false, /*send=*/false);
        b.send_forward(c1);
        b.backward(c1, /*defer_weight=*/false, /*recv=*/true, /*send=*/false);
        b.send_forward(c0);
        b.send_backward(c1);
      } else {
        b.forward_backward(c0, c1, /*recv_f=*/false);
      }
    } else {
      b.forward_backward(c0, c1);
    }
    b.forward_backward(c1, c0);
  }
  // Step 5: phase-1 backward, then a pair.
  for (int i = 0; i < half - h - 1; ++i) {
    b.backward(c1);
    b.forward_backward(c1, c0);
  }
  // Step 6: backwards of both streams; weight deferral switches on halfway.
  const int step6 = h + 1;
  bool defer = false;
  for (int i = 0; i < step6; ++i) {
    if (i == step6 / 2 && h % 2 == 1) defer = true;
    b.backward(c1, defer);
    if (i == step6 / 2 && h % 2 == 0) defer = true;
    b.backward(c0, defer);
  }
  // Step 7: a weight step, then a deferred phase-0 backward.
  for (int i = 0; i < half - h - 1; ++i) {
    b.weight();
    b.backward(c0, /*defer_weight=*/true);
  }
  // Step 8: drain the weight-gradient FIFO.
  for (int i = 0; i < h + 1; ++i) b.weight();
  return b.take();
}

absl::Status precondition(bool ok, ScheduleKind kind, std::string_view condition, int p, int n) {
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(std::string(schedule_kind_name(kind)), " schedule needs ",
                   std::string(condition), " (got P=", p, " ranks, N=", n, " micro-batches)"));
}

}  // namespace

absl::StatusOr<Schedule> make_schedule(ScheduleKind kind, int ranks, int micro_batches) {
  const int p = ranks;
  const int n = micro_batches;
  switch (kind) {
    case ScheduleKind::k1F1B:
      FATHOM_RETURN_IF_ERROR(precondition(p >= 1, kind, "P >= 1", p, n));
      FATHOM_RETURN_IF_ERROR(precondition(n >= 1, kind, "N >= 1", p, n));
      break;
    case ScheduleKind::kZB1P:
      FATHOM_RETURN_IF_ERROR(precondition(p >= 1, kind, "P >= 1", p, n));
      FATHOM_RETURN_IF_ERROR(precondition(n >= p, kind, "N >= P", p, n));
      break;
    case ScheduleKind::kDualPipe:
      FATHOM_RETURN_IF_ERROR(precondition(p >= 2, kind, "P >= 2", p, n));
      FATHOM_RETURN_IF_ERROR(precondition(p % 2 == 0, kind, "an even P", p, n));
      FATHOM_RETURN_IF_ERROR(precondition(n % 2 == 0, kind, "an even N", p, n));
      FATHOM_RETURN_IF_ERROR(precondition(n >= 2 * p, kind, "N >= 2P", p, n));
      break;
    case ScheduleKind::kDualPipeV:
      FATHOM_RETURN_IF_ERROR(precondition(p >= 1, kind, "P >= 1", p, n));
      FATHOM_RETURN_IF_ERROR(precondition(n >= 2 * p, kind, "N >= 2P", p, n));
      break;
  }

  Schedule schedule;
  schedule.kind = kind;
  schedule.ranks = p;
  schedule.micro_batches = n;
  schedule.stages = kind == ScheduleKind::kDualPipeV ? 2 * p : p;
  schedule.chunk_stage.resize(p);
  schedule.program.resize(p);
  for (int r = 0; r < p; ++r) {
    switch (kind) {
      case ScheduleKind::k1F1B:
      case ScheduleKind::kZB1P:
        schedule.chunk_stage[r] = {r};
        break;
      case ScheduleKind::kDualPipe:
        schedule.chunk_stage[r] = {r, p - 1 - r};
        break;
      case ScheduleKind::kDualPipeV:
        schedule.chunk_stage[r] = {r, 2 * p - 1 - r};
        break;
    }
  }
  for (int r = 0; r < p; ++r) {
    schedule.program[r] = kind == ScheduleKind::k1F1B || kind == ScheduleKind::kZB1P
                              ? one_f_one_b_program(schedule, r, kind == ScheduleKind::kZB1P)
                              : dual_pipe_program(schedule, r);
  }
  return schedule;
}

}  // namespace fathom::parallel::pipeline
