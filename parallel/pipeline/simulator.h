// Dependency-exact timing of a pipeline schedule (schedule.h) from per-op costs, a static
// validity check, and the bubble / activation formulas of SPEC.md section 2 to compare with.
//
// Model. Each rank runs its instructions in order, one compute at a time. Receives and sends take
// no rank time: a receive only registers that the rank expects a tensor; a send is posted when
// the rank reaches it (the end of the compute before it) and its tensor can be used by the peer
// `p2p` later. A compute starts when the rank is free and the tensors it needs are there: a
// forward needs the previous stage's activation, a backward the next stage's gradient (from a
// receive, or handed over on the same rank). A compute never waits for a send or for receives
// of other computes.
//
// Costs. F forward, B the full backward (input and weight gradients), W the weight gradient
// alone; an input-only backward (defer_weight) costs B - W. F&B is a forward overlapped with a
// full backward; with its weight gradient deferred it costs F&B - W.
//
// Bubble of a rank = makespan - busy time, the makespan being the end of the last compute of any
// rank (all ranks start at 0). With equal costs F=1, B=2, W=1, F&B=3 this is exactly the SPEC
// table's formula on every rank: (P-1)(F+B) for 1F1B, (P-1)(F+B-2W) for ZB1P, (P/2-1)(F&B+B-3W)
// for DualPipe, and (S/2-1)(F&B+B-3W) for DualPipeV with S = 2P stages (SPEC: "P in the
// formula counts pipeline stages"). With F&B < F+B it is at most the formula.
//
// Live activations of a rank count (chunk, micro-batch) pairs forwarded and not yet fully
// backwarded on it, in units of one stage's activations of one micro-batch: a forward adds one
// when it starts, a full backward frees one when it ends, an input-only backward keeps it until
// its W ends (the weight gradient needs the stage's inputs). A kForwardBackward holds its new
// forward and its old backward at once. DualPipeV's stages are half the size of DualPipe's on
// the same number of ranks; counting in its own stages, a DualPipeV rank of P ranks peaks at
// 2P+1: the table's "P+1 (on P/2 devices)", whose P counts the 2P stages.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/pipeline/schedule.h"

namespace fathom::parallel::pipeline {

struct Costs {
  double forward = 1;           // F
  double backward = 2;          // B, the full backward
  double weight = 1;            // W
  double forward_backward = 3;  // F&B
  double p2p = 0;               // from a send being posted to the tensor being usable at the peer
};

// InvalidArgument naming the cost if one is negative or not finite, or W > B or W > F&B.
absl::Status validate_costs(const Costs& costs);

// One compute of a rank.
struct TimelineEvent {
  double start = 0;
  double end = 0;
  Instruction instruction;
  // kWeight: the deferred backward whose weight gradient this step computes (FIFO order).
  int weight_chunk = -1;
  int weight_micro_batch = -1;
};

struct RankTimeline {
  std::vector<TimelineEvent> events;  // computes only, in program order
  double busy = 0;                    // sum of compute costs
  double bubble = 0;                  // makespan - busy
  int peak_activations = 0;
};

struct Simulation {
  double makespan = 0;
  std::vector<RankTimeline> ranks;  // one per pipeline rank

  double max_bubble() const;
  int max_peak_activations() const;
};

// Checks that `schedule` is well formed and complete, independent of costs:
//   - one program and one chunk_stage row per rank, locate() consistent with chunk_stage;
//   - every (stage, micro-batch) forward and backward runs exactly once, at locate(), the
//     forward first; every compute's input is there before it (an earlier receive, or the
//     neighbouring stage computed earlier on the same rank);
//   - every send follows the compute that produced its tensor and goes to the rank that runs the
//     neighbouring stage, never to itself; every send matches exactly one receive at the peer
//     with the same direction, stage and micro-batch, and every receive one send;
//   - no kWeight runs with an empty weight-gradient FIFO, and each rank's FIFO is empty at the
//     end (as many kWeight as deferred backwards).
// Returns InvalidArgument naming the rank, the instruction (index and to_string) and the problem.
absl::Status validate(const Schedule& schedule);

// Runs validate(), then the timing model above. A schedule where no rank can progress returns
// FailedPrecondition naming every stuck rank, the instruction it waits at and the tensor it
// waits for.
absl::StatusOr<Simulation> simulate(const Schedule& schedule, const Costs& costs);

// The SPEC table's bubble formula for `kind` on `ranks` pipeline ranks, and its text
// ("(P-1)(F+B)", ...). DualPipeV evaluates the formula with P = 2 * ranks stages.
double formula_bubble(ScheduleKind kind, int ranks, const Costs& costs);
std::string formula_bubble_text(ScheduleKind kind);

// The SPEC table's peak activations per rank: P (1F1B, ZB1P), P+1 (DualPipe), 2P+1 in
// half-size stages (DualPipeV, see above).
int formula_peak_activations(ScheduleKind kind, int ranks);
std::string formula_peak_activations_text(ScheduleKind kind);

}  // namespace fathom::parallel::pipeline
