#include "trainer/flops.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "kernels/cuda/runtime.h"
#include "kernels/ops/gemm.h"
#include "kernels/threads.h"
#include "model/param_count.h"

namespace fathom::trainer {

double training_flops_per_token(const model::ModelConfig& c, int64_t seq_len) {
  const model::ParamCount p = model::count_parameters(c);
  const double matmul = 6.0 * static_cast<double>(p.activated + p.mtp_activated);
  const double blocks = static_cast<double>(c.n_layers + c.mtp_depth);
  const double attention = 6.0 * static_cast<double>(c.n_heads) *
                           static_cast<double>(c.qk_head_dim() + c.v_head_dim) *
                           static_cast<double>(seq_len + 1) / 2.0 * blocks;
  return matmul + attention;
}

PeakFlops peak_flops(Device device, model::TrainingPrecision precision) {
  if (device.is_cuda()) {
    const std::string name = cuda::device_name(device.index);
    const bool hopper = name.find("H100") != std::string::npos ||
                        name.find("H200") != std::string::npos;
    if (!hopper) return {0, "unknown peak for " + name};
    // Dense tensor-core peaks of the SXM parts (NVIDIA datasheet): TF32 495, BF16 989, FP8 1979.
    switch (precision) {
      case model::TrainingPrecision::kFp32:
        return {494.7e12, name + " TF32 dense peak"};
      case model::TrainingPrecision::kBf16:
        return {989.4e12, name + " BF16 dense peak"};
      case model::TrainingPrecision::kFp8:
        return {1978.9e12, name + " FP8 dense peak"};
    }
  }
  constexpr int64_t kN = 768;
  Tensor a = Tensor::zeros({kN, kN}, DType::kF32);
  Tensor b = Tensor::zeros({kN, kN}, DType::kF32);
  Tensor c = Tensor::empty({kN, kN}, DType::kF32);
  gemm(a, b, c);  // warm-up
  std::vector<double> seconds;
  for (int i = 0; i < 5; ++i) {
    const auto start = std::chrono::steady_clock::now();
    gemm(a, b, c);
    seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(seconds.begin(), seconds.end());
  const double flops = 2.0 * kN * kN * kN / seconds[seconds.size() / 2];
  return {flops, "measured f32 GEMM ceiling on " + std::to_string(cpu_threads()) + " threads"};
}

}  // namespace fathom::trainer
