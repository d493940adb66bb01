#include "parallel/pipeline/schedule.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "parallel/pipeline/simulator.h"

namespace fathom::parallel::pipeline {
namespace {

using ::testing::HasSubstr;

constexpr ScheduleKind kAllKinds[] = {ScheduleKind::k1F1B, ScheduleKind::kZB1P,
                                      ScheduleKind::kDualPipe, ScheduleKind::kDualPipeV};

// A rank's program as text: "F0.0 sF0.0>1 ...".
std::string program_text(const Schedule& s, int rank) {
  std::vector<std::string> parts;
  for (const Instruction& in : s.program[rank]) parts.push_back(to_string(in));
  return absl::StrJoin(parts, " ");
}

// Only the computes of a rank's program.
std::string compute_text(const Schedule& s, int rank) {
  std::vector<std::string> parts;
  for (const Instruction& in : s.program[rank]) {
    if (in.op == Op::kForward || in.op == Op::kBackward || in.op == Op::kWeight ||
        in.op == Op::kForwardBackward) {
      parts.push_back(to_string(in));
    }
  }
  return absl::StrJoin(parts, " ");
}

Schedule make(ScheduleKind kind, int p, int n) {
  absl::StatusOr<Schedule> s = make_schedule(kind, p, n);
  EXPECT_TRUE(s.ok()) << s.status();
  return *std::move(s);
}

TEST(ScheduleKindTest, NamesRoundTrip) {
  for (ScheduleKind kind : kAllKinds) {
    const absl::StatusOr<ScheduleKind> parsed = parse_schedule_kind(schedule_kind_name(kind));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, kind);
  }
  EXPECT_EQ(schedule_kind_name(ScheduleKind::kDualPipeV), "dualpipev");
  const absl::StatusOr<ScheduleKind> bad = parse_schedule_kind("gpipe");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("'gpipe'"));
}

TEST(InstructionTest, ToString) {
  EXPECT_EQ(to_string({.op = Op::kForward, .chunk = 0, .micro_batch = 3}), "F0.3");
  EXPECT_EQ(to_string({.op = Op::kBackward, .chunk = 1, .micro_batch = 2}), "B1.2");
  EXPECT_EQ(to_string({.op = Op::kBackward, .chunk = 1, .micro_batch = 2, .defer_weight = true}),
            "Bi1.2");
  EXPECT_EQ(to_string({.op = Op::kWeight}), "W");
  EXPECT_EQ(to_string({.op = Op::kForwardBackward,
                       .chunk = 0,
                       .micro_batch = 3,
                       .chunk_b = 1,
                       .micro_batch_b = 2}),
            "F0.3+B1.2");
  EXPECT_EQ(to_string({.op = Op::kSendForward, .chunk = 0, .micro_batch = 3, .peer = 1}),
            "sF0.3>1");
  EXPECT_EQ(to_string({.op = Op::kRecvForward, .chunk = 0, .micro_batch = 3, .peer = 0}),
            "rF0.3<0");
  EXPECT_EQ(to_string({.op = Op::kSendBackward, .chunk = 1, .micro_batch = 5, .peer = 2}),
            "sB1.5>2");
  EXPECT_EQ(to_string({.op = Op::kRecvBackward, .chunk = 1, .micro_batch = 5, .peer = 3}),
            "rB1.5<3");
}

TEST(ScheduleTest, Locate) {
  const Schedule one = make(ScheduleKind::k1F1B, 4, 8);
  EXPECT_EQ(one.stages, 4);
  EXPECT_EQ(one.chunks_per_rank(), 1);
  EXPECT_EQ(one.locate(2, 5), (Location{2, 0}));

  // DualPipe: micro-batches 0..N/2-1 enter at rank 0, N/2..N-1 at rank P-1.
  const Schedule dual = make(ScheduleKind::kDualPipe, 4, 8);
  EXPECT_EQ(dual.stages, 4);
  EXPECT_EQ(dual.chunk_stage[1], (std::vector<int>{1, 2}));
  EXPECT_EQ(dual.locate(0, 3), (Location{0, 0}));
  EXPECT_EQ(dual.locate(3, 3), (Location{3, 0}));
  EXPECT_EQ(dual.locate(0, 4), (Location{3, 1}));
  EXPECT_EQ(dual.locate(3, 7), (Location{0, 1}));
  EXPECT_EQ(dual.locate(1, 4), (Location{2, 1}));

  // DualPipeV: stages 0..P-1 down the ranks on chunk 0, P..2P-1 back up on chunk 1.
  const Schedule v = make(ScheduleKind::kDualPipeV, 4, 8);
  EXPECT_EQ(v.stages, 8);
  EXPECT_EQ(v.chunk_stage[0], (std::vector<int>{0, 7}));
  EXPECT_EQ(v.locate(3, 0), (Location{3, 0}));
  EXPECT_EQ(v.locate(4, 0), (Location{3, 1}));
  EXPECT_EQ(v.locate(7, 6), (Location{0, 1}));
}

TEST(ScheduleTest, PreconditionsNameTheCondition) {
  struct Case {
    ScheduleKind kind;
    int p, n;
    const char* condition;
  };
  const Case cases[] = {
      {ScheduleKind::k1F1B, 0, 4, "P >= 1"},      {ScheduleKind::k1F1B, 4, 0, "N >= 1"},
      {ScheduleKind::kZB1P, 4, 3, "N >= P"},      {ScheduleKind::kDualPipe, 3, 12, "even P"},
      {ScheduleKind::kDualPipe, 4, 9, "even N"},  {ScheduleKind::kDualPipe, 4, 6, "N >= 2P"},
      {ScheduleKind::kDualPipe, 0, 4, "P >= 2"},  {ScheduleKind::kDualPipeV, 4, 7, "N >= 2P"},
      {ScheduleKind::kDualPipeV, 0, 4, "P >= 1"},
  };
  for (const Case& c : cases) {
    const absl::StatusOr<Schedule> s = make_schedule(c.kind, c.p, c.n);
    ASSERT_FALSE(s.ok()) << schedule_kind_name(c.kind) << " P=" << c.p << " N=" << c.n;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.status().message(), HasSubstr(c.condition));
    EXPECT_THAT(s.status().message(), HasSubstr(std::string(schedule_kind_name(c.kind))));
  }
  // The boundary cases are accepted.
  EXPECT_TRUE(make_schedule(ScheduleKind::kDualPipe, 4, 8).ok());
  EXPECT_TRUE(make_schedule(ScheduleKind::kDualPipeV, 3, 6).ok());
  EXPECT_TRUE(make_schedule(ScheduleKind::kDualPipeV, 3, 7).ok());  // odd N is fine for V
  EXPECT_TRUE(make_schedule(ScheduleKind::kZB1P, 4, 4).ok());
  EXPECT_TRUE(make_schedule(ScheduleKind::k1F1B, 4, 1).ok());
}

// The exact instruction lists of small cases, worked out by hand from the step structure.
TEST(ScheduleTest, OneFOneBProgram) {
  const Schedule s = make(ScheduleKind::k1F1B, 2, 3);
  EXPECT_EQ(program_text(s, 0),
            "F0.0 sF0.0>1 F0.1 sF0.1>1 rB0.0<1 B0.0 F0.2 sF0.2>1 rB0.1<1 B0.1 rB0.2<1 B0.2");
  EXPECT_EQ(program_text(s, 1),
            "rF0.0<0 F0.0 B0.0 sB0.0>0 rF0.1<0 F0.1 B0.1 sB0.1>0 rF0.2<0 F0.2 B0.2 sB0.2>0");
}

TEST(ScheduleTest, ZeroBubbleProgramHoldsBackWeightSteps) {
  const Schedule s = make(ScheduleKind::kZB1P, 2, 3);
  // Rank 0 runs each W right after its backward; the last rank holds back its first one.
  EXPECT_EQ(compute_text(s, 0), "F0.0 F0.1 Bi0.0 W F0.2 Bi0.1 W Bi0.2 W");
  EXPECT_EQ(program_text(s, 1),
            "rF0.0<0 F0.0 Bi0.0 sB0.0>0 rF0.1<0 F0.1 Bi0.1 sB0.1>0 W rF0.2<0 F0.2 Bi0.2 sB0.2>0 "
            "W W");
}

TEST(ScheduleTest, DualPipeTwoRanks) {
  // P=2, N=4: rank 0 is a middle rank (h=0): step 2 sends F0 at once and holds back the F1
  // send, step 4 starts unfused, step 6 defers the weight of its B0.
  const Schedule s = make(ScheduleKind::kDualPipe, 2, 4);
  EXPECT_EQ(program_text(s, 0),
            "F0.0 sF0.0>1 rF1.2<1 F1.2 F0.1 B1.2 sF0.1>1 sB1.2>1 rF1.3<1 rB0.0<1 F1.3+B0.0 B1.3 "
            "sB1.3>1 rB0.1<1 Bi0.1 W");
}

TEST(ScheduleTest, DualPipeStepsAtFourRanks) {
  // P=4, N=8 (H=2, C=4). Rank 0 (h=0): 2 F0; F0 F1; Bi1 W F1; two pairs; B1 and a pair; B1,
  // then Bi0 (deferral on at i=0 for even h); W Bi0; W.
  const Schedule s = make(ScheduleKind::kDualPipe, 4, 8);
  EXPECT_EQ(compute_text(s, 0),
            "F0.0 F0.1 F0.2 F1.4 Bi1.4 W F1.5 F0.3+B1.5 F1.6+B0.0 B1.6 F1.7+B0.1 B1.7 Bi0.2 W "
            "Bi0.3 W");
  // Rank 1 (middle, h=1): F0 F1 twice; the first step-4 iteration unfused; step 6 defers from
  // i=1 on (odd h: before its B1).
  EXPECT_EQ(compute_text(s, 1),
            "F0.0 F1.4 F0.1 F1.5 F0.2 B1.4 F1.6+B0.0 F0.3+B1.5 F1.7+B0.1 B1.6 B0.2 Bi1.7 Bi0.3 W "
            "W");
}

TEST(ScheduleTest, DualPipeRanksMirrorEachOther) {
  // Rank P-1-r runs rank r's program with the chunks swapped, micro-batches m and m + N/2
  // exchanged, and peers mirrored.
  for (int p : {2, 4, 6, 8}) {
    const int n = 2 * p + 4, c = n / 2;
    const Schedule s = make(ScheduleKind::kDualPipe, p, n);
    for (int r = 0; r < p; ++r) {
      const std::vector<Instruction>& a = s.program[r];
      const std::vector<Instruction>& b = s.program[p - 1 - r];
      ASSERT_EQ(a.size(), b.size()) << "P=" << p << " rank " << r;
      for (size_t i = 0; i < a.size(); ++i) {
        Instruction m = a[i];
        auto swap_mb = [c](int mb) { return mb < 0 ? mb : (mb < c ? mb + c : mb - c); };
        if (m.op != Op::kWeight) {
          m.chunk = 1 - m.chunk;
          m.micro_batch = swap_mb(m.micro_batch);
        }
        if (m.op == Op::kForwardBackward) {
          m.chunk_b = 1 - m.chunk_b;
          m.micro_batch_b = swap_mb(m.micro_batch_b);
        }
        if (m.peer >= 0) m.peer = p - 1 - m.peer;
        EXPECT_EQ(to_string(m), to_string(b[i])) << "P=" << p << " rank " << r << " #" << i;
      }
    }
  }
}

TEST(ScheduleTest, DualPipeVHandsOverLocallyAtTheLastRank) {
  for (int p : {1, 2, 4, 8}) {
    const int n = 2 * p + 3;
    const Schedule s = make(ScheduleKind::kDualPipeV, p, n);
    int sends = 0, recvs = 0;
    for (int r = 0; r < p; ++r) {
      for (const Instruction& in : s.program[r]) {
        if (in.op == Op::kSendForward || in.op == Op::kSendBackward) ++sends;
        if (in.op == Op::kRecvForward || in.op == Op::kRecvBackward) ++recvs;
        if (in.peer >= 0) {
          EXPECT_NE(in.peer, r);
        }
      }
    }
    // 2P stages have 2P-1 boundaries; the one at the last rank is local. Each crossing is one
    // forward and one backward transfer per micro-batch.
    EXPECT_EQ(sends, 2 * n * (2 * p - 2)) << "P=" << p;
    EXPECT_EQ(recvs, sends) << "P=" << p;
  }
}

TEST(ScheduleTest, SweepIsValidAndNeverDeadlocks) {
  const Costs cost_sets[] = {
      {},                                                                   // F=1 B=2 W=1 F&B=3
      {.forward_backward = 2.5},                                            // overlap saves time
      {.forward = 1, .backward = 1, .weight = 0.5, .forward_backward = 2},  // B = F
      {.forward = 1.5, .backward = 2, .weight = 0.25, .forward_backward = 3, .p2p = 0.7},
  };
  for (ScheduleKind kind : kAllKinds) {
    for (int p = 1; p <= 10; ++p) {
      for (int n = 1; n <= 4 * p + 3; ++n) {
        const absl::StatusOr<Schedule> s = make_schedule(kind, p, n);
        if (!s.ok()) continue;  // preconditions are tested above
        const std::string where =
            absl::StrCat(std::string(schedule_kind_name(kind)), " P=", p, " N=", n);
        ASSERT_TRUE(validate(*s).ok()) << where << ": " << validate(*s);
        for (const Costs& costs : cost_sets) {
          const absl::StatusOr<Simulation> sim = simulate(*s, costs);
          ASSERT_TRUE(sim.ok()) << where << ": " << sim.status();
        }
      }
    }
  }
  // Spot checks that the sweep above visited the interesting sizes.
  EXPECT_TRUE(make_schedule(ScheduleKind::kDualPipe, 10, 20).ok());
  EXPECT_TRUE(make_schedule(ScheduleKind::kDualPipeV, 10, 20).ok());
}

}  // namespace
}  // namespace fathom::parallel::pipeline
