// Vectorised exp / max / sum over float rows for the softmax-style loops of the CPU backend
// (cross-entropy, attention). exp is the Cephes single-precision polynomial (at most 1.3 ulp from
// the exact value, measured over [-87, 88]); arguments below -87 give exactly 0, which softmax
// rows (shifted by their max) only meet for terms that cannot change a float sum; NaN stays NaN.
// Without AVX2 the same functions are scalar, using std::exp.
// Not for use outside kernels/cpu/.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define FATHOM_CPU_AVX2 1
#else
#define FATHOM_CPU_AVX2 0
#endif

namespace fathom::cpu {

#if FATHOM_CPU_AVX2
inline __m256 exp256(__m256 x) {
  const __m256 kHi = _mm256_set1_ps(88.3762626647949f);
  const __m256 kLo = _mm256_set1_ps(-87.0f);
  const __m256 underflow = _mm256_cmp_ps(x, kLo, _CMP_LT_OQ);
  // Operand order keeps NaN: min/max return the second operand when either is NaN.
  x = _mm256_min_ps(kHi, x);
  x = _mm256_max_ps(kLo, x);
  // x = n ln2 + r, |r| <= ln2 / 2, with ln2 split in two for an exact n * ln2.
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(underflow, y);
}

inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax256(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Loads the first n < 8 floats of p, padding with `fill`.
inline __m256 load_partial(const float* p, int64_t n, float fill) {
  alignas(32) float tmp[8];
  for (int i = 0; i < 8; ++i) tmp[i] = i < n ? p[i] : fill;
  return _mm256_load_ps(tmp);
}
#endif

// exp(x) with the same polynomial as the vector path.
inline float exp_approx(float x) {
#if FATHOM_CPU_AVX2
  return _mm256_cvtss_f32(exp256(_mm256_set1_ps(x)));
#else
  return std::exp(x);
#endif
}

// max(x[0..n)); -inf for n == 0.
inline float row_max(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
#if FATHOM_CPU_AVX2
  __m256 vm = _mm256_set1_ps(m);
  for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
  m = hmax256(vm);
#endif
  for (; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

// sum over i of exp(x[i] - shift), x unchanged.
inline float exp_sum(const float* x, int64_t n, float shift) {
  int64_t i = 0;
#if FATHOM_CPU_AVX2
  const __m256 vs = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    acc = _mm256_add_ps(acc, exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs)));
  }
  if (i < n) {
    const __m256 t = exp256(_mm256_sub_ps(load_partial(x + i, n - i, -INFINITY), vs));
    acc = _mm256_add_ps(acc, t);
  }
  return hsum256(acc);
#else
  float s = 0.0f;
  for (; i < n; ++i) s += std::exp(x[i] - shift);
  return s;
#endif
}

// x[i] = exp(x[i] - shift) * mul; returns the sum of exp(x[i] - shift) (before mul).
inline float exp_inplace(float* x, int64_t n, float shift, float mul) {
  int64_t i = 0;
#if FATHOM_CPU_AVX2
  const __m256 vs = _mm256_set1_ps(shift);
  const __m256 vm = _mm256_set1_ps(mul);
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
    acc = _mm256_add_ps(acc, e);
    _mm256_storeu_ps(x + i, _mm256_mul_ps(e, vm));
  }
  float s = hsum256(acc);
#else
  float s = 0.0f;
#endif
  for (; i < n; ++i) {
    const float e = exp_approx(x[i] - shift);
    s += e;
    x[i] = e * mul;
  }
  return s;
}

}  // namespace fathom::cpu
