// Runs a pipeline schedule (schedule.h) on this rank with real model chunks (DESIGN.md
// decision 2): one executor for every schedule kind.
//
// For each instruction of program[rank], in order:
//   kRecvForward / kRecvBackward  post a non-blocking receive into a fresh boundary tensor
//   kForward                      wait for the input (received, or handed over by a local chunk),
//                                 run the chunk's forward
//   kBackward                     wait for the output gradient, run the chunk's backward; with
//                                 defer_weight its weight gradients go into the WeightGradStore
//                                 FIFO as one entry
//   kWeight                       run the oldest FIFO entry
//   kForwardBackward              the forward and the backward above, at the same time: with
//                                 overlap on, the forward runs on a second thread, so while one
//                                 half waits for its expert-parallel all-to-all the other
//                                 computes (each chunk must then use its own communicators);
//                                 on a GPU the forward thread queues its work on a stream of
//                                 its own, and both streams are drained before the pair ends
//   kSendForward / kSendBackward  post a non-blocking send of what the last compute produced
// At the end every send is complete and the FIFO is empty. Failures throw fathom::Error; the
// rank's fault handler (parallel/fault.h) then stops every rank, so a peer waiting on a receive
// does not hang.
#pragma once

#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "kernels/cuda/runtime.h"
#include "kernels/tensor.h"
#include "model/module.h"
#include "parallel/communicator.h"
#include "parallel/pipeline/schedule.h"

namespace fathom::parallel::pipeline {

// One pipeline stage held by this rank (a chunk): what the executor calls.
class StageWorker {
 public:
  virtual ~StageWorker() = default;
  // Forward of micro-batch `micro_batch` (global id). input: the previous stage's output, or an
  // undefined tensor on stage 0. Returns the output for the next stage (the boundary shape), or an
  // undefined tensor on the last stage, which computes the loss.
  virtual Tensor forward(int micro_batch, const Tensor& input) = 0;
  // Backward of a micro-batch whose forward ran here. grad_output: the next stage's input
  // gradient, or undefined on the last stage. store: nullptr to compute weight gradients now,
  // else push them into it (the executor flushes them as one entry). Returns the gradient of the
  // input (boundary shape), or an undefined tensor on stage 0.
  virtual Tensor backward(int micro_batch, const Tensor& grad_output,
                          model::WeightGradStore* store) = 0;
};

struct ExecutorOptions {
  // Shape of every activation and gradient passed between stages, e.g. (B*S, dim); f32.
  std::vector<int64_t> boundary_shape;
  Device device = Device::cpu();
  // Run the two halves of kForwardBackward concurrently (else forward, then backward).
  bool overlap = true;
};

// Where the time of one step went, on this rank.
struct ExecutorStats {
  struct Phase {
    int64_t count = 0;
    double seconds = 0;  // wall time of the computes (receive waits excluded)
    double mean() const { return count > 0 ? seconds / static_cast<double>(count) : 0.0; }
  };
  Phase forward;          // kForward
  Phase backward_full;    // kBackward without deferral
  Phase backward_input;   // kBackward with defer_weight
  Phase weight;           // kWeight
  Phase forward_backward; // kForwardBackward, wall time of the pair
  // kForwardBackward's halves, each timed on its own thread: with overlap, their sum minus the
  // pair's wall time is the time the two halves ran at once.
  double fb_forward_seconds = 0;
  double fb_backward_seconds = 0;
  double receive_wait_seconds = 0;  // waiting for activations and gradients to arrive
  double total_seconds = 0;         // the whole program
  double overlapped_seconds() const {
    return fb_forward_seconds + fb_backward_seconds - forward_backward.seconds;
  }
};

class PipelineExecutor {
 public:
  // schedule: the whole schedule; rank: this rank's index in it (the pp communicator's rank).
  // chunks[c]: the worker of local chunk c (schedule.chunks_per_rank() of them). pp: the pipeline
  // group, rank r of it = schedule rank r. All must outlive the executor.
  PipelineExecutor(const Schedule& schedule, int rank, Communicator& pp,
                   std::vector<StageWorker*> chunks, ExecutorOptions options);
  ~PipelineExecutor();
  PipelineExecutor(const PipelineExecutor&) = delete;
  PipelineExecutor& operator=(const PipelineExecutor&) = delete;

  // Runs the rank's program once (one training step's forwards and backwards).
  ExecutorStats run();

 private:
  enum Direction : int { kActivation = 0, kGradient = 1 };
  // A boundary tensor on its way: the receive still in flight, or the tensor itself.
  struct Pending {
    Tensor tensor;
    WorkHandle work;
  };
  using Key = std::pair<int, int>;  // (receiving stage, micro-batch)

  // One compute's bookkeeping: its input is taken before it runs and its output delivered after,
  // on the executor's thread, so the compute itself may run on another.
  struct Task {
    int chunk = 0;
    int stage = 0;
    int micro_batch = 0;
    bool backward = false;
    bool defer = false;
    Tensor input;   // activation (forward) or output gradient (backward); undefined at the ends
    Tensor output;  // the result, for the neighbouring stage
    double seconds = 0;
  };

  int tag(int stage, int micro_batch, Direction direction) const;
  Task prepare(int chunk, int micro_batch, bool backward, bool defer, ExecutorStats& stats);
  void compute(Task& task);
  void deliver(Task& task);
  void post_receive(const Instruction& in, Direction direction);
  void post_send(const Instruction& in, Direction direction);
  void forward_backward(const Instruction& in, ExecutorStats& stats);

  const Schedule& schedule_;
  int rank_;
  Communicator& pp_;
  std::vector<StageWorker*> chunks_;
  ExecutorOptions options_;
  model::WeightGradStore store_;
  std::map<Key, Pending> activations_;  // inputs of forwards to come
  std::map<Key, Pending> gradients_;    // output gradients of backwards to come
  // Produced for another rank, until their kSend*: activations and gradients by receiving stage.
  std::map<Key, Tensor> outgoing_[2];
  std::vector<std::pair<Tensor, WorkHandle>> sends_;
  cuda::Stream side_stream_ = nullptr;  // GPU: the overlapped forward's stream
};

}  // namespace fathom::parallel::pipeline
