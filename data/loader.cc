#include "data/loader.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/check.h"

#include "kernels/hash.h"

namespace fathom::data {
namespace {

// A seed derived from (seed, purpose, index), so the streams used for different purposes differ.
uint64_t derive_seed(uint64_t seed, uint64_t purpose, uint64_t index) {
  return splitmix64(splitmix64(seed ^ splitmix64(purpose)) + index);
}

constexpr uint64_t kPoolRounds = 1;
constexpr uint64_t kFreshEpochs = 2;
constexpr uint64_t kShuffle = 3;
constexpr uint64_t kHeldOutRounds = 4;
constexpr uint64_t kHeldOutOrder = 5;

// splitmix64 stream; integer-only, so the same on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() { return splitmix64(state_++ * kGoldenGamma); }
  // Uniform in [0, n) for n >= 1 (multiply-shift; the bias is at most n / 2^64).
  uint64_t below(uint64_t n) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64);
  }

 private:
  uint64_t state_;
};

void shuffle(std::vector<int64_t>* v, uint64_t seed) {
  Rng rng(seed);
  for (size_t i = v->size(); i > 1; --i) {
    std::swap((*v)[i - 1], (*v)[rng.below(i)]);
  }
}

// Splits `count` between the sources in proportion to their weights (largest remainder; ties go
// to the earlier source), so every epoch has the same exact mix.
std::vector<int64_t> allocate(int64_t count, absl::Span<const TaskSource> sources) {
  double total = 0;
  for (const TaskSource& s : sources) total += s.weight;
  std::vector<int64_t> n(sources.size(), 0);
  std::vector<double> remainder(sources.size(), 0);
  int64_t assigned = 0;
  for (size_t k = 0; k < sources.size(); ++k) {
    const double quota = static_cast<double>(count) * sources[k].weight / total;
    n[k] = std::min<int64_t>(count, static_cast<int64_t>(std::floor(quota)));
    remainder[k] = quota - static_cast<double>(n[k]);
    assigned += n[k];
  }
  while (assigned < count) {
    size_t best = 0;
    for (size_t k = 1; k < sources.size(); ++k) {
      if (remainder[k] > remainder[best]) best = k;
    }
    ++n[best];
    remainder[best] = -1;
    ++assigned;
  }
  return n;
}

// `count` problems of `kind` and `split` with distinct canonical forms, drawn in rounds of
// generate() with seeds derived from (seed, purpose, round). ResourceExhausted when 8 rounds in a
// row bring nothing new.
absl::StatusOr<std::vector<Task>> draw_distinct(TaskKind kind, Split split, uint64_t seed,
                                                uint64_t purpose, int64_t count,
                                                const TaskOptions& options) {
  constexpr int kMaxBarrenRounds = 8;
  std::vector<Task> out;
  out.reserve(static_cast<size_t>(count));
  std::unordered_set<std::string> seen;
  int barren = 0;
  for (uint64_t round = 0; static_cast<int64_t>(out.size()) < count; ++round) {
    const int64_t need = count - static_cast<int64_t>(out.size());
    absl::StatusOr<std::vector<Task>> tasks = generate(
        kind, split, derive_seed(seed, purpose, round), std::max<int64_t>(2 * need, 256), options);
    if (!tasks.ok()) return tasks.status();
    bool added = false;
    for (Task& t : *tasks) {
      if (static_cast<int64_t>(out.size()) == count) break;
      if (seen.insert(t.canonical).second) {
        out.push_back(std::move(t));
        added = true;
      }
    }
    barren = added ? 0 : barren + 1;
    if (barren == kMaxBarrenRounds) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the task options allow only about ", out.size(), " distinct ",
          std::string(task_kind_name(kind)), " problems in the ", std::string(split_name(split)),
          " split, fewer than the ", count, " asked for; widen the options or ask for fewer"));
    }
  }
  return out;
}

uint64_t hash_text(std::string_view text) { return splitmix64(fnv1a(text)); }

uint64_t fingerprint_of(const LoaderOptions& o) {
  std::string text;
  for (const TaskSource& s : o.sources) {
    uint64_t bits = 0;
    std::memcpy(&bits, &s.weight, sizeof bits);
    absl::StrAppend(&text, std::string(task_kind_name(s.kind)), ":", bits, ";");
  }
  const ArithmeticOptions& a = o.task_options.arithmetic;
  const CountdownOptions& c = o.task_options.countdown;
  absl::StrAppend(&text, a.min_digits, ",", a.max_digits, ",", a.ops, ",", a.allow_negative, ";",
                  c.min_numbers, ",", c.max_numbers, ",", c.max_value, ",", c.max_target, ";",
                  o.seed, ",", o.train_problems, ",", o.seq_len, ",", o.extra);
  return hash_text(text);
}

}  // namespace

absl::Status validate(const LoaderOptions& o) {
  std::vector<std::string> problems;
  if (o.sources.empty()) problems.push_back("sources: at least one task kind is needed");
  double total = 0;
  bool weights_ok = true;
  for (size_t i = 0; i < o.sources.size(); ++i) {
    const TaskSource& s = o.sources[i];
    if (!(s.weight >= 0) || !std::isfinite(s.weight)) {
      problems.push_back(
          absl::StrCat("sources[", i, "].weight: must be a finite number >= 0, got ", s.weight));
      weights_ok = false;
    } else {
      total += s.weight;
    }
    for (size_t j = 0; j < i; ++j) {
      if (o.sources[j].kind == s.kind) {
        problems.push_back(absl::StrCat("sources[", i, "]: task kind '",
                                        std::string(task_kind_name(s.kind)), "' is listed twice"));
      }
    }
  }
  if (weights_ok && !o.sources.empty() && !(total > 0)) {
    problems.push_back("sources: the weights must not all be 0");
  }
  if (absl::Status s = validate(o.task_options); !s.ok()) problems.emplace_back(s.message());
  if (o.train_problems < 0) {
    problems.push_back(absl::StrCat(
        "train_problems: must be zero (fresh problems) or positive, got ", o.train_problems));
  }
  if (o.seq_len < 1) problems.push_back(absl::StrCat("seq_len: must be positive, got ", o.seq_len));
  if (o.extra < 1) problems.push_back(absl::StrCat("extra: must be positive, got ", o.extra));
  if (o.world < 1) {
    problems.push_back(absl::StrCat("world: must be positive, got ", o.world));
  } else if (o.rank < 0 || o.rank >= o.world) {
    problems.push_back(absl::StrCat("rank: must be in [0, world = ", o.world, "), got ", o.rank));
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(problems, "\n"));
}

std::vector<uint64_t> LoaderState::to_words() const {
  return {static_cast<uint64_t>(sample), static_cast<uint64_t>(epoch), static_cast<uint64_t>(doc),
          static_cast<uint64_t>(offset), fingerprint};
}

absl::StatusOr<LoaderState> LoaderState::from_words(absl::Span<const uint64_t> words) {
  if (words.size() != 5) {
    return absl::InvalidArgumentError(
        absl::StrCat("loader state: expected 5 words, got ", words.size()));
  }
  LoaderState s;
  s.sample = static_cast<int64_t>(words[0]);
  s.epoch = static_cast<int64_t>(words[1]);
  s.doc = static_cast<int64_t>(words[2]);
  s.offset = static_cast<int64_t>(words[3]);
  s.fingerprint = words[4];
  return s;
}

std::vector<int32_t> encode_document(const Tokenizer& tokenizer, const Task& task,
                                     std::vector<int32_t>* answer_mask) {
  std::vector<int32_t> tokens;
  tokens.push_back(Tokenizer::kBos);
  const std::vector<int32_t> body = tokenizer.encode(task.prompt + task.target);
  tokens.insert(tokens.end(), body.begin(), body.end());
  tokens.push_back(Tokenizer::kEos);
  if (answer_mask != nullptr) {
    answer_mask->assign(tokens.size(), 0);
    bool inside = false;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] == Tokenizer::kAnswerEnd) inside = false;
      (*answer_mask)[i] = inside ? 1 : 0;
      if (tokens[i] == Tokenizer::kAnswerBegin) inside = true;
    }
  }
  return tokens;
}

std::vector<int32_t> encode_prompt(const Tokenizer& tokenizer, const Task& task) {
  std::vector<int32_t> tokens;
  tokens.push_back(Tokenizer::kBos);
  const std::vector<int32_t> body = tokenizer.encode(task.prompt);
  tokens.insert(tokens.end(), body.begin(), body.end());
  return tokens;
}

TokenLoader::TokenLoader(LoaderOptions options) : options_(std::move(options)) {}

absl::StatusOr<TokenLoader> TokenLoader::create(LoaderOptions options) {
  FATHOM_RETURN_IF_ERROR(validate(options));
  TokenLoader loader(std::move(options));
  FATHOM_RETURN_IF_ERROR(loader.init());
  return loader;
}

absl::Status TokenLoader::init() {
  fingerprint_ = fingerprint_of(options_);
  if (options_.train_problems > 0) {
    const std::vector<int64_t> counts = allocate(options_.train_problems, options_.sources);
    auto pool = std::make_shared<std::vector<Document>>();
    pool->reserve(static_cast<size_t>(options_.train_problems));
    for (size_t k = 0; k < counts.size(); ++k) {
      if (counts[k] == 0) continue;
      absl::StatusOr<std::vector<Task>> tasks =
          draw_distinct(options_.sources[k].kind, Split::kTrain, options_.seed, kPoolRounds,
                        counts[k], options_.task_options);
      if (!tasks.ok()) {
        return absl::Status(tasks.status().code(),
                            absl::StrCat("train_problems: ", tasks.status().message()));
      }
      for (const Task& t : *tasks) {
        Document d;
        d.tokens = encode_document(tokenizer_, t, &d.answer_mask);
        pool->push_back(std::move(d));
      }
    }
    int64_t tokens = 0;
    for (const Document& d : *pool) tokens += static_cast<int64_t>(d.tokens.size());
    pool_tokens_ = tokens;
    pool_ = std::move(pool);
  } else {
    // Draw the first epoch now, so that bad options fail here and not in next_batch().
    FATHOM_ASSIGN_OR_RETURN(Epoch first, make_epoch(0));
    cache_.push_back(std::move(first));
  }
  skip_to(0);
  return absl::OkStatus();
}

int64_t TokenLoader::epoch_documents() const {
  return options_.train_problems > 0 ? options_.train_problems : kFreshEpochProblems;
}

absl::StatusOr<std::vector<TokenLoader::Document>> TokenLoader::draw_fresh(
    int64_t epoch_index) const {
  const std::vector<int64_t> counts = allocate(kFreshEpochProblems, options_.sources);
  const uint64_t seed =
      derive_seed(options_.seed, kFreshEpochs, static_cast<uint64_t>(epoch_index));
  std::vector<Document> docs;
  docs.reserve(static_cast<size_t>(kFreshEpochProblems));
  for (size_t k = 0; k < counts.size(); ++k) {
    if (counts[k] == 0) continue;
    FATHOM_ASSIGN_OR_RETURN(
        std::vector<Task> tasks,
        generate(options_.sources[k].kind, Split::kTrain, seed, counts[k], options_.task_options));
    for (const Task& t : tasks) {
      Document d;
      d.tokens = encode_document(tokenizer_, t, &d.answer_mask);
      docs.push_back(std::move(d));
    }
  }
  return docs;
}

absl::StatusOr<TokenLoader::Epoch> TokenLoader::make_epoch(int64_t index) const {
  Epoch e;
  e.index = index;
  if (pool_ != nullptr) {
    e.docs = pool_;
  } else {
    FATHOM_ASSIGN_OR_RETURN(std::vector<Document> docs, draw_fresh(index));
    e.docs = std::make_shared<const std::vector<Document>>(std::move(docs));
  }
  e.order.resize(e.docs->size());
  for (size_t i = 0; i < e.order.size(); ++i) e.order[i] = static_cast<int64_t>(i);
  shuffle(&e.order, derive_seed(options_.seed, kShuffle, static_cast<uint64_t>(index)));
  return e;
}

const TokenLoader::Epoch& TokenLoader::epoch(int64_t index) {
  for (const Epoch& e : cache_) {
    if (e.index == index) return e;
  }
  absl::StatusOr<Epoch> e = make_epoch(index);
  FATHOM_CHECK(e.ok()) << "token loader: drawing the problems of epoch " << index
                       << " failed: " << e.status().ToString();
  // Reads move forward, so the oldest epoch is the one to drop.
  if (cache_.size() >= 2) cache_.erase(cache_.begin());
  cache_.push_back(*std::move(e));
  return cache_.back();
}

const TokenLoader::Document& TokenLoader::document(const Cursor& c) {
  const Epoch& e = epoch(c.epoch);
  return (*e.docs)[static_cast<size_t>(e.order[static_cast<size_t>(c.doc)])];
}

void TokenLoader::advance(Cursor* c, int64_t tokens) {
  // Whole epochs of the fixed pool have a known length: skip them without visiting documents.
  if (pool_ != nullptr && c->doc == 0 && c->offset == 0) {
    c->epoch += tokens / pool_tokens_;
    tokens %= pool_tokens_;
  }
  while (tokens > 0) {
    const int64_t left = static_cast<int64_t>(document(*c).tokens.size()) - c->offset;
    if (tokens < left) {
      c->offset += tokens;
      return;
    }
    tokens -= left;
    c->offset = 0;
    if (++c->doc == epoch_documents()) {
      c->doc = 0;
      ++c->epoch;
    }
  }
}

void TokenLoader::copy_tokens(Cursor c, int64_t n, int32_t* tokens, int32_t* mask) {
  while (n > 0) {
    const Document& d = document(c);
    const int64_t take = std::min<int64_t>(n, static_cast<int64_t>(d.tokens.size()) - c.offset);
    std::copy_n(d.tokens.begin() + c.offset, take, tokens);
    tokens += take;
    if (mask != nullptr) {
      std::copy_n(d.answer_mask.begin() + c.offset, take, mask);
      mask += take;
    }
    n -= take;
    c.offset = 0;
    if (++c.doc == epoch_documents()) {
      c.doc = 0;
      ++c.epoch;
    }
  }
}

Tensor TokenLoader::next_batch(int64_t batch, Tensor* answer_mask) {
  FATHOM_CHECK(batch >= 1) << "next_batch: batch must be >= 1, got " << batch;
  const int64_t width = options_.seq_len + options_.extra;
  Tensor tokens = Tensor::empty({batch, width}, DType::kI32);
  int32_t* mask = nullptr;
  if (answer_mask != nullptr) {
    *answer_mask = Tensor::empty({batch, width}, DType::kI32);
    mask = answer_mask->data<int32_t>();
  }
  int32_t* out = tokens.data<int32_t>();
  for (int64_t row = 0; row < batch; ++row) {
    copy_tokens(cursor_, width, out + row * width, mask != nullptr ? mask + row * width : nullptr);
    advance(&cursor_, options_.world * options_.seq_len);
    sample_ += options_.world;
  }
  return tokens;
}

LoaderState TokenLoader::state() const {
  return LoaderState{sample_, cursor_.epoch, cursor_.doc, cursor_.offset, fingerprint_};
}

absl::Status TokenLoader::set_state(const LoaderState& s) {
  if (s.fingerprint != fingerprint_) {
    return absl::FailedPreconditionError(
        absl::StrCat("loader state: saved by a loader with other data options (fingerprint ",
                     s.fingerprint, ", this loader's ", fingerprint_,
                     "): task kinds, weights, task options, seed, train_problems, seq_len and the "
                     "look-ahead must match to resume"));
  }
  if (s.sample < 0 || s.sample % options_.world != options_.rank) {
    return absl::InvalidArgumentError(absl::StrCat("loader state: sample ", s.sample,
                                                   " is not one of rank ", options_.rank, " of ",
                                                   options_.world, " (samples rank + k * world)"));
  }
  if (s.epoch < 0 || s.doc < 0 || s.doc >= epoch_documents() || s.offset < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "loader state: position (epoch ", s.epoch, ", document ", s.doc, ", offset ", s.offset,
        ") is outside the stream (", epoch_documents(), " documents per epoch)"));
  }
  const Cursor c{s.epoch, s.doc, s.offset};
  const int64_t length = static_cast<int64_t>(document(c).tokens.size());
  if (s.offset >= length) {
    return absl::InvalidArgumentError(
        absl::StrCat("loader state: offset ", s.offset, " is past the end of document ", s.doc,
                     " of epoch ", s.epoch, " (", length, " tokens)"));
  }
  sample_ = s.sample;
  cursor_ = c;
  return absl::OkStatus();
}

void TokenLoader::skip_to(int64_t consumed) {
  FATHOM_CHECK(consumed >= 0) << "skip_to: consumed must be >= 0, got " << consumed;
  sample_ = consumed + options_.rank;
  cursor_ = Cursor{};
  advance(&cursor_, sample_ * options_.seq_len);
}

absl::StatusOr<std::vector<Task>> held_out_tasks(const LoaderOptions& options, int64_t count) {
  FATHOM_RETURN_IF_ERROR(validate(options));
  if (count < 0) {
    return absl::InvalidArgumentError(absl::StrCat("held-out count must be >= 0, got ", count));
  }
  const std::vector<int64_t> counts = allocate(count, options.sources);
  std::vector<Task> all;
  all.reserve(static_cast<size_t>(count));
  for (size_t k = 0; k < counts.size(); ++k) {
    if (counts[k] == 0) continue;
    FATHOM_ASSIGN_OR_RETURN(std::vector<Task> tasks,
                            draw_distinct(options.sources[k].kind, Split::kHeldOut, options.seed,
                                          kHeldOutRounds, counts[k], options.task_options));
    for (Task& t : tasks) all.push_back(std::move(t));
  }
  // Interleave the kinds, so that a prefix of the set is a fair sample of the mix.
  std::vector<int64_t> order(all.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  shuffle(&order, derive_seed(options.seed, kHeldOutOrder, 0));
  std::vector<Task> out;
  out.reserve(all.size());
  for (int64_t i : order) out.push_back(std::move(all[static_cast<size_t>(i)]));
  return out;
}

double exact_match_accuracy(absl::Span<const Task> tasks,
                            absl::Span<const std::string> completions) {
  FATHOM_CHECK_EQ(tasks.size(), completions.size()) << "exact_match_accuracy";
  if (tasks.empty()) return 0;
  int64_t correct = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const std::optional<std::string> answer = extract_answer(completions[i]);
    if (answer.has_value() && check_answer(tasks[i], *answer)) ++correct;
  }
  return static_cast<double>(correct) / static_cast<double>(tasks.size());
}

}  // namespace fathom::data
