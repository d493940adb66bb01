// `fathom schedule --kind K --pp P --microbatches N [--cost-f F --cost-b B --cost-w W --cost-fb FB
// --cost-p2p T] [--image out.png] [--width COLS]`: generates a pipeline schedule
// (parallel/pipeline/schedule.h), simulates it (simulator.h) and prints the timeline, the
// makespan, per-rank busy time, bubble and peak activations, and the SPEC table's formulas next
// to the simulated values. --image also writes the timeline as a PNG.
#pragma once

#include <string>
#include <vector>

namespace fathom::launch {

// Exit codes: 0 success, 1 a failure (the image cannot be written), 2 a usage error (unknown
// option, bad number, a schedule precondition such as an odd P for DualPipe).
int schedule_main(const std::vector<std::string>& args);

}  // namespace fathom::launch
