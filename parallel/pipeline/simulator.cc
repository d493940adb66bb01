#include "parallel/pipeline/simulator.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/check.h"

namespace fathom::parallel::pipeline {
namespace {

// A tensor crossing a stage boundary: the activation stage `from` sends forward to from+1, or
// the gradient it sends backward to from-1, of one micro-batch.
struct Flow {
  bool backward = false;
  int from = 0;
  int micro_batch = 0;
  auto operator<=>(const Flow&) const = default;
};

std::string describe(const Flow& f) {
  return f.backward ? absl::StrCat("the gradient of stage ", f.from - 1, " output, micro-batch ",
                                   f.micro_batch)
                    : absl::StrCat("the activation of stage ", f.from, " output, micro-batch ",
                                   f.micro_batch);
}

bool is_send(Op op) { return op == Op::kSendForward || op == Op::kSendBackward; }
bool is_recv(Op op) { return op == Op::kRecvForward || op == Op::kRecvBackward; }

// The flow a send/receive instruction of `rank` carries, and the rank at the other end.
struct Transfer {
  Flow flow;
  int other_stage = 0;  // the stage at the other end
};

Transfer transfer_of(const Schedule& s, int rank, const Instruction& in) {
  const int stage = s.chunk_stage[rank][in.chunk];
  switch (in.op) {
    case Op::kSendForward:
      return {{false, stage, in.micro_batch}, stage + 1};
    case Op::kRecvForward:
      return {{false, stage - 1, in.micro_batch}, stage - 1};
    case Op::kSendBackward:
      return {{true, stage, in.micro_batch}, stage - 1};
    default:  // kRecvBackward
      return {{true, stage + 1, in.micro_batch}, stage + 1};
  }
}

class Validator {
 public:
  explicit Validator(const Schedule& s) : s_(s) {}

  absl::Status run() {
    FATHOM_RETURN_IF_ERROR(check_shape());
    forward_count_.assign(s_.stages, std::vector<int>(s_.micro_batches, 0));
    backward_count_ = forward_count_;
    for (int r = 0; r < s_.ranks; ++r) {
      rank_ = r;
      local_forward_.clear();
      local_backward_.clear();
      posted_.clear();
      int deferred = 0, weights = 0;
      for (index_ = 0; index_ < int(s_.program[r].size()); ++index_) {
        const Instruction& in = s_.program[r][index_];
        FATHOM_RETURN_IF_ERROR(check_operands(in));
        switch (in.op) {
          case Op::kForward:
            FATHOM_RETURN_IF_ERROR(forward(in.chunk, in.micro_batch));
            break;
          case Op::kBackward:
            FATHOM_RETURN_IF_ERROR(backward(in.chunk, in.micro_batch));
            deferred += in.defer_weight;
            break;
          case Op::kForwardBackward:
            FATHOM_RETURN_IF_ERROR(forward(in.chunk, in.micro_batch));
            FATHOM_RETURN_IF_ERROR(backward(in.chunk_b, in.micro_batch_b));
            deferred += in.defer_weight;
            break;
          case Op::kWeight:
            if (++weights > deferred) {
              return error("a W without a deferred backward (the weight-gradient FIFO is empty)");
            }
            break;
          default:
            FATHOM_RETURN_IF_ERROR(transfer(in));
        }
      }
      if (weights != deferred) {
        return absl::InvalidArgumentError(absl::StrCat("pipeline schedule: rank ", r, " defers ",
                                                       deferred, " weight gradients but runs ",
                                                       weights, " W steps"));
      }
    }
    for (int stage = 0; stage < s_.stages; ++stage) {
      for (int m = 0; m < s_.micro_batches; ++m) {
        for (const auto& [count, name] :
             {std::pair{&forward_count_, "forward"}, std::pair{&backward_count_, "backward"}}) {
          if ((*count)[stage][m] != 1) {
            return absl::InvalidArgumentError(
                absl::StrCat("pipeline schedule: the ", name, " of stage ", stage, ", micro-batch ",
                             m, " runs ", (*count)[stage][m], " times instead of once"));
          }
        }
      }
    }
    for (const auto& [flow, ends] : transfers_) {
      if (ends.sends.size() != 1 || ends.recvs.size() != 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("pipeline schedule: ", describe(flow), " is sent ", ends.sends.size(),
                         " times (by ranks ", absl::StrJoin(ends.sends, ","), ") and received ",
                         ends.recvs.size(), " times (by ranks ", absl::StrJoin(ends.recvs, ","),
                         "); each send needs exactly one matching receive"));
      }
    }
    return absl::OkStatus();
  }

 private:
  struct Ends {
    std::vector<int> sends, recvs;
  };

  absl::Status error(const std::string& problem) const {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline schedule: rank ", rank_, ", instruction ", index_, " (",
                     to_string(s_.program[rank_][index_]), "): ", problem));
  }

  absl::Status check_shape() const {
    if (s_.ranks < 1 || s_.micro_batches < 1 || s_.stages < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("pipeline schedule: needs ranks, micro_batches and stages >= 1 (got ",
                       s_.ranks, ", ", s_.micro_batches, ", ", s_.stages, ")"));
    }
    if (int(s_.program.size()) != s_.ranks || int(s_.chunk_stage.size()) != s_.ranks) {
      return absl::InvalidArgumentError(absl::StrCat("pipeline schedule: ", s_.ranks, " ranks but ",
                                                     s_.program.size(), " programs and ",
                                                     s_.chunk_stage.size(), " chunk_stage rows"));
    }
    for (int r = 0; r < s_.ranks; ++r) {
      if (s_.chunk_stage[r].empty() || s_.chunk_stage[r].size() != s_.chunk_stage[0].size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("pipeline schedule: rank ", r, " holds ", s_.chunk_stage[r].size(),
                         " chunks; every rank must hold the same number (>= 1)"));
      }
      for (int stage : s_.chunk_stage[r]) {
        if (stage < 0 || stage >= s_.stages) {
          return absl::InvalidArgumentError(absl::StrCat(
              "pipeline schedule: rank ", r, " holds stage ", stage, " of ", s_.stages));
        }
      }
    }
    for (int stage = 0; stage < s_.stages; ++stage) {
      for (int m = 0; m < s_.micro_batches; ++m) {
        const Location at = s_.locate(stage, m);
        if (at.rank < 0 || at.rank >= s_.ranks || at.chunk < 0 ||
            at.chunk >= s_.chunks_per_rank() || s_.chunk_stage[at.rank][at.chunk] != stage) {
          return absl::InvalidArgumentError(
              absl::StrCat("pipeline schedule: locate(", stage, ", ", m, ") gives rank ", at.rank,
                           " chunk ", at.chunk, ", which does not hold stage ", stage));
        }
      }
    }
    return absl::OkStatus();
  }

  absl::Status check_operands(const Instruction& in) const {
    if (in.op == Op::kWeight) return absl::OkStatus();
    auto bad = [&](int chunk, int m) {
      return chunk < 0 || chunk >= s_.chunks_per_rank() || m < 0 || m >= s_.micro_batches;
    };
    if (bad(in.chunk, in.micro_batch) ||
        (in.op == Op::kForwardBackward && bad(in.chunk_b, in.micro_batch_b))) {
      return error("chunk or micro-batch out of range");
    }
    if ((is_send(in.op) || is_recv(in.op)) && (in.peer < 0 || in.peer >= s_.ranks)) {
      return error("peer out of range");
    }
    return absl::OkStatus();
  }

  absl::Status at_location(int chunk, int m, int stage) const {
    const Location at = s_.locate(stage, m);
    if (at.rank != rank_ || at.chunk != chunk) {
      return error(absl::StrCat("locate() runs stage ", stage, " of micro-batch ", m, " on rank ",
                                at.rank, " chunk ", at.chunk));
    }
    return absl::OkStatus();
  }

  // The input of a compute: computed earlier here (`local`) or received earlier.
  absl::Status has_input(int m, int neighbour, const std::set<std::pair<int, int>>& local,
                         const Flow& flow, std::string_view what) const {
    if (s_.locate(neighbour, m).rank == rank_) {
      if (!local.count({neighbour, m})) {
        return error(absl::StrCat("needs ", std::string(what), " of stage ", neighbour,
                                  " computed earlier on the same rank"));
      }
    } else if (!posted_.count(flow)) {
      return error(absl::StrCat("no earlier receive of ", describe(flow)));
    }
    return absl::OkStatus();
  }

  absl::Status forward(int chunk, int m) {
    const int stage = s_.chunk_stage[rank_][chunk];
    FATHOM_RETURN_IF_ERROR(at_location(chunk, m, stage));
    if (stage > 0) {
      FATHOM_RETURN_IF_ERROR(
          has_input(m, stage - 1, local_forward_, {false, stage - 1, m}, "the forward"));
    }
    ++forward_count_[stage][m];
    local_forward_.insert({stage, m});
    return absl::OkStatus();
  }

  absl::Status backward(int chunk, int m) {
    const int stage = s_.chunk_stage[rank_][chunk];
    FATHOM_RETURN_IF_ERROR(at_location(chunk, m, stage));
    if (!local_forward_.count({stage, m})) return error("backward before its forward");
    if (stage < s_.stages - 1) {
      FATHOM_RETURN_IF_ERROR(
          has_input(m, stage + 1, local_backward_, {true, stage + 1, m}, "the backward"));
    }
    ++backward_count_[stage][m];
    local_backward_.insert({stage, m});
    return absl::OkStatus();
  }

  absl::Status transfer(const Instruction& in) {
    const int stage = s_.chunk_stage[rank_][in.chunk];
    const bool backward = in.op == Op::kSendBackward || in.op == Op::kRecvBackward;
    const Transfer t = transfer_of(s_, rank_, in);
    if (t.other_stage < 0 || t.other_stage >= s_.stages) {
      return error(absl::StrCat("stage ", stage, " has no neighbour in that direction"));
    }
    FATHOM_RETURN_IF_ERROR(at_location(in.chunk, in.micro_batch, stage));
    const int other = s_.locate(t.other_stage, in.micro_batch).rank;
    if (other == rank_) {
      return error("the neighbouring stage is on the same rank: hand over locally, no transfer");
    }
    if (other != in.peer) {
      return error(absl::StrCat("stage ", t.other_stage, " of micro-batch ", in.micro_batch,
                                " is on rank ", other, ", not on peer ", in.peer));
    }
    Ends& ends = transfers_[t.flow];
    if (is_send(in.op)) {
      const auto& produced = backward ? local_backward_ : local_forward_;
      if (!produced.count({stage, in.micro_batch})) {
        return error("sends a tensor before the compute that produces it");
      }
      ends.sends.push_back(rank_);
    } else {
      if (!posted_.insert(t.flow).second) return error("receives the same tensor twice");
      ends.recvs.push_back(rank_);
    }
    return absl::OkStatus();
  }

  const Schedule& s_;
  int rank_ = 0;
  int index_ = 0;
  std::vector<std::vector<int>> forward_count_, backward_count_;
  std::set<std::pair<int, int>> local_forward_, local_backward_;  // (stage, micro-batch)
  std::set<Flow> posted_;
  std::map<Flow, Ends> transfers_;
};

struct RankState {
  size_t pc = 0;
  double clock = 0;
  int live = 0;
  std::deque<std::pair<int, int>> fifo;  // deferred (chunk, micro-batch)
};

std::string flow_waited(const Schedule& s, int rank, const Instruction& in,
                        const std::map<Flow, double>& arrival) {
  // The first input of the compute that has not arrived.
  std::vector<Flow> needs;
  auto add = [&](int chunk, int m, bool backward) {
    const int stage = s.chunk_stage[rank][chunk];
    const int from = backward ? stage + 1 : stage - 1;
    if (from < 0 || from >= s.stages || s.locate(from, m).rank == rank) return;
    needs.push_back({backward, from, m});
  };
  if (in.op == Op::kForward || in.op == Op::kForwardBackward) add(in.chunk, in.micro_batch, false);
  if (in.op == Op::kBackward) add(in.chunk, in.micro_batch, true);
  if (in.op == Op::kForwardBackward) add(in.chunk_b, in.micro_batch_b, true);
  for (const Flow& f : needs) {
    if (!arrival.count(f)) {
      const int from_rank = s.locate(f.from, f.micro_batch).rank;
      return absl::StrCat(describe(f), " from rank ", from_rank);
    }
  }
  return "nothing";
}

}  // namespace

absl::Status validate_costs(const Costs& c) {
  for (const auto& [value, name] :
       {std::pair{c.forward, "F"}, std::pair{c.backward, "B"}, std::pair{c.weight, "W"},
        std::pair{c.forward_backward, "F&B"}, std::pair{c.p2p, "p2p"}}) {
    if (!std::isfinite(value) || value < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("pipeline cost ", name, " = ", value, " must be finite and >= 0"));
    }
  }
  if (c.weight > c.backward || c.weight > c.forward_backward) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline cost W = ", c.weight, " must not exceed B = ", c.backward,
                     " or F&B = ", c.forward_backward, " (an input-only backward costs B - W)"));
  }
  return absl::OkStatus();
}

double Simulation::max_bubble() const {
  double worst = 0;
  for (const RankTimeline& r : ranks) worst = std::max(worst, r.bubble);
  return worst;
}

int Simulation::max_peak_activations() const {
  int worst = 0;
  for (const RankTimeline& r : ranks) worst = std::max(worst, r.peak_activations);
  return worst;
}

absl::Status validate(const Schedule& schedule) { return Validator(schedule).run(); }

absl::StatusOr<Simulation> simulate(const Schedule& s, const Costs& costs) {
  FATHOM_RETURN_IF_ERROR(validate_costs(costs));
  FATHOM_RETURN_IF_ERROR(validate(s));

  std::vector<RankState> state(s.ranks);
  Simulation sim;
  sim.ranks.resize(s.ranks);
  std::map<Flow, double> arrival;  // when a sent tensor is usable at its receiver
  // End times of computes, for tensors handed over on the same rank.
  std::map<std::pair<int, int>, double> forward_end, backward_end;  // (stage, micro-batch)

  // The time the input of one half of a compute is available, or nullopt if not yet sent.
  auto input_ready = [&](int rank, int chunk, int m, bool backward) -> std::optional<double> {
    const int stage = s.chunk_stage[rank][chunk];
    const int from = backward ? stage + 1 : stage - 1;
    if (from < 0 || from >= s.stages) return 0.0;
    if (s.locate(from, m).rank == rank) {
      return backward ? backward_end.at({from, m}) : forward_end.at({from, m});
    }
    const auto it = arrival.find({backward, from, m});
    if (it == arrival.end()) return std::nullopt;
    return it->second;
  };

  // Runs rank r's next instruction if its inputs are there; false if it must wait.
  auto step = [&](int r) -> bool {
    RankState& st = state[r];
    RankTimeline& line = sim.ranks[r];
    const Instruction& in = s.program[r][st.pc];
    if (is_recv(in.op)) {
      ++st.pc;
      return true;
    }
    if (is_send(in.op)) {
      arrival[transfer_of(s, r, in).flow] = st.clock + costs.p2p;
      ++st.pc;
      return true;
    }
    double ready = st.clock;
    double cost = 0;
    int adds = 0;
    TimelineEvent event{.instruction = in};
    auto need = [&](int chunk, int m, bool backward) {
      const std::optional<double> t = input_ready(r, chunk, m, backward);
      if (!t) return false;
      ready = std::max(ready, *t);
      return true;
    };
    switch (in.op) {
      case Op::kForward:
        if (!need(in.chunk, in.micro_batch, false)) return false;
        cost = costs.forward;
        adds = 1;
        break;
      case Op::kBackward:
        if (!need(in.chunk, in.micro_batch, true)) return false;
        cost = in.defer_weight ? costs.backward - costs.weight : costs.backward;
        break;
      case Op::kForwardBackward:
        if (!need(in.chunk, in.micro_batch, false) || !need(in.chunk_b, in.micro_batch_b, true)) {
          return false;
        }
        cost = in.defer_weight ? costs.forward_backward - costs.weight : costs.forward_backward;
        adds = 1;
        break;
      default:  // kWeight
        cost = costs.weight;
        event.weight_chunk = st.fifo.front().first;
        event.weight_micro_batch = st.fifo.front().second;
        st.fifo.pop_front();
        break;
    }
    event.start = ready;
    event.end = ready + cost;
    st.clock = event.end;
    line.busy += cost;
    st.live += adds;
    line.peak_activations = std::max(line.peak_activations, st.live);
    if (in.op == Op::kForward || in.op == Op::kForwardBackward) {
      forward_end[{s.chunk_stage[r][in.chunk], in.micro_batch}] = event.end;
    }
    if (in.op == Op::kBackward || in.op == Op::kForwardBackward) {
      const int chunk = in.op == Op::kBackward ? in.chunk : in.chunk_b;
      const int m = in.op == Op::kBackward ? in.micro_batch : in.micro_batch_b;
      backward_end[{s.chunk_stage[r][chunk], m}] = event.end;
      if (in.defer_weight) {
        st.fifo.emplace_back(chunk, m);
      } else {
        --st.live;
      }
    }
    if (in.op == Op::kWeight) --st.live;
    line.events.push_back(event);
    ++st.pc;
    return true;
  };

  // Each rank runs until it must wait; the times do not depend on the order the ranks are
  // visited in, only on the data dependencies.
  for (;;) {
    bool progress = false, done = true;
    for (int r = 0; r < s.ranks; ++r) {
      while (state[r].pc < s.program[r].size() && step(r)) progress = true;
      done = done && state[r].pc == s.program[r].size();
    }
    if (done) break;
    if (!progress) {
      std::vector<std::string> stuck;
      for (int r = 0; r < s.ranks; ++r) {
        if (state[r].pc == s.program[r].size()) continue;
        const Instruction& in = s.program[r][state[r].pc];
        stuck.push_back(absl::StrCat("rank ", r, " waits at instruction ", state[r].pc, " (",
                                     to_string(in), ") for ", flow_waited(s, r, in, arrival)));
      }
      return absl::FailedPreconditionError(
          absl::StrCat("pipeline schedule ", std::string(schedule_kind_name(s.kind)),
                       " deadlocks: ", absl::StrJoin(stuck, "; ")));
    }
  }

  for (const RankState& st : state) sim.makespan = std::max(sim.makespan, st.clock);
  for (RankTimeline& line : sim.ranks) line.bubble = sim.makespan - line.busy;
  return sim;
}

double formula_bubble(ScheduleKind kind, int ranks, const Costs& c) {
  const double p = ranks;
  switch (kind) {
    case ScheduleKind::k1F1B:
      return (p - 1) * (c.forward + c.backward);
    case ScheduleKind::kZB1P:
      return (p - 1) * (c.forward + c.backward - 2 * c.weight);
    case ScheduleKind::kDualPipe:
      return (p / 2 - 1) * (c.forward_backward + c.backward - 3 * c.weight);
    case ScheduleKind::kDualPipeV:
      return (p - 1) * (c.forward_backward + c.backward - 3 * c.weight);
  }
  return 0;
}

std::string formula_bubble_text(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::k1F1B:
      return "(P-1)(F+B)";
    case ScheduleKind::kZB1P:
      return "(P-1)(F+B-2W)";
    case ScheduleKind::kDualPipe:
      return "(P/2-1)(F&B+B-3W)";
    case ScheduleKind::kDualPipeV:
      return "(S/2-1)(F&B+B-3W), S = 2P stages";
  }
  return "";
}

int formula_peak_activations(ScheduleKind kind, int ranks) {
  switch (kind) {
    case ScheduleKind::k1F1B:
    case ScheduleKind::kZB1P:
      return ranks;
    case ScheduleKind::kDualPipe:
      return ranks + 1;
    case ScheduleKind::kDualPipeV:
      return 2 * ranks + 1;
  }
  return 0;
}

std::string formula_peak_activations_text(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::k1F1B:
    case ScheduleKind::kZB1P:
      return "P";
    case ScheduleKind::kDualPipe:
      return "P+1";
    case ScheduleKind::kDualPipeV:
      return "S+1 half-size stages, S = 2P";
  }
  return "";
}

}  // namespace fathom::parallel::pipeline
