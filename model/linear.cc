#include "model/linear.h"

#include <utility>
#include <vector>

#include "kernels/ops/elementwise.h"
#include "kernels/ops/gemm.h"
#include "kernels/ops/index.h"

namespace fathom::model {
namespace {

Tensor to_bf16(const Tensor& x) {
  Tensor out = Tensor::empty(x.shape(), DType::kBF16, x.device());
  cast(x, out);
  return out;
}

Tensor transposed(const Tensor& x) {
  Shape shape = x.shape();
  std::swap(shape[shape.size() - 1], shape[shape.size() - 2]);
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  transpose(x, out);
  return out;
}

}  // namespace

Fp8Tensor quantize_transposed_1x128(const Tensor& x) {
  return quantize_fp8(transposed(x), ScaleBlock::k1x128);
}

void WorkingWeights::refresh(const Parameter& weight, TrainingPrecision precision) {
  if (version == weight.version) return;
  if (precision == TrainingPrecision::kBf16) {
    bf16 = to_bf16(weight.value);
  } else if (precision == TrainingPrecision::kFp8) {
    q = quantize_fp8(weight.value, ScaleBlock::k128x128);
    tq = quantize_fp8(transposed(weight.value), ScaleBlock::k128x128);
  }
  version = weight.version;
}

// ---- Linear ----

Linear::Linear(std::string name, int64_t out_features, int64_t in_features,
               TrainingPrecision precision, Device device)
    : weight(make_parameter(std::move(name), {out_features, in_features}, device)),
      precision_(precision) {}

void Linear::forward(const Tensor& x, Tensor& y) const {
  working_.refresh(weight, precision_);
  switch (precision_) {
    case TrainingPrecision::kFp32:
      gemm(x, weight.value, y, {.trans_b = true});
      break;
    case TrainingPrecision::kBf16:
      gemm(to_bf16(x), working_.bf16, y, {.trans_b = true});
      break;
    case TrainingPrecision::kFp8:
      gemm_fp8(quantize_fp8(x, ScaleBlock::k1x128), working_.q, y);
      break;
  }
}

void Linear::backward_input(const Tensor& dy, Tensor& dx) const {
  working_.refresh(weight, precision_);
  switch (precision_) {
    case TrainingPrecision::kFp32:
      gemm(dy, weight.value, dx);
      break;
    case TrainingPrecision::kBf16:
      gemm(to_bf16(dy), working_.bf16, dx);
      break;
    case TrainingPrecision::kFp8:
      gemm_fp8(quantize_fp8(dy, ScaleBlock::k1x128), working_.tq, dx);
      break;
  }
}

void Linear::backward_weight(const Tensor& dy, const Tensor& x) {
  switch (precision_) {
    case TrainingPrecision::kFp32:
      gemm(dy, x, weight.grad, {.trans_a = true, .accumulate = true});
      break;
    case TrainingPrecision::kBf16:
      gemm(to_bf16(dy), to_bf16(x), weight.grad, {.trans_a = true, .accumulate = true});
      break;
    case TrainingPrecision::kFp8:
      gemm_fp8(quantize_transposed_1x128(dy), quantize_transposed_1x128(x), weight.grad,
               /*accumulate=*/true);
      break;
  }
}

void Linear::backward_weight_or_defer(const Tensor& dy, const Tensor& x, WeightGradStore* store) {
  run_or_defer(store, [this, dy, x] { backward_weight(dy, x); });
}

// ---- GroupedLinear ----

GroupedLinear::GroupedLinear(std::string name, int64_t groups, int64_t out_features,
                             int64_t in_features, TrainingPrecision precision, Device device)
    : weight(make_parameter(std::move(name), {groups, out_features, in_features}, device)),
      precision_(precision) {
  weight.is_expert = true;
}

void GroupedLinear::forward(const Tensor& x, absl::Span<const int64_t> counts, Tensor& y) const {
  working_.refresh(weight, precision_);
  switch (precision_) {
    case TrainingPrecision::kFp32:
      grouped_gemm(x, weight.value, counts, y);
      break;
    case TrainingPrecision::kBf16:
      grouped_gemm(to_bf16(x), working_.bf16, counts, y);
      break;
    case TrainingPrecision::kFp8:
      grouped_gemm_fp8(quantize_fp8(x, ScaleBlock::k1x128), working_.q, counts, y);
      break;
  }
}

void GroupedLinear::backward_input(const Tensor& dy, absl::Span<const int64_t> counts,
                                   Tensor& dx) const {
  working_.refresh(weight, precision_);
  switch (precision_) {
    case TrainingPrecision::kFp32:
      grouped_gemm(dy, weight.value, counts, dx, {.trans_w = false});
      break;
    case TrainingPrecision::kBf16:
      grouped_gemm(to_bf16(dy), working_.bf16, counts, dx, {.trans_w = false});
      break;
    case TrainingPrecision::kFp8:
      grouped_gemm_fp8(quantize_fp8(dy, ScaleBlock::k1x128), working_.tq, counts, dx);
      break;
  }
}

void GroupedLinear::backward_weight(const Tensor& dy, const Tensor& x,
                                    absl::Span<const int64_t> counts) {
  switch (precision_) {
    case TrainingPrecision::kFp32:
      grouped_gemm_weight_grad(dy, x, counts, weight.grad, /*accumulate=*/true);
      break;
    case TrainingPrecision::kBf16:
      grouped_gemm_weight_grad(to_bf16(dy), to_bf16(x), counts, weight.grad,
                               /*accumulate=*/true);
      break;
    case TrainingPrecision::kFp8: {
      // Token tiles must not straddle experts, so each expert's segment is quantized on its own.
      int64_t row = 0;
      for (size_t g = 0; g < counts.size(); ++g) {
        const int64_t n = counts[g];
        if (n > 0) {
          Tensor grad_g = weight.grad.narrow(static_cast<int64_t>(g), 1)
                              .view({out_features(), in_features()});
          gemm_fp8(quantize_transposed_1x128(dy.narrow(row, n)),
                   quantize_transposed_1x128(x.narrow(row, n)), grad_g, /*accumulate=*/true);
        }
        row += n;
      }
      break;
    }
  }
}

void GroupedLinear::backward_weight_or_defer(const Tensor& dy, const Tensor& x,
                                             absl::Span<const int64_t> counts,
                                             WeightGradStore* store) {
  run_or_defer(store, [this, dy, x, c = std::vector<int64_t>(counts.begin(), counts.end())] {
    backward_weight(dy, x, c);
  });
}

}  // namespace fathom::model
