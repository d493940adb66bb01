// Platform-independent integer hashing for everything that must be identical on every machine and
// compiler: data generation, the held-out split, parameter initialisation.
#pragma once

#include <cstdint>
#include <string_view>

namespace fathom {

// splitmix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

inline constexpr uint64_t kGoldenGamma = 0x9e3779b97f4a7c15ull;

// One splitmix64 step from state x: mix64(x + gamma). Counter-based streams call it on
// seed + index.
inline uint64_t splitmix64(uint64_t x) { return mix64(x + kGoldenGamma); }

// FNV-1a of the bytes of `text` (64-bit offset basis and prime).
inline uint64_t fnv1a(std::string_view text) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace fathom
