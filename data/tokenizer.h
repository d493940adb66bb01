// Byte-level tokenizer with special tokens.
//
// Ids 0..255 are the raw bytes. The built-in special tokens follow (ids 256..262):
//   <|bos|> <|eos|> <|pad|> <think> </think> <answer> </answer>
// and then any user specials given to create(), in the order given. No merges: every byte that is
// not part of a special token is its own token, so any byte string (non-UTF-8, NUL bytes included)
// encodes and decodes back exactly.
//
// encode() turns each occurrence of a special token's text into its single id, taking the longest
// special that matches at a position; decode() writes specials back as their text. So
// decode(encode(s)) == s for every s. The converse does not hold: the ids of the bytes "<think>"
// decode to the same text as id kThinkBegin, and re-encode to kThinkBegin.
//
// A Tokenizer is immutable after construction and safe to share between threads.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace fathom::data {

class Tokenizer {
 public:
  static constexpr int32_t kNumBytes = 256;
  static constexpr int32_t kBos = 256;
  static constexpr int32_t kEos = 257;
  static constexpr int32_t kPad = 258;
  static constexpr int32_t kThinkBegin = 259;
  static constexpr int32_t kThinkEnd = 260;
  static constexpr int32_t kAnswerBegin = 261;
  static constexpr int32_t kAnswerEnd = 262;
  // Vocabulary size without user specials.
  static constexpr int32_t kBuiltinVocabSize = 263;
  // Text of the built-in specials; kBuiltinSpecials[id - kNumBytes].
  static constexpr std::array<std::string_view, kBuiltinVocabSize - kNumBytes> kBuiltinSpecials = {
      "<|bos|>", "<|eos|>", "<|pad|>", "<think>", "</think>", "<answer>", "</answer>"};

  // Built-in specials only: vocab_size() == kBuiltinVocabSize.
  Tokenizer();

  // Built-ins plus `extra_specials`, which get ids kBuiltinVocabSize, kBuiltinVocabSize + 1, ...
  // in order. Errors (InvalidArgument): an empty string, or a string equal to a built-in or to an
  // earlier extra special; the message names the offending string and its index.
  static absl::StatusOr<Tokenizer> create(absl::Span<const std::string> extra_specials);

  int32_t vocab_size() const { return kNumBytes + static_cast<int32_t>(specials_.size()); }

  // Every id is in [0, vocab_size()). Never fails.
  std::vector<int32_t> encode(std::string_view text) const;

  // Concatenates the bytes / special texts of `ids`. Error (OutOfRange) on an id outside
  // [0, vocab_size()); the message names the id, its position and the vocab size.
  absl::StatusOr<std::string> decode(absl::Span<const int32_t> ids) const;

  // The id of a special token's text. Error (NotFound) naming `text` when it is not a special.
  absl::StatusOr<int32_t> special_id(std::string_view text) const;

  bool is_special(int32_t id) const { return id >= kNumBytes && id < vocab_size(); }

 private:
  explicit Tokenizer(std::vector<std::string> specials);

  // specials_[id - kNumBytes] is the text of special `id`.
  std::vector<std::string> specials_;
  // Special ids grouped by the first byte of their text, longest text first.
  std::array<std::vector<int32_t>, kNumBytes> by_first_byte_;
};

}  // namespace fathom::data
