#include "data/tokenizer.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace fathom::data {
namespace {

std::vector<std::string> builtin_specials() {
  return std::vector<std::string>(Tokenizer::kBuiltinSpecials.begin(),
                                  Tokenizer::kBuiltinSpecials.end());
}

}  // namespace

Tokenizer::Tokenizer() : Tokenizer(builtin_specials()) {}

Tokenizer::Tokenizer(std::vector<std::string> specials) : specials_(std::move(specials)) {
  for (size_t i = 0; i < specials_.size(); ++i) {
    const auto first = static_cast<unsigned char>(specials_[i][0]);
    by_first_byte_[first].push_back(kNumBytes + static_cast<int32_t>(i));
  }
  for (std::vector<int32_t>& ids : by_first_byte_) {
    // Longest first, so the first match while encoding is the longest one.
    std::stable_sort(ids.begin(), ids.end(), [this](int32_t a, int32_t b) {
      return specials_[a - kNumBytes].size() > specials_[b - kNumBytes].size();
    });
  }
}

absl::StatusOr<Tokenizer> Tokenizer::create(absl::Span<const std::string> extra_specials) {
  std::vector<std::string> specials = builtin_specials();
  for (size_t i = 0; i < extra_specials.size(); ++i) {
    const std::string& s = extra_specials[i];
    if (s.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer: extra special token #", i, " is empty"));
    }
    const auto it = std::find(specials.begin(), specials.end(), s);
    if (it != specials.end()) {
      const size_t j = static_cast<size_t>(it - specials.begin());
      const std::string other =
          j < kBuiltinSpecials.size()
              ? absl::StrCat("the built-in special token (id ", kNumBytes + j, ")")
              : absl::StrCat("extra special token #", j - kBuiltinSpecials.size());
      return absl::InvalidArgumentError(absl::StrCat("tokenizer: extra special token #", i, " \"",
                                                     absl::CEscape(s), "\" duplicates ", other));
    }
    specials.push_back(s);
  }
  return Tokenizer(std::move(specials));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    const auto byte = static_cast<unsigned char>(text[pos]);
    int32_t match = -1;
    for (int32_t id : by_first_byte_[byte]) {
      if (text.substr(pos).starts_with(specials_[id - kNumBytes])) {
        match = id;
        break;
      }
    }
    if (match >= 0) {
      ids.push_back(match);
      pos += specials_[match - kNumBytes].size();
    } else {
      ids.push_back(byte);
      ++pos;
    }
  }
  return ids;
}

absl::StatusOr<std::string> Tokenizer::decode(absl::Span<const int32_t> ids) const {
  std::string text;
  text.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab_size()) {
      return absl::OutOfRangeError(absl::StrCat("tokenizer: token id ", id, " at position ", i,
                                                " is out of range for vocab size ", vocab_size()));
    }
    if (id < kNumBytes) {
      text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
    } else {
      text += specials_[id - kNumBytes];
    }
  }
  return text;
}

absl::StatusOr<int32_t> Tokenizer::special_id(std::string_view text) const {
  for (size_t i = 0; i < specials_.size(); ++i) {
    if (specials_[i] == text) return kNumBytes + static_cast<int32_t>(i);
  }
  return absl::NotFoundError(
      absl::StrCat("tokenizer: \"", absl::CEscape(absl::string_view(text.data(), text.size())),
                   "\" is not a special token"));
}

}  // namespace fathom::data
