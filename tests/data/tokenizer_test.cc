#include "data/tokenizer.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"

namespace fathom::data {
namespace {

using T = Tokenizer;

std::string decode_ok(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  absl::StatusOr<std::string> s = tok.decode(ids);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : std::string();
}

void expect_round_trip(const Tokenizer& tok, const std::string& text) {
  const std::vector<int32_t> ids = tok.encode(text);
  for (int32_t id : ids) {
    ASSERT_GE(id, 0) << "text=\"" << absl::CEscape(text) << "\"";
    ASSERT_LT(id, tok.vocab_size()) << "text=\"" << absl::CEscape(text) << "\"";
  }
  EXPECT_EQ(decode_ok(tok, ids), text) << "text=\"" << absl::CEscape(text) << "\"";
}

TEST(Tokenizer, BuiltinVocabulary) {
  const Tokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 263);
  EXPECT_EQ(T::kBuiltinVocabSize, 263);
  const std::vector<std::pair<std::string, int32_t>> specials = {
      {"<|bos|>", T::kBos},        {"<|eos|>", T::kEos},       {"<|pad|>", T::kPad},
      {"<think>", T::kThinkBegin}, {"</think>", T::kThinkEnd}, {"<answer>", T::kAnswerBegin},
      {"</answer>", T::kAnswerEnd}};
  for (const auto& [text, id] : specials) {
    EXPECT_EQ(tok.encode(text), std::vector<int32_t>{id}) << text;
    EXPECT_EQ(decode_ok(tok, {id}), text) << id;
    absl::StatusOr<int32_t> looked_up = tok.special_id(text);
    ASSERT_TRUE(looked_up.ok()) << looked_up.status();
    EXPECT_EQ(*looked_up, id) << text;
    EXPECT_TRUE(tok.is_special(id)) << id;
  }
  EXPECT_FALSE(tok.is_special(255));
  EXPECT_FALSE(tok.is_special(263));
  absl::StatusOr<int32_t> missing = tok.special_id("<nope>");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("<nope>"), std::string::npos) << missing.status();
}

TEST(Tokenizer, PlainBytesAreTheirOwnIds) {
  const Tokenizer tok;
  EXPECT_EQ(tok.encode("Hi 7"), (std::vector<int32_t>{'H', 'i', ' ', '7'}));
  EXPECT_EQ(tok.encode(std::string("\x00\xff", 2)), (std::vector<int32_t>{0, 255}));
  EXPECT_TRUE(tok.encode("").empty());
}

TEST(Tokenizer, AllBytesRoundTrip) {
  const Tokenizer tok;
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const std::vector<int32_t> ids = tok.encode(all);
  ASSERT_EQ(ids.size(), 256u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[b], b) << "byte " << b;
  EXPECT_EQ(decode_ok(tok, ids), all);
  // Every single byte alone, and backwards.
  for (int b = 0; b < 256; ++b) expect_round_trip(tok, std::string(1, static_cast<char>(b)));
  expect_round_trip(tok, std::string(all.rbegin(), all.rend()));
}

TEST(Tokenizer, RandomBytesRoundTrip) {
  const Tokenizer tok;
  std::mt19937 gen(12345);
  std::uniform_int_distribution<int> byte(0, 255), length(0, 200);
  for (int trial = 0; trial < 500; ++trial) {
    std::string s;
    const int n = length(gen);
    for (int i = 0; i < n; ++i) s.push_back(static_cast<char>(byte(gen)));
    expect_round_trip(tok, s);
  }
}

TEST(Tokenizer, RandomTextWithSpecialsRoundTrips) {
  // Mixes specials, fragments of specials and bytes that start specials ('<', '|') into
  // random bytes, so the matcher sees every near miss.
  const Tokenizer tok;
  std::vector<std::string> pieces = {"<think>", "</think>", "<answer>", "</answer>", "<|bos|>",
                                     "<|eos|>", "<|pad|>",  "<",        "</",        "<think",
                                     "answer>", "<|",       "|>",       "<|bos"};
  pieces.push_back(std::string(1, '\0'));
  std::mt19937 gen(777);
  std::uniform_int_distribution<int> pick(0, static_cast<int>(pieces.size()) + 3), byte(0, 255);
  for (int trial = 0; trial < 500; ++trial) {
    std::string s;
    for (int i = 0; i < 30; ++i) {
      const int k = pick(gen);
      if (k < static_cast<int>(pieces.size())) {
        s += pieces[k];
      } else {
        s.push_back(static_cast<char>(byte(gen)));
      }
    }
    expect_round_trip(tok, s);
  }
}

TEST(Tokenizer, SpecialsInsideText) {
  const Tokenizer tok;
  const std::vector<int32_t> ids = tok.encode("a<think>b</think><answer>42</answer>");
  const std::vector<int32_t> want = {'a', T::kThinkBegin, 'b', T::kThinkEnd, T::kAnswerBegin, '4',
                                     '2', T::kAnswerEnd};
  EXPECT_EQ(ids, want);
}

TEST(Tokenizer, AdjacentSpecials) {
  const Tokenizer tok;
  const std::string text = "<|bos|><think></think><|eos|><|eos|><|pad|>";
  const std::vector<int32_t> want = {T::kBos, T::kThinkBegin, T::kThinkEnd,
                                     T::kEos, T::kEos,        T::kPad};
  EXPECT_EQ(tok.encode(text), want);
  EXPECT_EQ(decode_ok(tok, want), text);
}

TEST(Tokenizer, IncompleteSpecialsStayBytes) {
  const Tokenizer tok;
  EXPECT_EQ(tok.encode("<think"), (std::vector<int32_t>{'<', 't', 'h', 'i', 'n', 'k'}));
  EXPECT_EQ(tok.encode("<<think>"), (std::vector<int32_t>{'<', T::kThinkBegin}));
  EXPECT_EQ(tok.encode("<|eos>"), (std::vector<int32_t>{'<', '|', 'e', 'o', 's', '>'}));
}

TEST(Tokenizer, SpelledOutSpecialReencodesAsTheSpecial) {
  // Byte ids that spell a special decode to its text; encoding that text gives the special id.
  const Tokenizer tok;
  const std::vector<int32_t> spelled = {'<', 't', 'h', 'i', 'n', 'k', '>'};
  EXPECT_EQ(decode_ok(tok, spelled), "<think>");
  EXPECT_EQ(tok.encode(decode_ok(tok, spelled)), std::vector<int32_t>{T::kThinkBegin});
}

TEST(Tokenizer, ExtraSpecialsGetIdsInOrderAndLongestMatchWins) {
  const std::string ff_nul("\xff\x00", 2);  // a special may hold any bytes, NUL included
  absl::StatusOr<Tokenizer> made = Tokenizer::create({"<tool>", "<tool>call", "<think>!", ff_nul});
  ASSERT_TRUE(made.ok()) << made.status();
  const Tokenizer& tok = *made;
  EXPECT_EQ(tok.vocab_size(), 267);
  EXPECT_EQ(*tok.special_id("<tool>"), 263);
  EXPECT_EQ(*tok.special_id("<tool>call"), 264);
  EXPECT_EQ(*tok.special_id("<think>!"), 265);
  EXPECT_EQ(*tok.special_id(ff_nul), 266);
  EXPECT_EQ(tok.encode("<tool>calls"), (std::vector<int32_t>{264, 's'}));
  EXPECT_EQ(tok.encode("<tool>cal"), (std::vector<int32_t>{263, 'c', 'a', 'l'}));
  // Longer than the built-in "<think>" it extends.
  EXPECT_EQ(tok.encode("<think>!<think>?"), (std::vector<int32_t>{265, T::kThinkBegin, '?'}));
  EXPECT_EQ(tok.encode("a\xff"), (std::vector<int32_t>{'a', 255}));
  EXPECT_EQ(tok.encode("a" + ff_nul + ff_nul), (std::vector<int32_t>{'a', 266, 266}));
  EXPECT_EQ(decode_ok(tok, {264, 266, T::kEos}), "<tool>call" + ff_nul + "<|eos|>");
  for (const std::string& s : {"x<tool>call<tool><think>!</think>\xff" + ff_nul + "\xfe",
                               "<tool>ca<tool>calll\xff" + ff_nul + ff_nul}) {
    expect_round_trip(tok, s);
  }
}

TEST(Tokenizer, ExtraSpecialValidationNamesTheBadOne) {
  {
    absl::StatusOr<Tokenizer> t = Tokenizer::create({"<a>", ""});
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(t.status().message().find("#1"), std::string::npos) << t.status();
    EXPECT_NE(t.status().message().find("empty"), std::string::npos) << t.status();
  }
  {
    absl::StatusOr<Tokenizer> t = Tokenizer::create({"<answer>"});
    ASSERT_FALSE(t.ok());
    EXPECT_NE(t.status().message().find("\"<answer>\""), std::string::npos) << t.status();
    EXPECT_NE(t.status().message().find("built-in"), std::string::npos) << t.status();
  }
  {
    absl::StatusOr<Tokenizer> t = Tokenizer::create({"<x>", "<y>", "<x>"});
    ASSERT_FALSE(t.ok());
    EXPECT_NE(t.status().message().find("#2 \"<x>\""), std::string::npos) << t.status();
    EXPECT_NE(t.status().message().find("#0"), std::string::npos) << t.status();
  }
  EXPECT_TRUE(Tokenizer::create({}).ok());
}

TEST(Tokenizer, DecodeOutOfRangeNamesIdAndVocabSize) {
  const Tokenizer tok;
  absl::StatusOr<std::string> s = tok.decode({'a', 263});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(s.status().message().find("token id 263"), std::string::npos) << s.status();
  EXPECT_NE(s.status().message().find("vocab size 263"), std::string::npos) << s.status();
  EXPECT_NE(s.status().message().find("position 1"), std::string::npos) << s.status();

  s = tok.decode({-1});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("token id -1"), std::string::npos) << s.status();

  // With an extra special the vocab grows by one: 263 decodes, 264 does not.
  absl::StatusOr<Tokenizer> extra = Tokenizer::create({"<x>"});
  ASSERT_TRUE(extra.ok());
  EXPECT_EQ(decode_ok(*extra, {263}), "<x>");
  s = extra->decode({264});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("token id 264"), std::string::npos) << s.status();
  EXPECT_NE(s.status().message().find("vocab size 264"), std::string::npos) << s.status();
}

}  // namespace
}  // namespace fathom::data
