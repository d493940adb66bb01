#include "parallel/pipeline/executor.h"

#include <chrono>
#include <exception>
#include <thread>
#include <utility>

#include "kernels/check.h"

namespace fathom::parallel::pipeline {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// MPI guarantees tags up to 32767.
constexpr int kMaxTag = 32767;

}  // namespace

PipelineExecutor::PipelineExecutor(const Schedule& schedule, int rank, Communicator& pp,
                                   std::vector<StageWorker*> chunks, ExecutorOptions options)
    : schedule_(schedule),
      rank_(rank),
      pp_(pp),
      chunks_(std::move(chunks)),
      options_(std::move(options)) {
  FATHOM_CHECK(pp.size() == schedule.ranks && rank >= 0 && rank < schedule.ranks)
      << "PipelineExecutor: rank " << rank << " of a pp group of " << pp.size()
      << " for a schedule of " << schedule.ranks << " ranks";
  FATHOM_CHECK(static_cast<int>(chunks_.size()) == schedule.chunks_per_rank())
      << "PipelineExecutor: " << chunks_.size() << " chunks given, the "
      << schedule_kind_name(schedule.kind) << " schedule places " << schedule.chunks_per_rank()
      << " per rank";
  FATHOM_CHECK(!options_.boundary_shape.empty())
      << "PipelineExecutor: boundary_shape must be set";
  FATHOM_CHECK(tag(schedule.stages - 1, schedule.micro_batches - 1, kGradient) <= kMaxTag)
      << "PipelineExecutor: " << schedule.micro_batches << " micro-batches x " << schedule.stages
      << " stages exceed the message tags MPI guarantees";
  if (options_.overlap && options_.device.is_cuda()) {
    side_stream_ = cuda::create_stream(options_.device.index);
  }
}

PipelineExecutor::~PipelineExecutor() {
  if (side_stream_ != nullptr) cuda::destroy_stream(side_stream_);
}

int PipelineExecutor::tag(int stage, int micro_batch, Direction direction) const {
  return (micro_batch * schedule_.stages + stage) * 2 + direction;
}

void PipelineExecutor::post_receive(const Instruction& in, Direction direction) {
  const int stage = schedule_.chunk_stage[rank_][in.chunk];
  Pending pending;
  pending.tensor = Tensor::empty(options_.boundary_shape, DType::kF32, options_.device);
  pending.work = pp_.recv(pending.tensor, in.peer, tag(stage, in.micro_batch, direction));
  auto& into = direction == kActivation ? activations_ : gradients_;
  const bool fresh = into.emplace(Key{stage, in.micro_batch}, std::move(pending)).second;
  FATHOM_CHECK(fresh) << "pipeline: " << to_string(in) << " receives a tensor twice";
}

void PipelineExecutor::post_send(const Instruction& in, Direction direction) {
  const int stage = schedule_.chunk_stage[rank_][in.chunk];
  const int to = direction == kActivation ? stage + 1 : stage - 1;
  auto& outgoing = outgoing_[direction];
  auto it = outgoing.find(Key{to, in.micro_batch});
  FATHOM_CHECK(it != outgoing.end())
      << "pipeline rank " << rank_ << ": " << to_string(in) << " sends a tensor not computed yet";
  WorkHandle work = pp_.send(it->second, in.peer, tag(to, in.micro_batch, direction));
  sends_.emplace_back(std::move(it->second), std::move(work));
  outgoing.erase(it);
}

PipelineExecutor::Task PipelineExecutor::prepare(int chunk, int micro_batch, bool backward,
                                                 bool defer, ExecutorStats& stats) {
  FATHOM_CHECK(chunk >= 0 && chunk < static_cast<int>(chunks_.size()))
      << "pipeline rank " << rank_ << ": chunk " << chunk << " out of range";
  Task task;
  task.chunk = chunk;
  task.stage = schedule_.chunk_stage[rank_][chunk];
  task.micro_batch = micro_batch;
  task.backward = backward;
  task.defer = defer;
  const bool at_end = backward ? task.stage + 1 == schedule_.stages : task.stage == 0;
  if (at_end) return task;
  auto& from = backward ? gradients_ : activations_;
  auto it = from.find(Key{task.stage, micro_batch});
  FATHOM_CHECK(it != from.end())
      << "pipeline rank " << rank_ << ": " << (backward ? "backward" : "forward") << " of stage "
      << task.stage << ", micro-batch " << micro_batch << " has no "
      << (backward ? "output gradient" : "input") << " (no receive posted, no local producer)";
  if (it->second.work) {
    const auto start = Clock::now();
    it->second.work->wait();
    stats.receive_wait_seconds += seconds_since(start);
  }
  task.input = std::move(it->second.tensor);
  from.erase(it);
  return task;
}

void PipelineExecutor::compute(Task& task) {
  const auto start = Clock::now();
  StageWorker& worker = *chunks_[task.chunk];
  if (task.backward) {
    task.output = worker.backward(task.micro_batch, task.input, task.defer ? &store_ : nullptr);
  } else {
    task.output = worker.forward(task.micro_batch, task.input);
  }
  task.seconds = seconds_since(start);
}

void PipelineExecutor::deliver(Task& task) {
  if (task.backward && task.defer) store_.flush();
  const int next = task.backward ? task.stage - 1 : task.stage + 1;
  if (next < 0 || next >= schedule_.stages) return;
  FATHOM_CHECK(task.output.defined())
      << "pipeline rank " << rank_ << ": stage " << task.stage << " produced no "
      << (task.backward ? "input gradient" : "output") << " for micro-batch " << task.micro_batch;
  const Key key{next, task.micro_batch};
  if (schedule_.locate(next, task.micro_batch).rank == rank_) {
    auto& local = task.backward ? gradients_ : activations_;
    local[key] = Pending{std::move(task.output), nullptr};
  } else {
    outgoing_[task.backward ? kGradient : kActivation][key] = std::move(task.output);
  }
}

void PipelineExecutor::forward_backward(const Instruction& in, ExecutorStats& stats) {
  Task f = prepare(in.chunk, in.micro_batch, /*backward=*/false, false, stats);
  Task b = prepare(in.chunk_b, in.micro_batch_b, /*backward=*/true, in.defer_weight, stats);
  const auto start = Clock::now();
  if (options_.overlap) {
    const bool gpu = options_.device.is_cuda();
    const int device = options_.device.index;
    // The forward's inputs were produced on this thread's stream.
    if (gpu) cuda::synchronize_stream(cuda::current_stream(device));
    std::exception_ptr failure;
    std::thread forward_thread([&] {
      try {
        if (gpu) {
          cuda::set_device(device);
          cuda::set_current_stream(device, side_stream_);
        }
        compute(f);
        // Its outputs are used on this thread's stream after the pair.
        if (gpu) cuda::synchronize_stream(side_stream_);
      } catch (...) {
        failure = std::current_exception();
      }
    });
    try {
      compute(b);
    } catch (...) {
      forward_thread.join();
      throw;
    }
    forward_thread.join();
    if (failure) std::rethrow_exception(failure);
  } else {
    compute(f);
    compute(b);
  }
  stats.forward_backward.seconds += seconds_since(start);
  ++stats.forward_backward.count;
  stats.fb_forward_seconds += f.seconds;
  stats.fb_backward_seconds += b.seconds;
  deliver(f);
  deliver(b);
}

ExecutorStats PipelineExecutor::run() {
  ExecutorStats stats;
  const auto start = Clock::now();
  const auto single = [&](int chunk, int micro_batch, bool backward, bool defer,
                          ExecutorStats::Phase& phase) {
    Task task = prepare(chunk, micro_batch, backward, defer, stats);
    compute(task);
    phase.seconds += task.seconds;
    ++phase.count;
    deliver(task);
  };
  for (const Instruction& in : schedule_.program[rank_]) {
    switch (in.op) {
      case Op::kRecvForward:
        post_receive(in, kActivation);
        break;
      case Op::kRecvBackward:
        post_receive(in, kGradient);
        break;
      case Op::kSendForward:
        post_send(in, kActivation);
        break;
      case Op::kSendBackward:
        post_send(in, kGradient);
        break;
      case Op::kForward:
        single(in.chunk, in.micro_batch, false, false, stats.forward);
        break;
      case Op::kBackward:
        single(in.chunk, in.micro_batch, true, in.defer_weight,
               in.defer_weight ? stats.backward_input : stats.backward_full);
        break;
      case Op::kForwardBackward:
        forward_backward(in, stats);
        break;
      case Op::kWeight: {
        FATHOM_CHECK(store_.size() > 0)
            << "pipeline rank " << rank_ << ": W with no deferred weight gradient";
        const auto w_start = Clock::now();
        store_.pop();
        stats.weight.seconds += seconds_since(w_start);
        ++stats.weight.count;
        break;
      }
    }
  }
  for (auto& [tensor, work] : sends_) work->wait();
  sends_.clear();
  FATHOM_CHECK(store_.size() == 0 && !store_.has_pending())
      << "pipeline rank " << rank_ << ": " << store_.size()
      << " deferred weight gradients left at the end of the " << schedule_kind_name(schedule_.kind)
      << " program";
  FATHOM_CHECK(activations_.empty() && gradients_.empty() && outgoing_[0].empty() &&
               outgoing_[1].empty())
      << "pipeline rank " << rank_ << ": tensors left unconsumed at the end of the program ("
      << activations_.size() + gradients_.size() << " received, "
      << outgoing_[0].size() + outgoing_[1].size() << " never sent)";
  stats.total_seconds = seconds_since(start);
  return stats;
}

}  // namespace fathom::parallel::pipeline
