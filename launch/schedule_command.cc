#include "launch/schedule_command.h"

#include <cstdio>
#include <string>

#include "absl/strings/numbers.h"
#include "parallel/pipeline/schedule.h"
#include "parallel/pipeline/simulator.h"
#include "parallel/pipeline/timeline.h"

namespace fathom::launch {
namespace {

namespace pp = parallel::pipeline;

constexpr char kUsage[] =
    "usage: fathom schedule --kind 1f1b|zb1p|dualpipe|dualpipev --pp P --microbatches N\n"
    "                       [--cost-f 1] [--cost-b 2] [--cost-w 1] [--cost-fb 3] [--cost-p2p 0]\n"
    "                       [--image out.png] [--width COLS]\n"
    "Simulates one training step of a pipeline schedule on P ranks with N micro-batches and\n"
    "prints its timeline, the makespan, each rank's busy time, bubble and peak live activations,\n"
    "and the bubble and activation formulas of the SPEC table for comparison. Costs: F forward,\n"
    "B full backward, W weight gradient (an input-only backward costs B - W), F&B a forward\n"
    "overlapped with a backward, p2p the delay of a send. --image writes the timeline as a PNG;\n"
    "--width sets the text timeline's width in columns (default: 4 per unit of the cheapest op).\n";

int usage_error(const std::string& message) {
  std::fprintf(stderr, "fathom schedule: %s\n%s", message.c_str(), kUsage);
  return 2;
}

}  // namespace

int schedule_main(const std::vector<std::string>& args) {
  std::string kind_name, image_path;
  int ranks = 0, micro_batches = 0, width = 0;
  pp::Costs costs;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::printf("%s", kUsage);
      return 0;
    }
    if (a.rfind("--", 0) != 0) return usage_error("unexpected argument '" + a + "'");
    if (i + 1 >= args.size()) return usage_error(a + " needs a value");
    const std::string& value = args[++i];
    auto integer = [&](int* out, int min) { return absl::SimpleAtoi(value, out) && *out >= min; };
    auto cost = [&](double* out) { return absl::SimpleAtod(value, out); };
    if (a == "--kind") {
      kind_name = value;
    } else if (a == "--pp") {
      if (!integer(&ranks, 1)) {
        return usage_error("--pp needs a number of ranks >= 1, got '" + value + "'");
      }
    } else if (a == "--microbatches") {
      if (!integer(&micro_batches, 1)) {
        return usage_error("--microbatches needs a number >= 1, got '" + value + "'");
      }
    } else if (a == "--width") {
      if (!integer(&width, 1)) {
        return usage_error("--width needs a number of columns >= 1, got '" + value + "'");
      }
    } else if (a == "--image") {
      image_path = value;
    } else if (a == "--cost-f" || a == "--cost-b" || a == "--cost-w" || a == "--cost-fb" ||
               a == "--cost-p2p") {
      double* target = a == "--cost-f"    ? &costs.forward
                       : a == "--cost-b"  ? &costs.backward
                       : a == "--cost-w"  ? &costs.weight
                       : a == "--cost-fb" ? &costs.forward_backward
                                          : &costs.p2p;
      if (!cost(target)) return usage_error(a + " needs a number, got '" + value + "'");
    } else {
      return usage_error("unknown option '" + a + "'");
    }
  }
  if (kind_name.empty()) return usage_error("--kind is required");
  if (ranks == 0) return usage_error("--pp is required");
  if (micro_batches == 0) return usage_error("--microbatches is required");
  const absl::StatusOr<pp::ScheduleKind> kind = pp::parse_schedule_kind(kind_name);
  if (!kind.ok()) return usage_error(std::string(kind.status().message()));
  if (const absl::Status s = pp::validate_costs(costs); !s.ok()) {
    return usage_error(std::string(s.message()));
  }
  const absl::StatusOr<pp::Schedule> schedule = pp::make_schedule(*kind, ranks, micro_batches);
  if (!schedule.ok()) return usage_error(std::string(schedule.status().message()));
  const absl::StatusOr<pp::Simulation> sim = pp::simulate(*schedule, costs);
  if (!sim.ok()) {
    // A generated schedule always simulates; reaching this is a bug, not a usage error.
    std::fprintf(stderr, "fathom schedule: %s\n", std::string(sim.status().message()).c_str());
    return 1;
  }

  const std::string name(pp::schedule_kind_name(*kind));
  std::printf(
      "%s: P=%d ranks, N=%d micro-batches, %d stages; costs F=%g B=%g W=%g F&B=%g "
      "p2p=%g\n\n",
      name.c_str(), ranks, micro_batches, schedule->stages, costs.forward, costs.backward,
      costs.weight, costs.forward_backward, costs.p2p);
  std::printf("%s\n", pp::render_text(*schedule, *sim, width).c_str());
  std::printf("makespan %g\n", sim->makespan);
  std::printf("rank  busy      bubble    peak activations\n");
  for (int r = 0; r < ranks; ++r) {
    const pp::RankTimeline& line = sim->ranks[r];
    std::printf("%-5d %-9g %-9g %d\n", r, line.busy, line.bubble, line.peak_activations);
  }
  std::printf("bubble (worst rank): simulated %g, formula %s = %g\n", sim->max_bubble(),
              pp::formula_bubble_text(*kind).c_str(), pp::formula_bubble(*kind, ranks, costs));
  std::printf("peak activations (worst rank): simulated %d, table %s = %d\n",
              sim->max_peak_activations(), pp::formula_peak_activations_text(*kind).c_str(),
              pp::formula_peak_activations(*kind, ranks));
  if (!image_path.empty()) {
    const absl::Status written = pp::write_png(pp::render_image(*schedule, *sim), image_path);
    if (!written.ok()) {
      std::fprintf(stderr, "fathom schedule: %s\n", std::string(written.message()).c_str());
      return 1;
    }
    std::printf("wrote %s\n", image_path.c_str());
  }
  return 0;
}

}  // namespace fathom::launch
