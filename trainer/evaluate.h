// Held-out evaluation during pretraining: loss and answer exact match on problems of the held-out
// split (data/tasks.h), which no training batch can contain.
//
// Each problem is one sequence: its document (prompt, worked <think> reasoning, <answer>), padded
// with -1 (not scored). The answer is exactly right when the model's argmax prediction of every
// token inside <answer>...</answer> is correct given the preceding tokens: greedy decoding of the
// answer after the reference reasoning (teacher forcing). Free generation of the reasoning as well
// is what GRPO's rollouts measure.
#pragma once

#include <cstdint>
#include <functional>

#include "absl/status/statusor.h"
#include "data/loader.h"
#include "kernels/tensor.h"
#include "model/deepseek_v3.h"

namespace fathom::trainer {

struct EvalSet {
  Tensor tokens;       // (N, S + mtp_depth + 1) i32, -1 padded
  Tensor answer_mask;  // same shape, 1 on answer tokens
  int64_t skipped = 0;  // held-out problems longer than a sequence, left out
};

// `count` held-out problems drawn with `options` (its sources, task options and seed), as
// sequences of seq_len + extra tokens. Errors: those of data::held_out_tasks, and
// InvalidArgument when no problem fits in a sequence.
absl::StatusOr<EvalSet> make_eval_set(const data::LoaderOptions& options, int64_t count);

struct EvalResult {
  double loss = 0;               // main-model loss over the held-out sequences
  double answer_accuracy = 0;    // fraction of problems with every answer token right
  double answer_token_accuracy = 0;
  int64_t problems = 0;
};

// Runs the model forward over the set in batches of `batch` sequences (no gradients).
EvalResult evaluate(model::DeepSeekV3& model, const EvalSet& set, int64_t batch);

// The same over any forward: logits(tokens (b, S + mtp_depth + 1), &losses) returns the main
// head's logits (b*S, vocab) f32 and that batch's losses (a pipeline runs its stages for it).
using LogitsFn = std::function<Tensor(const Tensor& tokens, model::Losses* losses)>;
EvalResult evaluate(const LogitsFn& logits, int64_t mtp_depth, int64_t vocab_size,
                    const EvalSet& set, int64_t batch);

}  // namespace fathom::trainer
