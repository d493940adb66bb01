// The pieces every layer is built from (DESIGN.md decision 1): parameters with their gradients,
// buffers, deterministic initialisation, and the WeightGradStore that defers weight gradients.
//
// Layers have explicit forward / backward_input / backward_weight methods. A layer owns its
// Parameters; what forward saves for backward lives in a per-micro-batch `Saved` struct that the
// caller owns, so several micro-batches can be in flight (pipeline schedules). backward_input
// writes (`=`) input gradients; backward_weight accumulates (`+=`) into Parameter::grad, now or,
// when a WeightGradStore is given, later (zero-bubble and DualPipe schedules run it as "W").
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace fathom::model {

struct Parameter {
  std::string name;  // global name, e.g. "layers.1.attn.wq_a.weight": the key in checkpoints
  Tensor value;      // f32 master weights
  Tensor grad;       // f32, same shape; (+=) by backward_weight, zeroed by the trainer
  bool weight_decay = true;  // AdamW decays matrices, not norm weights
  bool is_expert = false;    // a routed-expert weight (reduced over expert-data-parallel ranks)
  // Bumped whenever `value` changes (optimizer step, checkpoint load). Layers key their bf16 / FP8
  // working copies of the weights on it.
  uint64_t version = 0;
  // This rank's part of the global tensor: rows [row_offset, row_offset + value.dim(0)) of
  // global_shape (an expert-parallel rank holds some experts of a stacked expert weight). Empty
  // global_shape: the whole tensor. Checkpoints store the global tensor.
  Shape global_shape;
  int64_t row_offset = 0;

  const Shape& global() const { return global_shape.empty() ? value.shape() : global_shape; }
};

// A named tensor that is saved and loaded with the model but not trained by gradients (the MoE
// router bias, updated by the load-balancing rule).
struct Buffer {
  std::string name;
  Tensor value;
};

// A zero-initialised f32 parameter and gradient of `shape` on `device`.
Parameter make_parameter(std::string name, absl::Span<const int64_t> shape, Device device,
                         bool weight_decay = true);

// value ~ Normal(0, std), from a counter-based generator keyed by (seed, name) and each element's
// index in the global tensor: a parameter's initial values do not depend on construction order,
// device or parallel layout. element_offset: the global index of this rank's first element (a
// rank holding experts [8, 16) of a stacked expert weight passes 8 * the per-expert size).
void init_normal(Parameter& p, uint64_t seed, double std, int64_t element_offset = 0);
// Every value = v (norm weights start at 1).
void init_constant(Parameter& p, float v);

// FIFO of deferred weight-gradient work. A layer's backward pushes closures; flush() closes the
// closures pushed since the last flush into one entry (one chunk's W for one micro-batch); pop()
// runs the oldest entry. Closures capture Tensors by value (shared storage), so what they read
// stays alive until they run.
class WeightGradStore {
 public:
  void push(std::function<void()> fn);
  void flush();
  // Runs the oldest flushed entry. Requires size() > 0.
  void pop();
  // Flushes, then runs every entry in order.
  void run_all();
  int64_t size() const { return static_cast<int64_t>(queue_.size()); }
  bool has_pending() const { return !pending_.empty(); }

 private:
  std::vector<std::function<void()>> pending_;
  std::deque<std::vector<std::function<void()>>> queue_;
};

// Runs fn now, or defers it into `store` when one is given.
void run_or_defer(WeightGradStore* store, std::function<void()> fn);

// Collects pointers to a layer tree's parameters and buffers, in a fixed order.
using ParameterList = std::vector<Parameter*>;
using BufferList = std::vector<Buffer*>;

}  // namespace fathom::model
