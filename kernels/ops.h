// Every op of kernels/, as free functions on Tensors (DESIGN.md decision 4).
//
// Each op checks its arguments (shapes, dtypes, devices: errors name the op and the shapes),
// then runs its CPU implementation (kernels/cpu/, OpenMP + OpenBLAS, the reference) or its CUDA
// implementation (kernels/cuda/) by the device of its tensors. Ops run on the calling thread; the
// CUDA versions are ordered on cuda::current_stream() and return without synchronising.
#pragma once

#include "kernels/fp8.h"
#include "kernels/ops/attention.h"
#include "kernels/ops/elementwise.h"
#include "kernels/ops/gemm.h"
#include "kernels/ops/index.h"
#include "kernels/ops/loss.h"
#include "kernels/ops/norm.h"
#include "kernels/ops/optim.h"
#include "kernels/ops/reduce.h"
#include "kernels/ops/rope.h"
