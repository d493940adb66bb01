#include "parallel/pipeline/simulator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "parallel/pipeline/schedule.h"

namespace fathom::parallel::pipeline {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr ScheduleKind kAllKinds[] = {ScheduleKind::k1F1B, ScheduleKind::kZB1P,
                                      ScheduleKind::kDualPipe, ScheduleKind::kDualPipeV};

Schedule make(ScheduleKind kind, int p, int n) {
  absl::StatusOr<Schedule> s = make_schedule(kind, p, n);
  EXPECT_TRUE(s.ok()) << s.status();
  return *std::move(s);
}

Simulation run(const Schedule& s, const Costs& costs) {
  absl::StatusOr<Simulation> sim = simulate(s, costs);
  EXPECT_TRUE(sim.ok()) << sim.status();
  return *std::move(sim);
}

std::string where(ScheduleKind kind, int p, int n) {
  return std::string(schedule_kind_name(kind)) + " P=" + std::to_string(p) +
         " N=" + std::to_string(n);
}

// SPEC.md section 2: with F=1, B=2, W=1, F&B=3 every rank's simulated bubble is the table's
// formula exactly, and the peak activations are the table's.
TEST(SimulatorTest, EqualCostsGiveTheSpecFormulasExactly) {
  const Costs costs;  // F=1 B=2 W=1 F&B=3
  for (ScheduleKind kind : kAllKinds) {
    for (int p : {4, 8, 16}) {
      for (int n : {2 * p, 2 * p + 2, 4 * p}) {
        const Schedule s = make(kind, p, n);
        const Simulation sim = run(s, costs);
        const double formula = formula_bubble(kind, p, costs);
        for (int r = 0; r < p; ++r) {
          EXPECT_DOUBLE_EQ(sim.ranks[r].bubble, formula) << where(kind, p, n) << " rank " << r;
          // 1F1B keeps P-r forwards in flight on rank r; the others the same number everywhere.
          const int peak = kind == ScheduleKind::k1F1B ? p - r : formula_peak_activations(kind, p);
          EXPECT_EQ(sim.ranks[r].peak_activations, peak) << where(kind, p, n) << " rank " << r;
        }
        EXPECT_EQ(sim.max_peak_activations(), formula_peak_activations(kind, p));
      }
    }
  }
  // The numbers SPEC.md quotes.
  EXPECT_DOUBLE_EQ(formula_bubble(ScheduleKind::kDualPipe, 8, costs), 6);
  EXPECT_DOUBLE_EQ(formula_bubble(ScheduleKind::kDualPipe, 16, costs), 14);
  EXPECT_DOUBLE_EQ(formula_bubble(ScheduleKind::k1F1B, 8, costs), 21);
  EXPECT_DOUBLE_EQ(formula_bubble(ScheduleKind::kZB1P, 8, costs), 7);
  EXPECT_EQ(formula_peak_activations(ScheduleKind::kDualPipe, 8), 9);
  // DualPipeV on 4 ranks has 8 half-size stages: the formula with P = 8 stages.
  EXPECT_DOUBLE_EQ(formula_bubble(ScheduleKind::kDualPipeV, 4, costs), 6);
  EXPECT_EQ(formula_peak_activations(ScheduleKind::kDualPipeV, 4), 9);
}

// When the overlapped pair is cheaper than its parts, the bubble is at most the formula.
TEST(SimulatorTest, CheaperOverlapStaysAtOrBelowTheFormula) {
  const Costs costs{.forward_backward = 2.5};
  for (ScheduleKind kind : {ScheduleKind::kDualPipe, ScheduleKind::kDualPipeV}) {
    for (int p : {4, 8, 16}) {
      for (int n : {2 * p, 2 * p + 2, 4 * p}) {
        const Simulation sim = run(make(kind, p, n), costs);
        for (int r = 0; r < p; ++r) {
          EXPECT_LE(sim.ranks[r].bubble, formula_bubble(kind, p, costs))
              << where(kind, p, n) << " rank " << r;
        }
        EXPECT_DOUBLE_EQ(sim.max_bubble(), formula_bubble(kind, p, costs)) << where(kind, p, n);
      }
    }
  }
  // SPEC.md: worst rank 4.5 at P=8, N=20; the end ranks wait less.
  const Simulation sim = run(make(ScheduleKind::kDualPipe, 8, 20), costs);
  EXPECT_DOUBLE_EQ(sim.max_bubble(), 4.5);
  EXPECT_DOUBLE_EQ(sim.ranks[0].bubble, 3.5);
  EXPECT_DOUBLE_EQ(sim.ranks[3].bubble, 4.5);
}

// Every compute starts after the previous compute of its rank and after its inputs exist (plus
// the p2p delay when they come from another rank); computes of a rank never overlap.
TEST(SimulatorTest, TimelinesRespectDependencies) {
  const Costs costs{
      .forward = 1, .backward = 1.5, .weight = 0.5, .forward_backward = 2.25, .p2p = 0.3};
  for (ScheduleKind kind : kAllKinds) {
    const Schedule s = make(kind, 4, 12);
    const Simulation sim = run(s, costs);
    // (stage, micro-batch) -> (rank, end) of forwards and backwards.
    std::map<std::pair<int, int>, std::pair<int, double>> fwd, bwd;
    for (int r = 0; r < s.ranks; ++r) {
      for (const TimelineEvent& e : sim.ranks[r].events) {
        const Instruction& in = e.instruction;
        if (in.op == Op::kForward || in.op == Op::kForwardBackward) {
          fwd[{s.chunk_stage[r][in.chunk], in.micro_batch}] = {r, e.end};
        }
        if (in.op == Op::kBackward) bwd[{s.chunk_stage[r][in.chunk], in.micro_batch}] = {r, e.end};
        if (in.op == Op::kForwardBackward) {
          bwd[{s.chunk_stage[r][in.chunk_b], in.micro_batch_b}] = {r, e.end};
        }
      }
    }
    for (int r = 0; r < s.ranks; ++r) {
      double previous_end = 0;
      for (const TimelineEvent& e : sim.ranks[r].events) {
        const Instruction& in = e.instruction;
        EXPECT_GE(e.start, previous_end) << where(kind, 4, 12) << " rank " << r;
        EXPECT_LE(e.end, sim.makespan);
        previous_end = e.end;
        auto check_input = [&](const std::map<std::pair<int, int>, std::pair<int, double>>& from,
                               int stage, int m) {
          if (stage < 0 || stage >= s.stages) return;
          const auto [rank, end] = from.at({stage, m});
          EXPECT_GE(e.start + 1e-12, end + (rank == r ? 0 : costs.p2p))
              << where(kind, 4, 12) << " rank " << r << " " << to_string(in);
        };
        if (in.op == Op::kForward || in.op == Op::kForwardBackward) {
          check_input(fwd, s.chunk_stage[r][in.chunk] - 1, in.micro_batch);
        }
        if (in.op == Op::kBackward) {
          check_input(bwd, s.chunk_stage[r][in.chunk] + 1, in.micro_batch);
          check_input(fwd, s.chunk_stage[r][in.chunk], in.micro_batch);
        }
        if (in.op == Op::kForwardBackward) {
          check_input(bwd, s.chunk_stage[r][in.chunk_b] + 1, in.micro_batch_b);
        }
      }
    }
  }
}

TEST(SimulatorTest, PointToPointDelayByHand) {
  // 1F1B, P=2, N=2, p2p 0.5. Rank 0: F0 [0,1], F1 [1,2]. Rank 1: F0 [1.5,2.5], B0 [2.5,4.5],
  // F1 [4.5,5.5], B1 [5.5,7.5]. Rank 0: B0 waits for 4.5+0.5: [5,7]; B1 for 8: [8,10].
  const Simulation sim = run(make(ScheduleKind::k1F1B, 2, 2), {.p2p = 0.5});
  EXPECT_DOUBLE_EQ(sim.makespan, 10);
  ASSERT_EQ(sim.ranks[0].events.size(), 4u);
  ASSERT_EQ(sim.ranks[1].events.size(), 4u);
  const double expected0[4][2] = {{0, 1}, {1, 2}, {5, 7}, {8, 10}};
  const double expected1[4][2] = {{1.5, 2.5}, {2.5, 4.5}, {4.5, 5.5}, {5.5, 7.5}};
  for (int i = 0; i < 4; ++i) {
    EXPECT_DOUBLE_EQ(sim.ranks[0].events[i].start, expected0[i][0]) << i;
    EXPECT_DOUBLE_EQ(sim.ranks[0].events[i].end, expected0[i][1]) << i;
    EXPECT_DOUBLE_EQ(sim.ranks[1].events[i].start, expected1[i][0]) << i;
    EXPECT_DOUBLE_EQ(sim.ranks[1].events[i].end, expected1[i][1]) << i;
  }
  EXPECT_DOUBLE_EQ(sim.ranks[0].busy, 6);
  EXPECT_DOUBLE_EQ(sim.ranks[0].bubble, 4);
  EXPECT_DOUBLE_EQ(sim.ranks[1].bubble, 4);
}

// A hand-made single-rank schedule: a deferred-weight F&B costs F&B - W, its W names the
// micro-batch it finishes, and an activation lives until its W.
TEST(SimulatorTest, DeferredWeightCostsAndFifo) {
  Schedule s;
  s.kind = ScheduleKind::k1F1B;
  s.ranks = 1;
  s.micro_batches = 2;
  s.stages = 1;
  s.chunk_stage = {{0}};
  s.program = {{
      {.op = Op::kForward, .chunk = 0, .micro_batch = 0},
      {.op = Op::kForwardBackward,
       .chunk = 0,
       .micro_batch = 1,
       .defer_weight = true,
       .chunk_b = 0,
       .micro_batch_b = 0},
      {.op = Op::kBackward, .chunk = 0, .micro_batch = 1},
      {.op = Op::kWeight},
  }};
  const Simulation sim = run(s, {});
  const RankTimeline& line = sim.ranks[0];
  ASSERT_EQ(line.events.size(), 4u);
  EXPECT_DOUBLE_EQ(line.events[1].start, 1);
  EXPECT_DOUBLE_EQ(line.events[1].end, 3);  // F&B - W = 2
  EXPECT_DOUBLE_EQ(line.events[2].end, 5);  // full B = 2
  EXPECT_DOUBLE_EQ(line.events[3].end, 6);  // W = 1
  EXPECT_EQ(line.events[3].weight_micro_batch, 0);
  EXPECT_EQ(line.events[3].weight_chunk, 0);
  EXPECT_DOUBLE_EQ(sim.makespan, 6);
  EXPECT_DOUBLE_EQ(line.bubble, 0);
  EXPECT_EQ(line.peak_activations, 2);
}

// Rank 0 waits for a gradient before sending the activation rank 1 needs to produce it.
TEST(SimulatorTest, ReportsDeadlockWithEveryStuckRank) {
  Schedule s;
  s.kind = ScheduleKind::k1F1B;
  s.ranks = 2;
  s.micro_batches = 1;
  s.stages = 2;
  s.chunk_stage = {{0}, {1}};
  s.program = {
      {{.op = Op::kForward, .chunk = 0, .micro_batch = 0},
       {.op = Op::kRecvBackward, .chunk = 0, .micro_batch = 0, .peer = 1},
       {.op = Op::kBackward, .chunk = 0, .micro_batch = 0},
       {.op = Op::kSendForward, .chunk = 0, .micro_batch = 0, .peer = 1}},
      {{.op = Op::kRecvForward, .chunk = 0, .micro_batch = 0, .peer = 0},
       {.op = Op::kForward, .chunk = 0, .micro_batch = 0},
       {.op = Op::kBackward, .chunk = 0, .micro_batch = 0},
       {.op = Op::kSendBackward, .chunk = 0, .micro_batch = 0, .peer = 0}},
  };
  ASSERT_TRUE(validate(s).ok()) << validate(s);  // well formed, only the order is wrong
  const absl::StatusOr<Simulation> sim = simulate(s, {});
  ASSERT_FALSE(sim.ok());
  EXPECT_EQ(sim.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(sim.status().message(),
              AllOf(HasSubstr("deadlock"), HasSubstr("rank 0 waits at instruction 2 (B0.0)"),
                    HasSubstr("rank 1 waits at instruction 1 (F0.0)"),
                    HasSubstr("gradient of stage 0 output, micro-batch 0 from rank 1")));
}

class ValidateTest : public ::testing::Test {
 protected:
  // Removes the first instruction of `rank` for which `pred` holds; returns its text.
  template <typename Pred>
  static std::string erase_first(Schedule& s, int rank, Pred pred) {
    auto& prog = s.program[rank];
    for (auto it = prog.begin(); it != prog.end(); ++it) {
      if (pred(*it)) {
        const std::string text = to_string(*it);
        prog.erase(it);
        return text;
      }
    }
    ADD_FAILURE() << "nothing to erase on rank " << rank;
    return "";
  }
  static std::string error_of(const Schedule& s) {
    const absl::Status status = validate(s);
    EXPECT_FALSE(status.ok());
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    return std::string(status.message());
  }
};

TEST_F(ValidateTest, AcceptsGeneratedSchedules) {
  for (ScheduleKind kind : kAllKinds) EXPECT_TRUE(validate(make(kind, 4, 8)).ok());
}

TEST_F(ValidateTest, RejectsAnUnmatchedSend) {
  Schedule s = make(ScheduleKind::k1F1B, 4, 8);
  // A second send of a tensor already sent once.
  const auto& prog = s.program[1];
  const auto send = std::find_if(prog.begin(), prog.end(),
                                 [](const Instruction& in) { return in.op == Op::kSendForward; });
  ASSERT_NE(send, prog.end());
  s.program[1].push_back(*send);
  EXPECT_THAT(error_of(s), AllOf(HasSubstr("activation of stage 1 output, micro-batch 0"),
                                 HasSubstr("sent 2 times"), HasSubstr("received 1 times")));
}

TEST_F(ValidateTest, RejectsAComputeWithoutItsReceive) {
  Schedule s = make(ScheduleKind::kDualPipe, 4, 8);
  erase_first(s, 2, [](const Instruction& in) { return in.op == Op::kRecvBackward; });
  EXPECT_THAT(error_of(s), AllOf(HasSubstr("rank 2"), HasSubstr("no earlier receive")));
}

TEST_F(ValidateTest, RejectsAMissingBackward) {
  Schedule s = make(ScheduleKind::k1F1B, 4, 8);
  // Rank 0 holds stage 0: its backwards send nothing, so only the count can catch this.
  const std::string removed = erase_first(
      s, 0, [](const Instruction& in) { return in.op == Op::kBackward && in.micro_batch == 7; });
  EXPECT_EQ(removed, "B0.7");
  EXPECT_THAT(error_of(s), HasSubstr("backward of stage 0, micro-batch 7 runs 0 times"));
}

TEST_F(ValidateTest, RejectsAWeightWithoutADeferredBackward) {
  Schedule s = make(ScheduleKind::k1F1B, 4, 8);
  s.program[2].insert(s.program[2].begin() + 3, Instruction{.op = Op::kWeight});
  EXPECT_THAT(error_of(s), AllOf(HasSubstr("rank 2, instruction 3 (W)"),
                                 HasSubstr("W without a deferred backward")));
}

TEST_F(ValidateTest, RejectsALeftoverDeferredWeight) {
  Schedule s = make(ScheduleKind::kZB1P, 4, 8);
  s.program[3].pop_back();
  ASSERT_EQ(s.program[3].size() + 1, make(ScheduleKind::kZB1P, 4, 8).program[3].size());
  EXPECT_THAT(error_of(s), HasSubstr("rank 3 defers 8 weight gradients but runs 7 W steps"));
}

TEST_F(ValidateTest, RejectsBackwardBeforeForward) {
  Schedule s = make(ScheduleKind::k1F1B, 1, 2);
  ASSERT_EQ(to_string(s.program[0][0]), "F0.0");
  std::swap(s.program[0][0], s.program[0][1]);  // B0.0 first
  EXPECT_THAT(error_of(s), HasSubstr("backward before its forward"));
}

TEST_F(ValidateTest, RejectsAWrongPeerAndALocalTransfer) {
  Schedule s = make(ScheduleKind::k1F1B, 4, 8);
  for (Instruction& in : s.program[1]) {
    if (in.op == Op::kSendForward) {
      in.peer = 3;
      break;
    }
  }
  EXPECT_THAT(error_of(s), HasSubstr("is on rank 2, not on peer 3"));

  // DualPipeV's last rank hands its chunk-0 output to its chunk 1 without a transfer.
  Schedule v = make(ScheduleKind::kDualPipeV, 2, 4);
  v.program[1].insert(v.program[1].begin() + 1,
                      Instruction{.op = Op::kSendForward, .chunk = 0, .micro_batch = 0, .peer = 1});
  EXPECT_THAT(error_of(v), HasSubstr("same rank"));
}

TEST(CostsTest, RejectsBadCosts) {
  EXPECT_TRUE(validate_costs({}).ok());
  EXPECT_THAT(validate_costs({.forward = -1}).message(), HasSubstr("F = -1"));
  EXPECT_THAT(validate_costs({.p2p = -0.5}).message(), HasSubstr("p2p"));
  EXPECT_THAT(validate_costs({.backward = 1, .weight = 1.5}).message(), HasSubstr("W = 1.5"));
  const absl::StatusOr<Simulation> sim =
      simulate(make(ScheduleKind::k1F1B, 2, 2), {.forward_backward = -3});
  ASSERT_FALSE(sim.ok());
  EXPECT_THAT(sim.status().message(), HasSubstr("F&B"));
}

}  // namespace
}  // namespace fathom::parallel::pipeline
