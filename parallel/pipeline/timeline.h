// Drawings of a simulated pipeline schedule (simulator.h): text for a terminal and a PNG image,
// one row per rank, time running left to right, like the diagrams of the DualPipe reference.
//
// Cells: F forward, B backward (full, or input-only when its weight gradient is deferred: then
// it is shorter, B - W), W a deferred weight-gradient step, and a forward+backward pair (F&B)
// drawn as one cell holding both micro-batch ids. Each cell names its micro-batch (a W names the
// backward it finishes). Chunk 1 (DualPipe: the stream that enters at rank P-1; DualPipeV: the
// way back from the last rank) is drawn in lower case in text and in a lighter shade in images.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "parallel/pipeline/schedule.h"
#include "parallel/pipeline/simulator.h"

namespace fathom::parallel::pipeline {

// The text drawing: a time ruler, one line per rank ("rank 0 |F0 |F1 ...", '.' = idle), and a
// legend. `columns`: characters for the whole makespan; 0 picks 4 per unit of the cheapest
// compute, at most 400. Labels that do not fit their cell are cut. `simulation` must come from
// simulate(schedule, ...).
std::string render_text(const Schedule& schedule, const Simulation& simulation, int columns = 0);

// An 8-bit RGB raster, rows top to bottom, 3 bytes per pixel.
struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;  // width * height * 3

  // The colour at (x, y) as 0xRRGGBB.
  uint32_t pixel(int x, int y) const;
};

// Geometry and colours of the image drawing.
struct ImageStyle {
  int pixels_per_unit = 24;  // pixels per unit of time
  int row_height = 24;       // pixels per rank row
  int row_gap = 4;
  int margin = 8;
  int label_width = 24;         // left of the time axis, for the rank numbers
  uint32_t forward = 0xF2A93B;  // chunk 0 colours; chunk 1 uses a lighter shade of each
  uint32_t backward = 0x4CAF50;
  uint32_t weight = 0x5B8DEF;
  uint32_t background = 0xFFFFFF;
};

// The lighter shade used for chunk 1 (half-way to white).
uint32_t lighter(uint32_t colour);

// Draws the simulation: rank r's row starts at y = margin + r * (row_height + row_gap), an event
// from time t0 to t1 covers x in [label_width + margin + t0 * pixels_per_unit, ... t1 * ...).
// Micro-batch ids are drawn in a built-in 3x5 pixel font where they fit.
Image render_image(const Schedule& schedule, const Simulation& simulation,
                   const ImageStyle& style = {});

// Writes `image` as a PNG file (libpng). Returns an error naming `path` if it cannot be written.
absl::Status write_png(const Image& image, const std::string& path);

}  // namespace fathom::parallel::pipeline
