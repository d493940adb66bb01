// Pipeline schedules as plain data (DESIGN.md decision 2, SPEC.md section 2).
//
// A schedule says, for every pipeline rank, the exact sequence of instructions it runs in one
// training step: forwards, backwards (full, or input-only with the weight gradient deferred),
// deferred weight-gradient steps, overlapped forward+backward pairs, and the point-to-point
// sends and receives between them. One executor (executor.h) runs any schedule with real model
// chunks; one simulator (simulator.h) computes its timeline from per-op costs.
//
// Vocabulary:
//   P          pipeline ranks (the pp group size)
//   N          micro-batches per step, ids 0..N-1
//   stage      a contiguous slice of the model; every micro-batch runs forward through stages
//              0..S-1 in order and backward in reverse; stage 0 embeds, stage S-1 computes the loss
//   chunk      a stage held by a rank: local index 0 or 1. 1F1B and ZB1P hold one stage per rank
//              (S = P); DualPipe holds stages r and P-1-r on rank r (S = P; every stage exists on
//              two ranks, mirrored copies whose gradients are summed); DualPipeV holds virtual
//              stages r and 2P-1-r (S = 2P, no copies)
//   location   where micro-batch m runs stage s: (rank, chunk) = Schedule::locate(s, m)
//
// Semantics the executor and the simulator share:
//   - kRecv* posts a non-blocking receive of a tensor some other rank sends; the compute that
//     needs it waits for it. kSend* posts a non-blocking send of a tensor the preceding compute
//     produced. A send and its receive name each other's rank in `peer`.
//   - When consecutive stages of a micro-batch sit on the same rank (DualPipeV's turn at the last
//     rank), the activation or gradient is handed over locally, with no send or receive.
//   - kBackward with defer_weight pushes the weight gradients into the rank's WeightGradStore
//     FIFO as one entry; each kWeight runs the oldest entry. The FIFO is empty after the last
//     instruction.
//   - kForwardBackward runs the forward of (chunk, micro_batch) and the backward of
//     (chunk_b, micro_batch_b) together, so that one's communication hides behind the other's
//     compute; the result equals running the forward, then the backward.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace fathom::parallel::pipeline {

enum class ScheduleKind : uint8_t { k1F1B, kZB1P, kDualPipe, kDualPipeV };

// "1f1b", "zb1p", "dualpipe", "dualpipev" (the YAML and CLI spelling).
std::string_view schedule_kind_name(ScheduleKind kind);
absl::StatusOr<ScheduleKind> parse_schedule_kind(std::string_view name);

enum class Op : uint8_t {
  kForward,          // F of (chunk, micro_batch)
  kBackward,         // B of (chunk, micro_batch); defer_weight: input gradient only
  kWeight,           // W: the oldest deferred weight gradient
  kForwardBackward,  // F of (chunk, micro_batch) overlapped with B of (chunk_b, micro_batch_b)
  kSendForward,      // send the output activation of (chunk, micro_batch) to `peer`
  kRecvForward,      // receive the input activation of (chunk, micro_batch) from `peer`
  kSendBackward,     // send the input gradient of (chunk, micro_batch) to `peer`
  kRecvBackward,     // receive the output gradient of (chunk, micro_batch) from `peer`
};

struct Instruction {
  Op op = Op::kForward;
  int chunk = 0;
  int micro_batch = -1;
  // kBackward, and the backward half of kForwardBackward: defer the weight gradient (B = input
  // gradient only, W later) instead of computing it now.
  bool defer_weight = false;
  // kForwardBackward: the backward half.
  int chunk_b = 0;
  int micro_batch_b = -1;
  // kSend* / kRecv*: the pipeline rank at the other end.
  int peer = -1;

  bool operator==(const Instruction&) const = default;
};

// "F0.3" (forward, chunk 0, micro-batch 3), "B1.2", "Bi1.2" (input only), "W",
// "F0.3+B1.2", "sF0.3>1", "rF0.3<0", "sB...", "rB...".
std::string to_string(const Instruction& instruction);

struct Location {
  int rank = 0;
  int chunk = 0;
  bool operator==(const Location&) const = default;
};

struct Schedule {
  ScheduleKind kind = ScheduleKind::k1F1B;
  int ranks = 0;          // P
  int micro_batches = 0;  // N
  int stages = 0;         // S
  // chunk_stage[r][c]: the stage that chunk c of rank r holds (one or two entries per rank).
  std::vector<std::vector<int>> chunk_stage;
  // program[r]: rank r's instructions, in order.
  std::vector<std::vector<Instruction>> program;

  // Where micro-batch m runs stage s.
  Location locate(int stage, int micro_batch) const;
  int chunks_per_rank() const { return chunk_stage.empty() ? 0 : int(chunk_stage[0].size()); }
};

// The schedule of `kind` for P ranks and N micro-batches. Preconditions, each failing with
// InvalidArgument that names the schedule and the violated condition:
//   1F1B, ZB1P   P >= 1, N >= 1 (ZB1P: N >= P)
//   DualPipe     P >= 2 even, N even, N >= 2P
//   DualPipeV    P >= 1, N >= 2P
absl::StatusOr<Schedule> make_schedule(ScheduleKind kind, int ranks, int micro_batches);

}  // namespace fathom::parallel::pipeline
