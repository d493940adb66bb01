// Token loader: a deterministic, resumable, shardable stream of training sequences built from the
// verifiable tasks (data/tasks.h) and the byte tokenizer (data/tokenizer.h).
//
// Documents. Each task becomes the tokens of "<|bos|>" + prompt + target + "<|eos|>", where the
// target is "<think>...</think><answer>...</answer>" (encode_document()).
//
// Problems. With train_problems = N > 0 the loader draws N distinct train-split problems once
// (distinct by canonical form; mixed kinds in proportion to their weights) and cycles through them
// in epochs, each epoch in a fresh order shuffled by (seed, epoch). With train_problems = 0 it
// never repeats a draw on purpose: epoch e is a fresh batch of kFreshEpochProblems problems drawn
// with a seed derived from (seed, e), generated when the stream reaches it. Either way the stream
// depends only on the options, never on when or how often it is read.
//
// Samples. The documents of all epochs are packed back to back into one endless token stream.
// Global sample i is the window of seq_len + extra tokens starting at token i * seq_len:
// consecutive samples advance by seq_len and overlap by `extra` tokens, which the model needs as
// targets (extra = mtp_depth + 1: input position s predicts tokens s+1 .. s+1+mtp_depth). A window
// may start or end in the middle of a document.
//
// Sharding. Rank r of `world` data-parallel ranks reads global samples r, r + world, r + 2 world,
// ...; the world ranks together read exactly the samples one rank (world 1) would.
//
// Resume. state() is a few integers (LoaderState); set_state() on a loader built with the same
// options (rank and world included) makes the following batches exactly those that followed the
// saved state. skip_to() positions any rank at a global sample count, e.g. to resume under a
// different number of ranks.
//
// A loader is not thread-safe; use one per rank.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "data/tasks.h"
#include "data/tokenizer.h"
#include "kernels/tensor.h"

namespace fathom::data {

// One kind of task in the mix, drawn with probability weight / sum of weights.
struct TaskSource {
  TaskKind kind = TaskKind::kArithmetic;
  double weight = 1.0;
};

struct LoaderOptions {
  // At least one source; weights >= 0 with a positive sum; each kind at most once.
  std::vector<TaskSource> sources = {TaskSource{}};
  TaskOptions task_options;
  uint64_t seed = 0;
  // Distinct train problems to cycle through; 0: fresh problems without end.
  int64_t train_problems = 0;
  int64_t seq_len = 64;  // >= 1
  int64_t extra = 1;     // >= 1: tokens of look-ahead past seq_len (mtp_depth + 1)
  int64_t rank = 0;      // 0 <= rank < world
  int64_t world = 1;
};

// Problems per epoch when train_problems is 0.
inline constexpr int64_t kFreshEpochProblems = 1024;

// InvalidArgument, one line per problem, naming the field ("seq_len: must be positive, got 0").
absl::Status validate(const LoaderOptions& options);

// The position of a loader: plain integers, saved in checkpoints (to_words / from_words).
struct LoaderState {
  int64_t sample = 0;  // global index of the next sample this rank reads
  // Where that sample starts: token `offset` of document `doc` of epoch `epoch`.
  int64_t epoch = 0;
  int64_t doc = 0;
  int64_t offset = 0;
  // Hash of the options that shape the stream (all but rank and world), to refuse a state saved
  // by a loader with other options.
  uint64_t fingerprint = 0;

  bool operator==(const LoaderState&) const = default;
  // [sample, epoch, doc, offset, fingerprint] as uint64 (for CheckpointMeta::u64).
  std::vector<uint64_t> to_words() const;
  // The inverse; InvalidArgument when there are not exactly 5 words.
  static absl::StatusOr<LoaderState> from_words(absl::Span<const uint64_t> words);
};

// The tokens of one task: kBos, encode(prompt + target), kEos. When answer_mask is not null it
// gets one entry per token: 1 for the tokens strictly between <answer> and </answer>, else 0.
std::vector<int32_t> encode_document(const Tokenizer& tokenizer, const Task& task,
                                     std::vector<int32_t>* answer_mask = nullptr);
// The tokens a model is prompted with at evaluation: kBos, encode(prompt). A prefix of
// encode_document() of the same task.
std::vector<int32_t> encode_prompt(const Tokenizer& tokenizer, const Task& task);

class TokenLoader {
 public:
  // Validates the options and draws the problems (the whole pool when train_problems > 0, the
  // first epoch otherwise). Errors: InvalidArgument from validate(); ResourceExhausted when the
  // task options allow fewer than train_problems distinct train problems of a kind (the message
  // says how many were found).
  static absl::StatusOr<TokenLoader> create(LoaderOptions options);

  TokenLoader(TokenLoader&&) = default;
  TokenLoader& operator=(TokenLoader&&) = default;

  // The next `batch` samples of this rank (batch >= 1): a host tensor (batch, seq_len + extra)
  // i32 of token ids, row j = this rank's j-th next sample. When answer_mask is not null it is set
  // to a host tensor of the same shape, i32, 1 where the token lies strictly inside
  // <answer>...</answer> (see encode_document), else 0. Throws fathom::Error when batch < 1 or
  // when generating a fresh epoch fails (create() has already drawn one with the same options).
  Tensor next_batch(int64_t batch, Tensor* answer_mask = nullptr);

  LoaderState state() const;
  // Continues from `state` (cheap: only the state's epoch is drawn). Errors, leaving the loader
  // where it was: FailedPrecondition when state.fingerprint differs from this loader's (other
  // options); InvalidArgument for a sample of another rank (sample % world != rank) or a position
  // outside the stream (document or offset out of range). Whether the position really is token
  // sample * seq_len is not re-derived (that would mean walking the stream: see skip_to); pass
  // states that state() returned.
  absl::Status set_state(const LoaderState& state);

  // Positions this rank as if the world ranks together had read the first `consumed` global
  // samples: this rank's next sample becomes consumed + rank. With a fixed pool whole epochs are
  // skipped arithmetically; fresh problems are drawn epoch by epoch from the start, so the cost
  // grows with consumed * seq_len. consumed >= 0 (FATHOM_CHECK).
  void skip_to(int64_t consumed);

  const LoaderOptions& options() const { return options_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  // Number of documents per epoch.
  int64_t epoch_documents() const;

 private:
  struct Document {
    std::vector<int32_t> tokens;
    std::vector<int32_t> answer_mask;
  };
  // One epoch: documents in reading order.
  struct Epoch {
    int64_t index = -1;
    std::shared_ptr<const std::vector<Document>> docs;  // the pool, or the fresh problems
    std::vector<int64_t> order;                         // docs of the epoch in reading order
  };
  // A position in the stream.
  struct Cursor {
    int64_t epoch = 0;
    int64_t doc = 0;
    int64_t offset = 0;
  };

  explicit TokenLoader(LoaderOptions options);
  absl::Status init();
  absl::StatusOr<Epoch> make_epoch(int64_t index) const;
  // The epoch, from the cache or made (and cached); throws fathom::Error when drawing fails.
  const Epoch& epoch(int64_t index);
  const Document& document(const Cursor& c);
  void advance(Cursor* c, int64_t tokens);
  // Copies `n` tokens (and mask entries when mask != nullptr) from `c` on, leaving `c` as is.
  void copy_tokens(Cursor c, int64_t n, int32_t* tokens, int32_t* mask);
  absl::StatusOr<std::vector<Document>> draw_fresh(int64_t epoch_index) const;

  LoaderOptions options_;
  Tokenizer tokenizer_;
  uint64_t fingerprint_ = 0;
  std::shared_ptr<const std::vector<Document>> pool_;  // train_problems > 0
  int64_t pool_tokens_ = 0;                            // tokens of all pool documents
  std::vector<Epoch> cache_;                           // the last epochs used, at most 2
  int64_t sample_ = 0;
  Cursor cursor_;  // start of global sample sample_
};

// The held-out evaluation set: `count` distinct problems of the held-out split (Split::kHeldOut,
// disjoint from every train set), mixed by the weights of options.sources and drawn with
// options.seed, in a deterministic order. Score a completion c of task t with
// check_answer(t, extract_answer(c)). Errors: InvalidArgument from validate() or count < 0;
// ResourceExhausted when the options allow fewer distinct held-out problems.
absl::StatusOr<std::vector<Task>> held_out_tasks(const LoaderOptions& options, int64_t count);

// Fraction of completions whose final answer (extract_answer) is correct for its task (0 when
// `tasks` is empty). completions.size() must equal tasks.size() (FATHOM_CHECK).
double exact_match_accuracy(absl::Span<const Task> tasks,
                            absl::Span<const std::string> completions);

}  // namespace fathom::data
