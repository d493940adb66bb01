// Model FLOPs per trained token and the machine peak they are measured against (MFU).
//
// FLOPs per token = 6 x (parameters the token multiplies with: activated main-model and MTP
// parameters, model/param_count.h) + the causal attention matmuls, 3 x 2 x n_heads x
// (qk_head_dim + v_head_dim) x (S + 1) / 2 per block (forward QK^T and PV over the average causal
// context, times 3 for forward + backward). This is the "model FLOPs" convention: recomputation is
// not counted.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/device.h"
#include "model/config.h"
#include "model/precision.h"

namespace fathom::trainer {

double training_flops_per_token(const model::ModelConfig& config, int64_t seq_len);

struct PeakFlops {
  double flops_per_s = 0;  // 0 when unknown (MFU is then not reported)
  std::string source;      // how it was obtained, for the log
};

// CPU: the median of a short f32 GEMM probe on all threads (the measured sgemm ceiling, the CPU's
// practical peak). CUDA: the dense tensor-core peak of the precision for known devices (H100 /
// H200 SXM), else unknown.
PeakFlops peak_flops(Device device, model::TrainingPrecision precision);

}  // namespace fathom::trainer
