#include "data/loader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace fathom::data {
namespace {

using ::testing::HasSubstr;

LoaderOptions arithmetic_options(int64_t train_problems, uint64_t seed = 7) {
  LoaderOptions o;
  o.sources = {TaskSource{TaskKind::kArithmetic, 1.0}};
  o.task_options.arithmetic.min_digits = 1;
  o.task_options.arithmetic.max_digits = 2;
  o.task_options.arithmetic.ops = "+-";
  o.seed = seed;
  o.train_problems = train_problems;
  o.seq_len = 16;
  o.extra = 2;
  return o;
}

TokenLoader make_loader(const LoaderOptions& o) {
  absl::StatusOr<TokenLoader> loader = TokenLoader::create(o);
  EXPECT_TRUE(loader.ok()) << loader.status();
  if (!loader.ok()) throw std::runtime_error("loader creation failed");
  return *std::move(loader);
}

std::vector<std::vector<int32_t>> rows_of(const Tensor& t) {
  const std::vector<int32_t> v = t.to_vector<int32_t>();
  const int64_t width = t.dim(1);
  std::vector<std::vector<int32_t>> rows;
  for (int64_t r = 0; r < t.dim(0); ++r) {
    rows.emplace_back(v.begin() + r * width, v.begin() + (r + 1) * width);
  }
  return rows;
}

std::vector<std::vector<int32_t>> read_rows(TokenLoader& loader, int64_t batches, int64_t batch) {
  std::vector<std::vector<int32_t>> rows;
  for (int64_t i = 0; i < batches; ++i) {
    for (auto& r : rows_of(loader.next_batch(batch))) rows.push_back(std::move(r));
  }
  return rows;
}

// The token stream (and mask) the samples are windows of: the first seq_len tokens of each sample.
// Also checks that consecutive samples overlap by `extra` tokens.
void stream_of(TokenLoader& loader, int64_t samples, std::vector<int32_t>* tokens,
               std::vector<int32_t>* mask) {
  const int64_t s = loader.options().seq_len, extra = loader.options().extra;
  Tensor m;
  const Tensor t = loader.next_batch(samples, &m);
  ASSERT_EQ(t.dim(0), samples);
  ASSERT_EQ(t.dim(1), s + extra);
  ASSERT_EQ(m.dim(1), s + extra);
  const std::vector<int32_t> tv = t.to_vector<int32_t>(), mv = m.to_vector<int32_t>();
  for (int64_t i = 0; i < samples; ++i) {
    tokens->insert(tokens->end(), tv.begin() + i * (s + extra), tv.begin() + i * (s + extra) + s);
    mask->insert(mask->end(), mv.begin() + i * (s + extra), mv.begin() + i * (s + extra) + s);
    if (i + 1 < samples) {
      for (int64_t k = 0; k < extra; ++k) {
        ASSERT_EQ(tv[i * (s + extra) + s + k], tv[(i + 1) * (s + extra) + k])
            << "sample " << i << " look-ahead token " << k;
        ASSERT_EQ(mv[i * (s + extra) + s + k], mv[(i + 1) * (s + extra) + k]);
      }
    }
  }
}

// The complete documents of a stream (from <|bos|> to <|eos|>), decoded; the stream must begin
// with a document.
std::vector<std::string> documents_of(const std::vector<int32_t>& stream) {
  const Tokenizer tokenizer;
  std::vector<std::string> docs;
  EXPECT_EQ(stream.front(), Tokenizer::kBos);
  size_t start = 0;
  for (size_t i = 0; i < stream.size(); ++i) {
    if (stream[i] == Tokenizer::kBos) {
      start = i;
    } else if (stream[i] == Tokenizer::kEos) {
      absl::StatusOr<std::string> text =
          tokenizer.decode(absl::MakeConstSpan(stream).subspan(start + 1, i - start - 1));
      EXPECT_TRUE(text.ok()) << text.status();
      docs.push_back(*text);
    }
  }
  return docs;
}

// Checks an arithmetic document "What is A op B?<think>...</think><answer>R</answer>" against
// its own question, independently of data/tasks.cc, and returns its canonical form.
std::string check_arithmetic_document(const std::string& doc) {
  const size_t q = doc.find('?');
  EXPECT_TRUE(absl::StartsWith(doc, "What is ") && q != std::string::npos) << doc;
  if (q == std::string::npos) return "";
  const std::vector<std::string> parts = absl::StrSplit(doc.substr(8, q - 8), ' ');
  EXPECT_EQ(parts.size(), 3u) << doc;
  if (parts.size() != 3) return "";
  int64_t a = 0, b = 0;
  EXPECT_TRUE(absl::SimpleAtoi(parts[0], &a) && absl::SimpleAtoi(parts[2], &b)) << doc;
  const char op = parts[1][0];
  const int64_t expected = op == '+' ? a + b : a - b;
  const std::optional<std::string> answer = extract_answer(doc);
  EXPECT_TRUE(answer.has_value()) << doc;
  EXPECT_EQ(answer.value_or(""), absl::StrCat(expected)) << doc;
  EXPECT_TRUE(has_think_format(doc)) << doc;
  return op == '+' ? absl::StrCat("arithmetic:", std::min(a, b), "+", std::max(a, b))
                   : absl::StrCat("arithmetic:", a, "-", b);
}

TEST(EncodeDocument, BosPromptTargetEosAndAnswerMask) {
  const Tokenizer tokenizer;
  absl::StatusOr<std::vector<Task>> tasks = generate(TaskKind::kArithmetic, Split::kTrain, 3, 5);
  ASSERT_TRUE(tasks.ok()) << tasks.status();
  for (const Task& t : *tasks) {
    std::vector<int32_t> mask;
    const std::vector<int32_t> doc = encode_document(tokenizer, t, &mask);
    ASSERT_EQ(mask.size(), doc.size());
    EXPECT_EQ(doc.front(), Tokenizer::kBos);
    EXPECT_EQ(doc.back(), Tokenizer::kEos);
    EXPECT_EQ(*tokenizer.decode(absl::MakeConstSpan(doc).subspan(1, doc.size() - 2)),
              t.prompt + t.target);
    // The masked tokens are exactly the answer's characters.
    std::vector<int32_t> masked;
    for (size_t i = 0; i < doc.size(); ++i) {
      if (mask[i] == 1) masked.push_back(doc[i]);
      EXPECT_TRUE(mask[i] == 0 || mask[i] == 1);
    }
    EXPECT_EQ(*tokenizer.decode(masked), t.answer) << t.prompt << t.target;
    const std::vector<int32_t> prompt = encode_prompt(tokenizer, t);
    ASSERT_LT(prompt.size(), doc.size());
    EXPECT_TRUE(std::equal(prompt.begin(), prompt.end(), doc.begin())) << t.prompt;
    EXPECT_EQ(doc[prompt.size()], Tokenizer::kThinkBegin);
  }
}

TEST(TokenLoader, SamplesAreOverlappingWindowsOfPackedValidTrainDocuments) {
  TokenLoader loader = make_loader(arithmetic_options(/*train_problems=*/0));
  std::vector<int32_t> stream, mask;
  stream_of(loader, 200, &stream, &mask);
  const std::vector<std::string> docs = documents_of(stream);
  ASSERT_GT(docs.size(), 20u);
  for (const std::string& doc : docs) {
    const std::string canonical = check_arithmetic_document(doc);
    EXPECT_EQ(split_of(canonical), Split::kTrain) << doc;
  }
  // Documents are packed with nothing between them.
  for (size_t i = 0; i + 1 < stream.size(); ++i) {
    if (stream[i] == Tokenizer::kEos) {
      ASSERT_EQ(stream[i + 1], Tokenizer::kBos) << "at " << i;
    }
  }
  // The mask marks exactly the tokens between <answer> and </answer>.
  bool inside = false;
  for (size_t i = 0; i < stream.size(); ++i) {
    if (stream[i] == Tokenizer::kAnswerEnd) inside = false;
    ASSERT_EQ(mask[i], inside ? 1 : 0) << "token " << i;
    if (inside) {
      ASSERT_TRUE(stream[i] == '-' || (stream[i] >= '0' && stream[i] <= '9')) << "token " << i;
    }
    if (stream[i] == Tokenizer::kAnswerBegin) inside = true;
  }
}

TEST(TokenLoader, FixedPoolCyclesThroughDistinctProblemsInNewOrders) {
  constexpr int64_t kProblems = 40;
  TokenLoader loader = make_loader(arithmetic_options(kProblems));
  EXPECT_EQ(loader.epoch_documents(), kProblems);
  std::vector<int32_t> stream, mask;
  // 40 documents of at most ~150 tokens each, three times over.
  stream_of(loader, 3 * kProblems * 160 / 16, &stream, &mask);
  const std::vector<std::string> docs = documents_of(stream);
  ASSERT_GE(docs.size(), 3 * static_cast<size_t>(kProblems));
  std::vector<std::string> epochs[3];
  for (int e = 0; e < 3; ++e) {
    epochs[e].assign(docs.begin() + e * kProblems, docs.begin() + (e + 1) * kProblems);
  }
  std::set<std::string> canonical;
  for (const std::string& d : epochs[0]) canonical.insert(check_arithmetic_document(d));
  EXPECT_EQ(canonical.size(), static_cast<size_t>(kProblems)) << "problems repeat in an epoch";
  for (int e = 1; e < 3; ++e) {
    EXPECT_NE(epochs[e], epochs[0]) << "epoch " << e << " has the order of epoch 0";
    std::vector<std::string> a = epochs[0], b = epochs[e];
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    EXPECT_EQ(a, b) << "epoch " << e << " holds other problems than epoch 0";
  }
}

TEST(TokenLoader, DeterministicAndIndependentOfBatchSize) {
  for (int64_t problems : {int64_t{0}, int64_t{30}}) {
    TokenLoader a = make_loader(arithmetic_options(problems));
    TokenLoader b = make_loader(arithmetic_options(problems));
    TokenLoader other = make_loader(arithmetic_options(problems, /*seed=*/8));
    const auto rows_a = read_rows(a, 6, 4);
    EXPECT_EQ(rows_a, read_rows(b, 3, 8)) << "train_problems=" << problems;
    EXPECT_NE(rows_a, read_rows(other, 6, 4)) << "train_problems=" << problems;
  }
}

TEST(TokenLoader, ResumeFromStateGivesTheSameFollowingBatches) {
  for (int64_t problems : {int64_t{0}, int64_t{25}}) {
    LoaderOptions o = arithmetic_options(problems);
    o.seq_len = 64;
    TokenLoader a = make_loader(o);
    // Far enough to cross epochs (1024 fresh documents are ~100k tokens).
    read_rows(a, problems == 0 ? 200 : 20, 8);
    const LoaderState saved = a.state();
    EXPECT_EQ(saved.sample, problems == 0 ? 1600 : 160);
    EXPECT_GE(saved.epoch, 1) << "train_problems=" << problems;
    const auto expected = read_rows(a, 3, 8);

    absl::StatusOr<LoaderState> restored = LoaderState::from_words(saved.to_words());
    ASSERT_TRUE(restored.ok()) << restored.status();
    EXPECT_EQ(*restored, saved);
    TokenLoader b = make_loader(o);
    ASSERT_TRUE(b.set_state(*restored).ok());
    EXPECT_EQ(read_rows(b, 3, 8), expected) << "train_problems=" << problems;

    TokenLoader c = make_loader(o);
    c.skip_to(saved.sample);
    EXPECT_EQ(c.state(), saved) << "train_problems=" << problems;
  }
}

TEST(TokenLoader, SkipToFarIntoAFixedPoolMatchesReading) {
  LoaderOptions o = arithmetic_options(/*train_problems=*/3);
  TokenLoader reader = make_loader(o);
  read_rows(reader, 50, 10);  // ~8000 tokens: dozens of epochs of 3 documents
  TokenLoader skipper = make_loader(o);
  skipper.skip_to(500);
  EXPECT_EQ(skipper.state(), reader.state());
  EXPECT_EQ(read_rows(skipper, 2, 5), read_rows(reader, 2, 5));
}

TEST(TokenLoader, RanksTogetherReadWhatOneRankReads) {
  for (int64_t problems : {int64_t{0}, int64_t{20}}) {
    constexpr int64_t kWorld = 3, kBatch = 4, kSteps = 5;
    TokenLoader single = make_loader(arithmetic_options(problems));
    const auto all = read_rows(single, 1, kWorld * kBatch * kSteps);
    std::vector<std::vector<std::vector<int32_t>>> per_rank;
    for (int64_t r = 0; r < kWorld; ++r) {
      LoaderOptions o = arithmetic_options(problems);
      o.rank = r;
      o.world = kWorld;
      TokenLoader loader = make_loader(o);
      EXPECT_EQ(loader.state().sample, r);
      per_rank.push_back(read_rows(loader, kSteps, kBatch));
      EXPECT_EQ(loader.state().sample, r + kWorld * kBatch * kSteps);
    }
    // Step s of rank r, row j is global sample (s * kBatch + j) * kWorld + r.
    for (int64_t i = 0; i < kBatch * kSteps; ++i) {
      for (int64_t r = 0; r < kWorld; ++r) {
        ASSERT_EQ(per_rank[r][i], all[i * kWorld + r])
            << "rank " << r << " local sample " << i << " train_problems=" << problems;
      }
    }
  }
}

TEST(TokenLoader, SetStateRefusesForeignStates) {
  TokenLoader a = make_loader(arithmetic_options(0));
  a.next_batch(3);
  const LoaderState saved = a.state();

  TokenLoader other_seed = make_loader(arithmetic_options(0, /*seed=*/9));
  const absl::Status mismatch = other_seed.set_state(saved);
  EXPECT_EQ(mismatch.code(), absl::StatusCode::kFailedPrecondition) << mismatch;
  EXPECT_THAT(mismatch.message(), HasSubstr("other data options"));

  LoaderOptions ranked = arithmetic_options(0);
  ranked.rank = 1;
  ranked.world = 2;
  TokenLoader rank1 = make_loader(ranked);
  LoaderState even = saved;  // sample 3 belongs to rank 1 of 2; sample 4 does not
  even.sample = 4;
  even.fingerprint = rank1.state().fingerprint;
  EXPECT_EQ(rank1.set_state(even).code(), absl::StatusCode::kInvalidArgument);

  LoaderState bad_offset = saved;
  bad_offset.offset = 100000;
  const absl::Status offset = a.set_state(bad_offset);
  EXPECT_EQ(offset.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(offset.message(), HasSubstr("past the end of document"));
  LoaderState bad_doc = saved;
  bad_doc.doc = kFreshEpochProblems;
  EXPECT_EQ(a.set_state(bad_doc).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(LoaderState::from_words(std::vector<uint64_t>{1, 2, 3}).ok());
  // A refused state leaves the loader where it was.
  EXPECT_EQ(a.state(), saved);
}

TEST(TokenLoader, MixFollowsTheWeightsExactlyPerEpoch) {
  LoaderOptions o = arithmetic_options(/*train_problems=*/40);
  o.sources = {{TaskKind::kArithmetic, 3.0}, {TaskKind::kCountdown, 1.0}};
  o.seq_len = 64;
  TokenLoader loader = make_loader(o);
  std::vector<int32_t> stream, mask;
  stream_of(loader, 150, &stream, &mask);
  const std::vector<std::string> docs = documents_of(stream);
  ASSERT_GE(docs.size(), 40u);
  int arithmetic = 0, countdown = 0;
  for (size_t i = 0; i < 40; ++i) {
    if (absl::StartsWith(docs[i], "What is ")) ++arithmetic;
    if (absl::StartsWith(docs[i], "Using the numbers ")) ++countdown;
  }
  EXPECT_EQ(arithmetic, 30);
  EXPECT_EQ(countdown, 10);
}

TEST(TokenLoader, ReportsBadOptionsAndTooFewProblems) {
  LoaderOptions o = arithmetic_options(0);
  o.seq_len = 0;
  o.rank = 2;
  o.world = 2;
  o.sources = {{TaskKind::kArithmetic, 0.0}, {TaskKind::kArithmetic, 0.0}};
  const absl::Status s = TokenLoader::create(o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("seq_len: must be positive"));
  EXPECT_THAT(s.message(), HasSubstr("rank: must be in [0, world = 2)"));
  EXPECT_THAT(s.message(), HasSubstr("listed twice"));
  EXPECT_THAT(s.message(), HasSubstr("must not all be 0"));

  LoaderOptions small = arithmetic_options(/*train_problems=*/1000);
  small.task_options.arithmetic.max_digits = 1;
  small.task_options.arithmetic.ops = "+";
  const absl::Status few = TokenLoader::create(small).status();
  EXPECT_EQ(few.code(), absl::StatusCode::kResourceExhausted) << few;
  EXPECT_THAT(few.message(), HasSubstr("train_problems:"));
  EXPECT_THAT(few.message(), HasSubstr("distinct arithmetic problems"));
}

TEST(HeldOut, DistinctHeldOutProblemsMixedAndScoredByExactMatch) {
  LoaderOptions o = arithmetic_options(0);
  o.sources = {{TaskKind::kArithmetic, 1.0}, {TaskKind::kCountdown, 1.0}};
  absl::StatusOr<std::vector<Task>> tasks = held_out_tasks(o, 40);
  ASSERT_TRUE(tasks.ok()) << tasks.status();
  ASSERT_EQ(tasks->size(), 40u);
  std::set<std::string> canonical;
  int countdown = 0;
  for (const Task& t : *tasks) {
    EXPECT_EQ(split_of(t.canonical), Split::kHeldOut) << t.canonical;
    canonical.insert(t.canonical);
    countdown += t.kind == TaskKind::kCountdown;
  }
  EXPECT_EQ(canonical.size(), 40u);
  EXPECT_EQ(countdown, 20);
  // Interleaved, not all arithmetic first.
  EXPECT_TRUE(std::any_of(tasks->begin(), tasks->begin() + 20,
                          [](const Task& t) { return t.kind == TaskKind::kCountdown; }));
  absl::StatusOr<std::vector<Task>> again = held_out_tasks(o, 40);
  ASSERT_TRUE(again.ok());
  for (size_t i = 0; i < tasks->size(); ++i) EXPECT_EQ((*again)[i].prompt, (*tasks)[i].prompt);

  std::vector<std::string> completions;
  for (size_t i = 0; i < tasks->size(); ++i) {
    // The reference for the first half, a wrong answer for the second.
    completions.push_back(i < 20 ? (*tasks)[i].target : "<think></think><answer>x</answer>");
  }
  EXPECT_DOUBLE_EQ(exact_match_accuracy(*tasks, completions), 0.5);
  EXPECT_EQ(held_out_tasks(o, -1).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fathom::data
