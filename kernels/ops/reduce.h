// Reductions, global gradient norm and clipping.
#pragma once

#include <cstdint>

#include "absl/types/span.h"
#include "kernels/tensor.h"

namespace fathom {

enum class Reduce : uint8_t { kSum, kMean, kMax, kSumSquares };

// Over the last dim: x (T, D) f32/bf16 -> out (T) f32 (leading dims flattened).
void reduce_rows(const Tensor& x, Reduce op, Tensor& out);
// Over all elements, accumulated in double. An empty tensor gives 0 (kMax: -inf).
double reduce_all(const Tensor& x, Reduce op);

// sqrt(sum over tensors of sum(t^2)), accumulated in double. Tensors f32/bf16, any devices.
double global_norm(absl::Span<const Tensor* const> tensors);
// Scales every gradient by min(1, max_norm / (norm + 1e-6)) and returns the norm before
// clipping. max_norm > 0. A non-finite norm leaves the gradients untouched and is returned so
// the caller can skip the step.
double clip_grad_norm(absl::Span<Tensor* const> grads, double max_norm);

}  // namespace fathom
