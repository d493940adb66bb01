#include "kernels/ops/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

#include "kernels/check.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"

namespace fathom {
namespace {

// DeepSeek-V3's find_correction_dim: the pair index whose wavelength completes `rotations`
// turns over the original context.
double correction_dim(double rotations, double dim, double base, double max_position) {
  return dim * std::log(max_position / (rotations * 2.0 * std::numbers::pi)) /
         (2.0 * std::log(base));
}

// Per-pair frequencies base^(-2i/d), blended by YaRN when configured (DeepSeek-V3's
// precompute_freqs_cis, in double).
std::vector<double> rope_frequencies(const RopeConfig& config) {
  const int64_t half = config.dim / 2;
  const double dim = static_cast<double>(config.dim);
  const double base = config.base;
  std::vector<double> freqs(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    freqs[i] = 1.0 / std::pow(base, static_cast<double>(2 * i) / dim);
  }
  if (!config.yarn) return freqs;
  const YarnConfig& yarn = *config.yarn;
  const double original = static_cast<double>(yarn.original_max_position);
  // find_correction_range, then linear_ramp_factor over the pair index.
  const double low = std::max(std::floor(correction_dim(yarn.beta_fast, dim, base, original)), 0.0);
  double high = std::min(std::ceil(correction_dim(yarn.beta_slow, dim, base, original)), dim - 1);
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < half; ++i) {
    const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
    const double smooth = 1.0 - ramp;
    freqs[i] = freqs[i] / yarn.factor * (1.0 - smooth) + freqs[i] * smooth;
  }
  return freqs;
}

}  // namespace

RopeTable make_rope_table(const RopeConfig& config, int64_t max_position, Device device) {
  constexpr const char* kOp = "make_rope_table";
  FATHOM_CHECK(config.dim >= 2 && config.dim % 2 == 0)
      << kOp << ": dim must be even and >= 2, got " << config.dim;
  FATHOM_CHECK(config.base > 1.0f && std::isfinite(config.base))
      << kOp << ": base must be finite and > 1, got " << config.base;
  FATHOM_CHECK(max_position >= 1) << kOp << ": max_position must be >= 1, got " << max_position;
  if (config.yarn) {
    const YarnConfig& y = *config.yarn;
    FATHOM_CHECK(y.factor > 0.0f && std::isfinite(y.factor))
        << kOp << ": yarn.factor must be positive, got " << y.factor;
    FATHOM_CHECK(y.original_max_position >= 1)
        << kOp << ": yarn.original_max_position must be >= 1, got " << y.original_max_position;
    FATHOM_CHECK(y.beta_fast > 0.0f && y.beta_slow > 0.0f)
        << kOp << ": yarn.beta_fast and yarn.beta_slow must be positive, got " << y.beta_fast
        << " and " << y.beta_slow;
    FATHOM_CHECK(std::isfinite(y.mscale))
        << kOp << ": yarn.mscale must be finite, got " << y.mscale;
  }

  const int64_t half = config.dim / 2;
  const std::vector<double> freqs = rope_frequencies(config);
  Tensor cos = Tensor::empty({max_position, half}, DType::kF32);
  Tensor sin = Tensor::empty({max_position, half}, DType::kF32);
  float* c = cos.data<float>();
  float* s = sin.data<float>();
#pragma omp parallel for schedule(static) if (max_position * half >= (1 << 15))
  for (int64_t p = 0; p < max_position; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(p) * freqs[i];
      c[p * half + i] = static_cast<float>(std::cos(angle));
      s[p * half + i] = static_cast<float>(std::sin(angle));
    }
  }

  RopeTable table;
  table.style = config.style;
  if (config.yarn) {
    const double m = 0.1 * config.yarn->mscale * std::log(config.yarn->factor) + 1.0;
    table.attention_scale = static_cast<float>(m * m);
  }
  table.cos = device.is_cpu() ? cos : cos.to(device);
  table.sin = device.is_cpu() ? sin : sin.to(device);
  return table;
}

void rope_apply(Tensor& x, const Tensor& positions, const RopeTable& table, bool inverse) {
  constexpr const char* kOp = "rope_apply";
  check_float_dtype(kOp, "x", x);
  FATHOM_CHECK(x.ndim() == 3) << kOp << ": x must be (T, H, Dh), got " << x.str();
  check_dtype(kOp, "table.cos", table.cos, DType::kF32);
  check_dtype(kOp, "table.sin", table.sin, DType::kF32);
  FATHOM_CHECK(table.cos.ndim() == 2 && table.cos.dim(1) >= 1)
      << kOp << ": table.cos must be (max_position, dim / 2), got " << table.cos.str();
  check_shape(kOp, "table.sin", table.sin, table.cos.shape());
  const int64_t max_position = table.cos.dim(0);
  const int64_t dim = 2 * table.cos.dim(1);
  FATHOM_CHECK(dim <= x.dim(2)) << kOp << ": table rotates " << dim << " dims but x " << x.str()
                                << " has heads of " << x.dim(2);
  check_dtype(kOp, "positions", positions, DType::kI32);
  check_shape(kOp, "positions", positions, {x.dim(0)});
  check_same_device(kOp, {&x, &positions, &table.cos, &table.sin});

  if (x.is_cuda()) {
    // No host check here: it would synchronise the stream on every call of every layer. The
    // kernel guards the table lookup itself (see kernels/cuda/rope.cu).
    cuda::rope_apply(x, positions, table, inverse);
    return;
  }
  const int32_t* pos = positions.data<int32_t>();
  for (int64_t t = 0; t < positions.numel(); ++t) {
    FATHOM_CHECK(pos[t] >= 0 && pos[t] < max_position)
        << kOp << ": positions[" << t << "] = " << pos[t] << " out of range [0, " << max_position
        << ") of table " << table.cos.str() << " for x " << x.str();
  }
  cpu::rope_apply(x, positions, table, inverse);
}

}  // namespace fathom
