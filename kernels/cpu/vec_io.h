// 8-wide loads and stores between f32 / bf16 storage and AVX2 float vectors, for the CPU loops
// the compiler cannot vectorise by itself (those calling exp or sqrt). The bf16 store rounds to
// nearest even and maps NaN to 0x7FFF, bit-identical to float_to_bf16 in kernels/dtype.h, so a
// vector loop and its scalar tail round alike. Only defined when FATHOM_CPU_AVX2 is set
// (kernels/cpu/vec_math.h); callers keep a scalar loop for the tail and for other targets.
// Not for use outside kernels/cpu/.
#pragma once

#include <cstdint>

#include "kernels/cpu/vec_math.h"
#include "kernels/dtype.h"

namespace fathom::cpu {

#if FATHOM_CPU_AVX2
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }

inline __m256 load8(const bf16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }

inline void store8(bf16* p, __m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r =
      _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb)), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FFF), nan);
  // Values are below 2^16, so the signed-to-unsigned saturating pack keeps them; it packs within
  // 128-bit lanes, and the permute gathers the two useful quadwords.
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

// 1 / (1 + exp(-x)), with exp256 from vec_math.h.
inline __m256 sigmoid256(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), x));
  return _mm256_div_ps(one, _mm256_add_ps(one, e));
}
#endif

// The scalar form of sigmoid256 (same exp polynomial), for loop tails.
inline float sigmoid_approx(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

}  // namespace fathom::cpu
