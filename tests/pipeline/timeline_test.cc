#include "parallel/pipeline/timeline.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "parallel/pipeline/schedule.h"
#include "parallel/pipeline/simulator.h"

namespace fathom::parallel::pipeline {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

struct Fixture {
  Schedule schedule;
  Simulation sim;
};

Fixture simulated(ScheduleKind kind, int p, int n, const Costs& costs = {}) {
  absl::StatusOr<Schedule> s = make_schedule(kind, p, n);
  EXPECT_TRUE(s.ok()) << s.status();
  absl::StatusOr<Simulation> sim = simulate(*s, costs);
  EXPECT_TRUE(sim.ok()) << sim.status();
  return {*std::move(s), *std::move(sim)};
}

std::vector<std::string> rank_rows(const std::string& text) {
  std::vector<std::string> rows;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, "rank ")) rows.emplace_back(line);
  }
  return rows;
}

TEST(TimelineTextTest, OneRowPerRankWithEveryOpLabelledAtItsTime) {
  const Fixture f = simulated(ScheduleKind::kDualPipe, 4, 8);
  // Auto width: 4 columns per unit of the cheapest op (1), so an event at time t starts at
  // column 4t after the 9-character "rank N   " prefix.
  const std::string text = render_text(f.schedule, f.sim);
  const std::vector<std::string> rows = rank_rows(text);
  ASSERT_EQ(rows.size(), 4u) << text;
  const size_t prefix = 9;
  for (int r = 0; r < 4; ++r) {
    EXPECT_THAT(rows[r], StartsWith("rank " + std::to_string(r)));
    EXPECT_EQ(rows[r].size(), prefix + size_t(4 * f.sim.makespan));
    for (const TimelineEvent& e : f.sim.ranks[r].events) {
      const Instruction& in = e.instruction;
      std::string label;
      auto letter = [](char c, int chunk) { return std::string(1, chunk ? c + ('a' - 'A') : c); };
      switch (in.op) {
        case Op::kForward:
          label = letter('F', in.chunk) + std::to_string(in.micro_batch);
          break;
        case Op::kBackward:
          label = letter('B', in.chunk) + std::to_string(in.micro_batch);
          break;
        case Op::kWeight:
          label = letter('W', e.weight_chunk) + std::to_string(e.weight_micro_batch);
          break;
        default:
          label = letter('F', in.chunk) + std::to_string(in.micro_batch) + "+" +
                  letter('B', in.chunk_b) + std::to_string(in.micro_batch_b);
      }
      const size_t column = prefix + size_t(std::lround(4 * e.start));
      EXPECT_EQ(rows[r].substr(column, label.size() + 1), "|" + label)
          << "rank " << r << " " << to_string(in) << "\n"
          << text;
    }
  }
  // Rank 0: steps 1-3 of DualPipe, then the first overlapped pair.
  EXPECT_THAT(rows[0], StartsWith("rank 0   |F0 |F1 |F2 |f4 |b4 |w4 |f5 |F3+b5 "));
  EXPECT_THAT(text, HasSubstr("f/b/w: chunk 1, the stream entering at the last rank"));
}

TEST(TimelineTextTest, FixedWidthAndIdleColumns) {
  const Fixture f = simulated(ScheduleKind::k1F1B, 4, 4);
  const std::vector<std::string> rows = rank_rows(render_text(f.schedule, f.sim, 60));
  ASSERT_EQ(rows.size(), 4u);
  for (const std::string& row : rows) EXPECT_EQ(row.size(), 9u + 60);
  // The last rank is idle for 3 forwards of the 21 time units (60 columns) before its first op;
  // a cell of 2.9 columns keeps only the start of its label.
  EXPECT_DOUBLE_EQ(f.sim.makespan, 21);
  const std::string idle(size_t(std::lround(3 * 60 / 21.0)), '.');
  EXPECT_THAT(rows[3], StartsWith("rank 3   " + idle + "|F|B0"));
}

TEST(TimelineImageTest, ColoursAndGeometry) {
  const Fixture f = simulated(ScheduleKind::kDualPipe, 4, 8);
  const ImageStyle style;
  const Image image = render_image(f.schedule, f.sim, style);
  const int left = style.margin + style.label_width;
  EXPECT_EQ(image.width, left + int(f.sim.makespan) * style.pixels_per_unit + style.margin);
  EXPECT_EQ(image.height, 2 * style.margin + 4 * style.row_height + 3 * style.row_gap);
  ASSERT_EQ(image.rgb.size(), size_t(image.width) * image.height * 3);

  auto row_y = [&](int r) { return style.margin + r * (style.row_height + style.row_gap) + 3; };
  auto x_at = [&](double t) { return left + int(t * style.pixels_per_unit) + 2; };
  // Rank 0 begins with a chunk-0 forward; the first chunk-1 forward (f4) is lighter.
  const std::vector<TimelineEvent>& events = f.sim.ranks[0].events;
  ASSERT_EQ(to_string(events[0].instruction), "F0.0");
  ASSERT_EQ(to_string(events[3].instruction), "F1.4");
  EXPECT_EQ(image.pixel(x_at(events[0].start), row_y(0)), style.forward);
  EXPECT_EQ(image.pixel(x_at(events[3].start), row_y(0)), lighter(style.forward));
  EXPECT_EQ(lighter(0x000000), 0x808080u);
  // Rank 1 waits for its first input at time 0; rank 0's fifth op is an input-only backward.
  EXPECT_EQ(image.pixel(x_at(0), row_y(1)), style.background);
  ASSERT_EQ(to_string(events[4].instruction), "Bi1.4");
  EXPECT_EQ(image.pixel(x_at(events[4].start), row_y(0)), lighter(style.backward));
  // A W and an F&B pair: forward colour on the left half, backward colour on the right.
  ASSERT_EQ(events[5].instruction.op, Op::kWeight);
  EXPECT_EQ(image.pixel(x_at(events[5].start), row_y(0)), lighter(style.weight));
  ASSERT_EQ(to_string(events[7].instruction), "F0.3+B1.5");
  EXPECT_EQ(image.pixel(x_at(events[7].start) + 1, row_y(0)), style.forward);
  EXPECT_EQ(image.pixel(x_at(events[7].end) - 6, row_y(0)), lighter(style.backward));
}

TEST(TimelineImageTest, WritesAValidPng) {
  const Fixture f = simulated(ScheduleKind::kDualPipeV, 2, 4);
  const Image image = render_image(f.schedule, f.sim);
  const std::string path = ::testing::TempDir() + "/fathom_timeline_test.png";
  ASSERT_TRUE(write_png(image, path).ok());
  std::ifstream in(path, std::ios::binary);
  const std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)),
                                         std::istreambuf_iterator<char>());
  ASSERT_GT(bytes.size(), 33u);
  const unsigned char signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  EXPECT_TRUE(std::equal(signature, signature + 8, bytes.begin()));
  EXPECT_EQ(std::string(bytes.begin() + 12, bytes.begin() + 16), "IHDR");
  auto be32 = [&](size_t at) {
    return uint32_t(bytes[at]) << 24 | uint32_t(bytes[at + 1]) << 16 |
           uint32_t(bytes[at + 2]) << 8 | bytes[at + 3];
  };
  EXPECT_EQ(be32(16), uint32_t(image.width));
  EXPECT_EQ(be32(20), uint32_t(image.height));
  EXPECT_EQ(bytes[24], 8);  // bit depth
  EXPECT_EQ(bytes[25], 2);  // colour type RGB
  EXPECT_EQ(std::string(bytes.end() - 8, bytes.end() - 4), "IEND");
}

TEST(TimelineImageTest, UnwritablePathNamesIt) {
  const Fixture f = simulated(ScheduleKind::k1F1B, 2, 2);
  const absl::Status status =
      write_png(render_image(f.schedule, f.sim), "/nonexistent-dir/timeline.png");
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("/nonexistent-dir/timeline.png"));
}

}  // namespace
}  // namespace fathom::parallel::pipeline
