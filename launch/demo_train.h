// `fathom demo`: trains a tiny pre-norm transformer language model on generated arithmetic
// problems with worked reasoning (data/tasks.h: "What is 347 + 29?<think>...</think>
// <answer>376</answer>"), built directly from the kernels' ops with a hand-written backward.
//
// It is the project's end-to-end training run until the DeepSeek-V3 model and trainer exist
// (model/, trainer/): every op with a backward (embedding, RMSNorm, GEMM, RoPE, causal attention,
// SwiGLU, fused cross-entropy) and AdamW with global-norm clipping take part, so a falling loss and
// a rising held-out accuracy show that they compose correctly.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace fathom::launch {

struct DemoConfig {
  int64_t dim = 64;
  int64_t n_heads = 4;
  int64_t n_layers = 2;
  int64_t ffn_dim = 192;
  int64_t seq_len = 64;
  int64_t batch = 8;
  int64_t steps = 1500;
  float lr = 3e-3f;
  float weight_decay = 0.01f;
  float clip = 1.0f;
  uint32_t seed = 1;
  int64_t eval_problems = 256;  // held-out problems scored before and after training
  int64_t log_every = 100;
};

struct DemoStep {
  int64_t step;
  double loss;
  double grad_norm;
  double lr;
  double tokens_per_s;
  double seconds;  // wall time of the step
};

struct DemoResult {
  std::vector<DemoStep> steps;
  // Held-out teacher-forced accuracy on the answer tokens, before and after training.
  double accuracy_before = 0;
  double accuracy_after = 0;
  double loss_before = 0;  // held-out loss per answer token
  double loss_after = 0;
};

// Runs the training; `on_step` (optional) sees every step as it completes.
DemoResult run_demo(const DemoConfig& config,
                    const std::function<void(const DemoStep&)>& on_step = nullptr);

// CLI entry: `fathom demo [--steps N] [--seed S] [--threads T]`. Returns the exit code.
int demo_main(const std::vector<std::string>& args);

}  // namespace fathom::launch
