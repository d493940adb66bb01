// Gradient checks for layers (CONVENTIONS.md 6): analytic gradients against central finite
// differences of the layer's own forward.
//
// The scalar is loss = sum(probe * y), accumulated in double, with a fixed random probe (never zeros)
// so every output element matters. Layers compute in f32, so the step is large enough (eps ~1e-2)
// that f32 rounding in the forward stays far below the difference quotient, and the tolerance is
// relative to the largest sampled gradient of the tensor. Up to `max_elements` elements per tensor
// are checked: evenly spaced ones plus the largest analytic gradient.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace fathom::testing {

// sum(probe * y) in double. y, probe: same element count, host or device.
inline double probe_loss(const Tensor& y, const Tensor& probe) {
  const std::vector<float> a = y.to_floats();
  const std::vector<float> b = probe.to_floats();
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

struct GradCheckOptions {
  double eps = 1e-2;
  double rtol = 3e-2;
  // Elementwise floor, as a fraction of the tensor's largest |finite difference|.
  double atol_fraction = 1e-2;
  int max_elements = 24;
};

// `x` is a CPU f32 tensor the loss depends on (an input or a parameter value); `analytic` holds
// d loss / d x. loss_fn recomputes the loss from scratch (forward only).
inline void expect_gradient_matches(const std::string& name, Tensor x, const Tensor& analytic,
                                    const std::function<double()>& loss_fn,
                                    GradCheckOptions options = {}) {
  ASSERT_EQ(x.numel(), analytic.numel()) << name;
  ASSERT_FALSE(x.is_cuda()) << name << ": gradient checks run on CPU tensors";
  const std::vector<float> a = analytic.to_floats();
  const int64_t n = x.numel();
  std::vector<int64_t> picks;
  const int64_t stride = std::max<int64_t>(1, n / options.max_elements);
  for (int64_t i = 0; i < n && static_cast<int>(picks.size()) < options.max_elements; i += stride) {
    picks.push_back(i);
  }
  picks.push_back(std::max_element(a.begin(), a.end(),
                                   [](float p, float q) { return std::abs(p) < std::abs(q); }) -
                  a.begin());
  float* data = x.data<float>();
  std::vector<double> fd(picks.size());
  double scale = 0;
  for (size_t k = 0; k < picks.size(); ++k) {
    const int64_t i = picks[k];
    const float saved = data[i];
    data[i] = static_cast<float>(saved + options.eps);
    const double up = loss_fn();
    data[i] = static_cast<float>(saved - options.eps);
    const double down = loss_fn();
    data[i] = saved;
    // The step actually taken in f32.
    const double h = (static_cast<double>(static_cast<float>(saved + options.eps)) -
                      static_cast<float>(saved - options.eps));
    fd[k] = (up - down) / h;
    scale = std::max(scale, std::abs(fd[k]));
  }
  const double atol = options.atol_fraction * scale + 1e-7;
  int bad = 0;
  for (size_t k = 0; k < picks.size(); ++k) {
    const double err = std::abs(a[picks[k]] - fd[k]);
    if (err > atol + options.rtol * std::abs(fd[k])) {
      if (bad < 5) {
        ADD_FAILURE() << name << "[" << picks[k] << "]: analytic " << a[picks[k]]
                      << " vs finite difference " << fd[k] << " (atol " << atol << ", rtol "
                      << options.rtol << ", shape " << x.str() << ")";
      }
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0) << name << ": " << bad << " of " << picks.size() << " sampled elements differ";
  EXPECT_GT(scale, 0.0) << name << ": every sampled finite difference is zero; the check is vacuous";
}

}  // namespace fathom::testing
