#include "parallel/pipeline/timeline.h"

#include <png.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/check.h"

namespace fathom::parallel::pipeline {
namespace {

constexpr int kMaxAutoColumns = 400;

// "F3", "b12", "W3", "F3+b12": the op letter (lower case for chunk 1) and the micro-batch.
std::string label(const TimelineEvent& e) {
  const Instruction& in = e.instruction;
  auto part = [](char letter, int chunk, int m) {
    return absl::StrCat(std::string(1, chunk == 1 ? char(std::tolower(letter)) : letter), m);
  };
  switch (in.op) {
    case Op::kForward:
      return part('F', in.chunk, in.micro_batch);
    case Op::kBackward:
      return part('B', in.chunk, in.micro_batch);
    case Op::kWeight:
      return part('W', e.weight_chunk, e.weight_micro_batch);
    case Op::kForwardBackward:
      return absl::StrCat(part('F', in.chunk, in.micro_batch), "+",
                          part('B', in.chunk_b, in.micro_batch_b));
    default:
      return "?";
  }
}

std::string chunk_one_meaning(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::kDualPipe:
      return "chunk 1, the stream entering at the last rank";
    case ScheduleKind::kDualPipeV:
      return "chunk 1, the way back from the last rank";
    default:
      return "unused: one chunk per rank";
  }
}

// A tick spacing of 1, 2 or 5 times a power of ten, at least `min_columns` apart.
double tick_step(double columns_per_unit, int min_columns) {
  for (double scale = 1e-3;; scale *= 10) {
    for (double m : {1.0, 2.0, 5.0}) {
      if (m * scale * columns_per_unit >= min_columns) return m * scale;
    }
  }
}

// 3x5 pixel digits, one row per byte, the three low bits left to right.
constexpr uint8_t kDigits[10][5] = {
    {7, 5, 5, 5, 7}, {2, 6, 2, 2, 7}, {7, 1, 7, 4, 7}, {7, 1, 3, 1, 7}, {5, 5, 7, 1, 1},
    {7, 4, 7, 1, 7}, {7, 4, 7, 5, 7}, {7, 1, 2, 2, 2}, {7, 5, 7, 5, 7}, {7, 5, 7, 1, 7},
};

class Canvas {
 public:
  explicit Canvas(Image& image) : image_(image) {}

  void fill(int x0, int y0, int x1, int y1, uint32_t colour) {
    x0 = std::max(x0, 0);
    y0 = std::max(y0, 0);
    x1 = std::min(x1, image_.width);
    y1 = std::min(y1, image_.height);
    for (int y = y0; y < y1; ++y) {
      for (int x = x0; x < x1; ++x) {
        uint8_t* p = &image_.rgb[(size_t(y) * image_.width + x) * 3];
        p[0] = uint8_t(colour >> 16);
        p[1] = uint8_t(colour >> 8);
        p[2] = uint8_t(colour);
      }
    }
  }

  void frame(int x0, int y0, int x1, int y1, int thickness, uint32_t colour) {
    fill(x0, y0, x1, y0 + thickness, colour);
    fill(x0, y1 - thickness, x1, y1, colour);
    fill(x0, y0, x0 + thickness, y1, colour);
    fill(x1 - thickness, y0, x1, y1, colour);
  }

  // Draws the decimal `number` centred in the box, at the largest scale (2 or 1) that fits.
  void number(int number, int x0, int y0, int x1, int y1, uint32_t colour) {
    const std::string digits = std::to_string(number);
    const int n = int(digits.size());
    for (int scale : {2, 1}) {
      const int w = (4 * n - 1) * scale, h = 5 * scale;
      if (w > x1 - x0 - 2 || h > y1 - y0 - 2) continue;
      const int left = x0 + (x1 - x0 - w) / 2, top = y0 + (y1 - y0 - h) / 2;
      for (int i = 0; i < n; ++i) {
        const uint8_t* glyph = kDigits[digits[i] - '0'];
        for (int row = 0; row < 5; ++row) {
          for (int col = 0; col < 3; ++col) {
            if (glyph[row] & (4 >> col)) {
              const int x = left + (4 * i + col) * scale, y = top + row * scale;
              fill(x, y, x + scale, y + scale, colour);
            }
          }
        }
      }
      return;
    }
  }

 private:
  Image& image_;
};

}  // namespace

std::string render_text(const Schedule& schedule, const Simulation& sim, int columns) {
  FATHOM_CHECK_EQ(int(sim.ranks.size()), schedule.ranks);
  const double makespan = sim.makespan > 0 ? sim.makespan : 1;
  if (columns <= 0) {
    double shortest = 0;
    for (const RankTimeline& rank : sim.ranks) {
      for (const TimelineEvent& e : rank.events) {
        const double d = e.end - e.start;
        if (d > 0 && (shortest == 0 || d < shortest)) shortest = d;
      }
    }
    if (shortest == 0) shortest = makespan;
    columns = std::min(kMaxAutoColumns, int(std::ceil(makespan * 4 / shortest)));
  }
  const double k = columns / makespan;  // columns per unit of time
  const size_t prefix = absl::StrFormat("rank %-3d ", 0).size();

  std::string out;
  // Ruler.
  std::string ruler(prefix + columns + 8, ' ');
  const double step = tick_step(k, 8);
  for (double t = 0; t <= makespan + 1e-9; t += step) {
    const std::string tick = absl::StrFormat("%g", t);
    const size_t at = prefix + size_t(std::lround(t * k));
    if (at + tick.size() <= ruler.size()) ruler.replace(at, tick.size(), tick);
  }
  while (!ruler.empty() && ruler.back() == ' ') ruler.pop_back();
  absl::StrAppend(&out, "time", ruler.substr(4), "\n");

  for (int r = 0; r < schedule.ranks; ++r) {
    std::string row(columns, '.');
    for (const TimelineEvent& e : sim.ranks[r].events) {
      const int c0 = std::min(columns, int(std::lround(e.start * k)));
      int c1 = std::min(columns, int(std::lround(e.end * k)));
      if (c1 <= c0 && c0 < columns) c1 = c0 + 1;
      const std::string text = absl::StrCat("|", label(e));
      for (int c = c0; c < c1; ++c) {
        row[c] = size_t(c - c0) < text.size() ? text[c - c0] : ' ';
      }
    }
    absl::StrAppend(&out, absl::StrFormat("rank %-3d ", r), row, "\n");
  }
  absl::StrAppend(
      &out, "F/B/W: chunk 0; f/b/w: ", chunk_one_meaning(schedule.kind),
      ". F3+b12: forward of micro-batch 3 overlapped with the backward of 12. A B shorter than\n"
      "the others computes the input gradient only; its W (named by micro-batch) comes later. "
      "'.' idle; ",
      absl::StrFormat("%.3g", 1 / k), " time units per column.\n");
  return out;
}

uint32_t Image::pixel(int x, int y) const {
  FATHOM_CHECK(x >= 0 && x < width && y >= 0 && y < height) << "pixel (" << x << ", " << y << ")";
  const uint8_t* p = &rgb[(size_t(y) * width + x) * 3];
  return uint32_t(p[0]) << 16 | uint32_t(p[1]) << 8 | p[2];
}

uint32_t lighter(uint32_t colour) {
  uint32_t out = 0;
  for (int shift : {16, 8, 0}) {
    const uint32_t c = (colour >> shift) & 0xFF;
    out |= ((c + 255 + 1) / 2) << shift;
  }
  return out;
}

Image render_image(const Schedule& schedule, const Simulation& sim, const ImageStyle& style) {
  FATHOM_CHECK_EQ(int(sim.ranks.size()), schedule.ranks);
  FATHOM_CHECK(style.pixels_per_unit > 0 && style.row_height > 0) << "bad image style";
  const int left = style.margin + style.label_width;
  Image image;
  image.width = left + int(std::ceil(sim.makespan * style.pixels_per_unit)) + style.margin;
  image.height = 2 * style.margin + schedule.ranks * style.row_height +
                 std::max(0, schedule.ranks - 1) * style.row_gap;
  image.rgb.assign(size_t(image.width) * image.height * 3, 0);
  Canvas canvas(image);
  canvas.fill(0, 0, image.width, image.height, style.background);
  constexpr uint32_t kInk = 0x202020;

  auto shade = [](uint32_t colour, int chunk) { return chunk == 1 ? lighter(colour) : colour; };
  auto x_of = [&](double t) { return left + int(std::lround(t * style.pixels_per_unit)); };
  for (int r = 0; r < schedule.ranks; ++r) {
    const int y0 = style.margin + r * (style.row_height + style.row_gap);
    const int y1 = y0 + style.row_height;
    canvas.number(r, style.margin, y0, left, y1, kInk);
    for (const TimelineEvent& e : sim.ranks[r].events) {
      const Instruction& in = e.instruction;
      const int x0 = x_of(e.start), x1 = std::max(x_of(e.end), x0 + 1);
      switch (in.op) {
        case Op::kForward:
        case Op::kBackward: {
          const uint32_t base = in.op == Op::kForward ? style.forward : style.backward;
          canvas.fill(x0, y0, x1, y1, shade(base, in.chunk));
          canvas.frame(x0, y0, x1, y1, 1, kInk);
          canvas.number(in.micro_batch, x0, y0, x1, y1, kInk);
          break;
        }
        case Op::kWeight:
          canvas.fill(x0, y0, x1, y1, shade(style.weight, e.weight_chunk));
          canvas.frame(x0, y0, x1, y1, 1, kInk);
          canvas.number(e.weight_micro_batch, x0, y0, x1, y1, kInk);
          break;
        case Op::kForwardBackward: {
          // Two cells in one thick frame, as in the DualPipe reference's diagram.
          const int xm = (x0 + x1) / 2;
          canvas.fill(x0, y0, xm, y1, shade(style.forward, in.chunk));
          canvas.fill(xm, y0, x1, y1, shade(style.backward, in.chunk_b));
          canvas.fill(xm, y0, xm + 1, y1, kInk);
          canvas.frame(x0, y0, x1, y1, 2, kInk);
          canvas.number(in.micro_batch, x0, y0, xm, y1, kInk);
          canvas.number(in.micro_batch_b, xm, y0, x1, y1, kInk);
          break;
        }
        default:
          break;
      }
    }
  }
  return image;
}

absl::Status write_png(const Image& image, const std::string& path) {
  if (image.width <= 0 || image.height <= 0 ||
      image.rgb.size() != size_t(image.width) * image.height * 3) {
    return absl::InvalidArgumentError(absl::StrCat("cannot write ", path, ": empty or malformed ",
                                                   image.width, "x", image.height, " image"));
  }
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  png.width = image.width;
  png.height = image.height;
  png.format = PNG_FORMAT_RGB;
  if (!png_image_write_to_file(&png, path.c_str(), /*convert_to_8bit=*/0, image.rgb.data(),
                               /*row_stride=*/image.width * 3, /*colormap=*/nullptr)) {
    const std::string message = png.message;
    png_image_free(&png);
    return absl::InternalError(absl::StrCat("cannot write PNG ", path, ": ", message));
  }
  return absl::OkStatus();
}

}  // namespace fathom::parallel::pipeline
