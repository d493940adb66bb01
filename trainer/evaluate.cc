#include "trainer/evaluate.h"

#include <algorithm>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fathom::trainer {

absl::StatusOr<EvalSet> make_eval_set(const data::LoaderOptions& options, int64_t count) {
  FATHOM_ASSIGN_OR_RETURN(std::vector<data::Task> tasks, data::held_out_tasks(options, count));
  const int64_t width = options.seq_len + options.extra;
  const data::Tokenizer tokenizer;
  std::vector<int32_t> tokens, mask;
  EvalSet set;
  int64_t rows = 0;
  for (const data::Task& task : tasks) {
    std::vector<int32_t> doc_mask;
    const std::vector<int32_t> doc = data::encode_document(tokenizer, task, &doc_mask);
    // Every answer token must be a prediction target of the main head: position <= seq_len.
    if (static_cast<int64_t>(doc.size()) > options.seq_len + 1) {
      ++set.skipped;
      continue;
    }
    tokens.insert(tokens.end(), doc.begin(), doc.end());
    mask.insert(mask.end(), doc_mask.begin(), doc_mask.end());
    tokens.resize(static_cast<size_t>((rows + 1) * width), -1);
    mask.resize(static_cast<size_t>((rows + 1) * width), 0);
    ++rows;
  }
  if (rows == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "evaluation: none of the ", tasks.size(), " held-out problems fits in seq_len ",
        options.seq_len, " tokens; raise train.seq_len or use smaller problems"));
  }
  set.tokens = Tensor::from_vector(tokens, {rows, width});
  set.answer_mask = Tensor::from_vector(mask, {rows, width});
  return set;
}

EvalResult evaluate(model::DeepSeekV3& model, const EvalSet& set, int64_t batch) {
  return evaluate(
      [&model](const Tensor& tokens, model::Losses* losses) { return model.logits(tokens, losses); },
      model.config().mtp_depth, model.config().vocab_size, set, batch);
}

EvalResult evaluate(const LogitsFn& logits_of, int64_t mtp_depth, int64_t vocab,
                    const EvalSet& set, int64_t batch) {
  const int64_t n = set.tokens.dim(0);
  const int64_t width = set.tokens.dim(1);
  const int64_t seq = width - mtp_depth - 1;
  const std::vector<int32_t> tokens = set.tokens.to_vector<int32_t>();
  const std::vector<int32_t> mask = set.answer_mask.to_vector<int32_t>();
  EvalResult result;
  int64_t correct = 0, answer_tokens = 0, right_tokens = 0, scored = 0;
  double loss_sum = 0;
  for (int64_t start = 0; start < n; start += batch) {
    const int64_t b = std::min(batch, n - start);
    const Tensor chunk = set.tokens.narrow(start, b);
    model::Losses losses;
    const std::vector<float> logits = logits_of(chunk, &losses).to_floats();
    loss_sum += losses.lm * static_cast<double>(losses.tokens);
    scored += losses.tokens;
    for (int64_t r = 0; r < b; ++r) {
      bool all_right = true;
      bool any = false;
      for (int64_t s = 0; s < seq; ++s) {
        const int64_t target_index = (start + r) * width + s + 1;
        if (mask[target_index] == 0) continue;
        const float* row = logits.data() + (r * seq + s) * vocab;
        const int64_t argmax = std::max_element(row, row + vocab) - row;
        const bool right = argmax == tokens[target_index];
        any = true;
        all_right = all_right && right;
        ++answer_tokens;
        right_tokens += right;
      }
      correct += any && all_right;
    }
  }
  result.problems = n;
  result.loss = scored > 0 ? loss_sum / static_cast<double>(scored) : 0.0;
  result.answer_accuracy = static_cast<double>(correct) / static_cast<double>(n);
  result.answer_token_accuracy =
      answer_tokens > 0 ? static_cast<double>(right_tokens) / answer_tokens : 0.0;
  return result;
}

}  // namespace fathom::trainer
