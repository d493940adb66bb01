#include "model/module.h"

#include <cmath>
#include <utility>

#include "kernels/hash.h"
#include "kernels/ops/elementwise.h"

namespace fathom::model {
namespace {

// A uniform double in (0, 1) from the 53 high bits of a 64-bit value.
double open_unit(uint64_t bits) { return (static_cast<double>(bits >> 11) + 0.5) * 0x1.0p-53; }

}  // namespace

Parameter make_parameter(std::string name, absl::Span<const int64_t> shape, Device device,
                         bool weight_decay) {
  Parameter p;
  p.name = std::move(name);
  p.value = Tensor::zeros(shape, DType::kF32, device);
  p.grad = Tensor::zeros(shape, DType::kF32, device);
  p.weight_decay = weight_decay;
  return p;
}

void init_normal(Parameter& p, uint64_t seed, double std, int64_t element_offset) {
  const uint64_t key = splitmix64(seed ^ fnv1a(p.name));
  const int64_t n = p.value.numel();
  std::vector<float> v(static_cast<size_t>(n));
  // Box-Muller, one normal per element from two uniforms at that element's global index.
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t index = static_cast<uint64_t>(element_offset + i);
    const double u1 = open_unit(splitmix64(key + 2 * index));
    const double u2 = open_unit(splitmix64(key + 2 * index + 1));
    v[i] = static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2) * std);
  }
  p.value.copy_from(Tensor::from_floats(v, p.value.shape()));
  ++p.version;
}

void init_constant(Parameter& p, float v) {
  fill(p.value, v);
  ++p.version;
}

void WeightGradStore::push(std::function<void()> fn) { pending_.push_back(std::move(fn)); }

void WeightGradStore::flush() {
  if (pending_.empty()) return;
  queue_.push_back(std::move(pending_));
  pending_.clear();
}

void WeightGradStore::pop() {
  FATHOM_CHECK(!queue_.empty()) << "WeightGradStore::pop: no flushed weight-gradient work";
  std::vector<std::function<void()>> entry = std::move(queue_.front());
  queue_.pop_front();
  for (auto& fn : entry) fn();
}

void WeightGradStore::run_all() {
  flush();
  while (!queue_.empty()) pop();
}

void run_or_defer(WeightGradStore* store, std::function<void()> fn) {
  if (store != nullptr) {
    store->push(std::move(fn));
  } else {
    fn();
  }
}

}  // namespace fathom::model
