// CPU AdamW (kernels/ops/optim.h): one pass over param, grad and the two moments. The update
// uses the f32 moments before they are rounded for storage.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_io.h"

namespace fathom::cpu {
namespace {

constexpr int64_t kParallelMin = 1 << 15;
constexpr int64_t kBlock = 1 << 14;

struct AdamWScalars {
  float lr, b1, b2, eps, wd;
  float inv_bc1;  // 1 / (1 - b1^t)
  float inv_bc2;  // 1 / (1 - b2^t)
};

template <typename M>
void adamw_range(float* p, const float* g, M* m, M* v, int64_t begin, int64_t end,
                 const AdamWScalars& k) {
  int64_t i = begin;
#if FATHOM_CPU_AVX2
  const __m256 b1 = _mm256_set1_ps(k.b1), c1 = _mm256_set1_ps(1.0f - k.b1);
  const __m256 b2 = _mm256_set1_ps(k.b2), c2 = _mm256_set1_ps(1.0f - k.b2);
  const __m256 inv_bc1 = _mm256_set1_ps(k.inv_bc1), inv_bc2 = _mm256_set1_ps(k.inv_bc2);
  const __m256 eps = _mm256_set1_ps(k.eps), wd = _mm256_set1_ps(k.wd), lr = _mm256_set1_ps(k.lr);
  for (; i + 8 <= end; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    const __m256 pv = _mm256_loadu_ps(p + i);
    const __m256 mv = _mm256_add_ps(_mm256_mul_ps(b1, load8(m + i)), _mm256_mul_ps(c1, gv));
    const __m256 vv =
        _mm256_add_ps(_mm256_mul_ps(b2, load8(v + i)), _mm256_mul_ps(c2, _mm256_mul_ps(gv, gv)));
    store8(m + i, mv);
    store8(v + i, vv);
    const __m256 denom = _mm256_add_ps(_mm256_sqrt_ps(_mm256_mul_ps(vv, inv_bc2)), eps);
    const __m256 step =
        _mm256_add_ps(_mm256_div_ps(_mm256_mul_ps(mv, inv_bc1), denom), _mm256_mul_ps(wd, pv));
    _mm256_storeu_ps(p + i, _mm256_sub_ps(pv, _mm256_mul_ps(lr, step)));
  }
#endif
  for (; i < end; ++i) {
    const float gi = g[i];
    const float mi = k.b1 * to_float(m[i]) + (1.0f - k.b1) * gi;
    const float vi = k.b2 * to_float(v[i]) + (1.0f - k.b2) * (gi * gi);
    m[i] = from_float<M>(mi);
    v[i] = from_float<M>(vi);
    const float denom = std::sqrt(vi * k.inv_bc2) + k.eps;
    p[i] = p[i] - k.lr * ((mi * k.inv_bc1) / denom + k.wd * p[i]);
  }
}

template <typename M>
void adamw_typed(float* p, const float* g, M* m, M* v, int64_t n, const AdamWScalars& k) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t b = 0; b < blocks; ++b) {
    adamw_range(p, g, m, v, b * kBlock, std::min(n, (b + 1) * kBlock), k);
  }
}

}  // namespace

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                  const AdamWConfig& config) {
  const double t = static_cast<double>(config.step);
  const AdamWScalars k{
      .lr = config.lr,
      .b1 = config.beta1,
      .b2 = config.beta2,
      .eps = config.eps,
      .wd = config.weight_decay,
      .inv_bc1 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(config.beta1), t))),
      .inv_bc2 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(config.beta2), t))),
  };
  float* p = param.data<float>();
  const float* g = grad.data<float>();
  if (m.dtype() == DType::kBF16) {
    adamw_typed(p, g, m.data<bf16>(), v.data<bf16>(), param.numel(), k);
  } else {
    adamw_typed(p, g, m.data<float>(), v.data<float>(), param.numel(), k);
  }
}

}  // namespace fathom::cpu
