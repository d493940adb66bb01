// bench_ops: GB/s of the memory-bound ops (RMSNorm, SwiGLU, FP8 block quantization, AdamW) next to the machine's
// memory bandwidth measured in this run (a STREAM-style triad), and GFLOP/s of the fused linear
// cross-entropy (its cost is the head GEMM). With --gpu: the same ops on the GPU, next to a
// device-to-device copy.
//
// usage: bench_ops [--gpu] [--threads N] [--quick]
#include <omp.h>

#include <cstdio>
#include <algorithm>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/fp8.h"
#include "kernels/ops.h"

namespace fathom::bench {
namespace {

struct OpCase {
  std::string name;
  double bytes;  // bytes each call must move at least once
  std::function<void()> run;
};

// The machine's streaming bandwidth: the best of two STREAM-style kernels over arrays far larger
// than the caches, a triad (2 reads, 1 write) and a 4-read 3-write update shaped like AdamW. More
// concurrent streams keep more misses in flight, so on this class of machine the second is the
// faster one; taking the best keeps "fraction of bandwidth" at or below 100% for every op.
struct Bandwidth {
  double triad_gbps, update_gbps;
  double best() const { return std::max(triad_gbps, update_gbps); }
};

Bandwidth measure_bandwidth(int64_t n) {
  std::vector<float> a(n, 1.0f), b(n, 2.0f), c(n, 3.0f), d(n, 4.0f);
  auto triad = [&] {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) a[i] = b[i] + 3.0f * c[i];
  };
  auto update = [&] {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float x = a[i] + b[i] * c[i] + d[i];
      a[i] = x;
      b[i] = 0.5f * x;
      c[i] = 0.25f * x;
    }
  };
  const double bytes = static_cast<double>(n) * sizeof(float);
  return {3 * bytes / median_seconds(triad, 2, 10) / 1e9,
          7 * bytes / median_seconds(update, 2, 10) / 1e9};
}

std::vector<OpCase> memory_bound_cases(Device device, int64_t rows, int64_t dim) {
  const int64_t n = rows * dim;
  std::vector<OpCase> cases;
  for (DType dt : {DType::kF32, DType::kBF16}) {
    const double e = static_cast<double>(dtype_size(dt));
    std::string suffix = " ";
    suffix += dtype_name(dt);
    Tensor x = random_tensor({rows, dim}, dt, 1).to(device);
    Tensor x2 = random_tensor({rows, dim}, dt, 2).to(device);
    Tensor dy = random_tensor({rows, dim}, dt, 3).to(device);
    Tensor y = Tensor::empty({rows, dim}, dt, device);
    Tensor dx = Tensor::empty({rows, dim}, dt, device);
    Tensor dx2 = Tensor::empty({rows, dim}, dt, device);
    Tensor w = random_tensor({dim}, DType::kF32, 4).to(device);
    Tensor dw = Tensor::zeros({dim}, DType::kF32, device);
    Tensor rstd = Tensor::empty({rows}, DType::kF32, device);
    cases.push_back({"rmsnorm fwd" + suffix, 2 * n * e,
                     [=]() mutable { rmsnorm_forward(x, w, 1e-6f, y, rstd); }});
    cases.push_back({"rmsnorm bwd" + suffix, 3 * n * e, [=]() mutable {
                       rmsnorm_backward(dy, x, w, rstd, dx, dw);
                     }});
    cases.push_back({"swiglu fwd" + suffix, 3 * n * e,
                     [=]() mutable { swiglu_forward(x, x2, y); }});
    cases.push_back({"swiglu bwd" + suffix, 5 * n * e, [=]() mutable {
                       swiglu_backward(dy, x, x2, dx, dx2);
                     }});
    // FP8 (SPEC.md section 2): activations per 1x128 tile, weights per 128x128 block; reads x,
    // writes one byte per value (scales are 1/128 or 1/16384 of that).
    for (ScaleBlock block : {ScaleBlock::k1x128, ScaleBlock::k128x128}) {
      const std::string b = block == ScaleBlock::k1x128 ? " 1x128" : " 128x128";
      Fp8Tensor q = quantize_fp8(x, block);
      cases.push_back({"fp8 quantize" + b + suffix, n * (e + 1),
                       [=]() mutable { quantize_fp8_into(x, q); }});
      cases.push_back({"fp8 dequantize" + b + suffix, n * (1 + e),
                       [=]() mutable { dequantize_fp8(q, y); }});
    }
  }
  for (DType moments : {DType::kF32, DType::kBF16}) {
    Tensor p = random_tensor({n}, DType::kF32, 5).to(device);
    Tensor g = random_tensor({n}, DType::kF32, 6).to(device);
    Tensor m = Tensor::zeros({n}, moments, device);
    Tensor v = Tensor::zeros({n}, moments, device);
    const double me = static_cast<double>(dtype_size(moments));
    // reads p, g, m, v; writes p, m, v
    cases.push_back({"adamw moments " + std::string(dtype_name(moments)), n * (12 + 4 * me),
                     [=]() mutable { adamw_update(p, g, m, v, {.lr = 1e-4f}); }});
  }
  return cases;
}

// Times every case, then prints GB/s against the best bandwidth probe of the run. The probes run
// before and after the cases: on a shared host the available bandwidth drifts during a run, and
// a probe taken at one moment alone can read below what an op reaches at another.
void print_cases(const std::vector<OpCase>& cases, const std::function<Bandwidth()>& probe,
                 const std::function<void()>& sync, double budget) {
  const Bandwidth before = probe();
  std::vector<double> seconds;
  for (const OpCase& c : cases) {
    const double once = median_seconds(c.run, 1, 1, sync);
    seconds.push_back(median_seconds(c.run, 1, repeats_for(once, budget), sync));
  }
  const Bandwidth after = probe();
  const double bw = std::max(before.best(), after.best());
  std::printf("# memory bandwidth probes: triad %.1f / %.1f GB/s, 4-read-3-write update %.1f / %.1f "
              "GB/s (before / after the ops); best %.1f GB/s\n\n",
              before.triad_gbps, after.triad_gbps, before.update_gbps, after.update_gbps, bw);
  std::printf("%-24s %10s %10s %9s\n", "op", "time ms", "GB/s", "of bw");
  for (size_t i = 0; i < cases.size(); ++i) {
    const double gbps = cases[i].bytes / seconds[i] / 1e9;
    std::printf("%-24s %10.3f %10.1f %8.0f%%\n", cases[i].name.c_str(), seconds[i] * 1e3, gbps,
                100 * gbps / bw);
  }
  std::fflush(stdout);
}

// ceiling_gflops <= 0: no ceiling measured for this device.
void run_cross_entropy(Device device, DType dtype, int64_t tokens, int64_t dim, int64_t vocab,
                       const std::function<void()>& sync, double budget, double ceiling_gflops) {
  Tensor h = random_tensor({tokens, dim}, dtype, 7).to(device);
  Tensor w = random_tensor({vocab, dim}, dtype, 8).to(device);
  std::vector<int32_t> t(tokens);
  for (int64_t i = 0; i < tokens; ++i) t[i] = static_cast<int32_t>((i * 7919) % vocab);
  Tensor targets = Tensor::from_vector(t, {tokens}, device);
  Tensor loss = Tensor::empty({tokens}, DType::kF32, device);
  Tensor lse = Tensor::empty({tokens}, DType::kF32, device);
  Tensor dloss = Tensor::empty({tokens}, DType::kF32, device);
  fill(dloss, 1.0f / tokens);
  Tensor dh = Tensor::empty({tokens, dim}, dtype, device);
  Tensor dw = Tensor::zeros({vocab, dim}, DType::kF32, device);
  auto fwd = [&] { fused_linear_cross_entropy_forward(h, w, targets, loss, lse); };
  auto bwd = [&] { fused_linear_cross_entropy_backward(h, w, targets, lse, dloss, dh, dw); };
  const double tf = median_seconds(fwd, 1, repeats_for(median_seconds(fwd, 0, 1, sync), budget), sync);
  const double tb = median_seconds(bwd, 1, repeats_for(median_seconds(bwd, 0, 1, sync), budget), sync);
  const double flop = 2.0 * tokens * vocab * dim;
  std::printf("\nfused linear cross-entropy %s, T=%lld D=%lld V=%lld (logits never materialised)\n",
              std::string(dtype_name(dtype)).c_str(), static_cast<long long>(tokens),
              static_cast<long long>(dim), static_cast<long long>(vocab));
  std::printf("%-24s %10s %10s %9s\n", "pass", "time ms", "GFLOP/s", "of ceil");
  // forward: one GEMM; backward: recompute + two GEMMs.
  for (auto [pass, seconds, passes] : {std::tuple{"forward", tf, 1.0}, {"backward", tb, 3.0}}) {
    const double gf = passes * flop / seconds / 1e9;
    if (ceiling_gflops > 0) {
      std::printf("%-24s %10.2f %10.1f %8.0f%%\n", pass, seconds * 1e3, gf, 100 * gf / ceiling_gflops);
    } else {
      std::printf("%-24s %10.2f %10.1f %9s\n", pass, seconds * 1e3, gf, "-");
    }
  }
}

void run_cpu(bool quick) {
  const double budget = quick ? 0.2 : 1.0;
  const double ceiling = sgemm_ceiling_gflops(budget);
  std::printf("# %d threads; sgemm ceiling %.1f GFLOP/s\n", omp_get_max_threads(), ceiling);
  print_cases(memory_bound_cases(Device::cpu(), 8192, 2048),
              [] { return measure_bandwidth(int64_t{64} << 20); }, nullptr, budget);
  run_cross_entropy(Device::cpu(), DType::kF32, 1024, 512, 32768, nullptr, budget, ceiling);
}

void run_gpu() {
  if (cuda::device_count() == 0) {
    std::printf("\n# --gpu: no usable CUDA device, GPU section skipped\n");
    return;
  }
  const Device gpu = Device::cuda(0);
  auto sync = [] { cuda::synchronize(0); };
  const int64_t n = int64_t{256} << 20;  // 1 GiB of f32
  Tensor a = Tensor::empty({n}, DType::kF32, gpu), b = Tensor::zeros({n}, DType::kF32, gpu);
  // A device-to-device copy reads and writes every byte once: the GPU's streaming bandwidth.
  auto probe = [&] {
    const double copy = 2.0 * n * 4 / median_seconds([&] { a.copy_from(b); }, 2, 10, sync) / 1e9;
    return Bandwidth{copy, copy};
  };
  std::printf("\n# GPU %s\n", cuda::device_name(0).c_str());
  print_cases(memory_bound_cases(gpu, 32768, 7168), probe, sync, 1.0);
  run_cross_entropy(gpu, DType::kBF16, 8192, 7168, 129280, sync, 1.0, /*ceiling_gflops=*/0);
}

}  // namespace
}  // namespace fathom::bench

int main(int argc, char** argv) {
  const fathom::bench::BenchArgs args = fathom::bench::parse_bench_args(argc, argv, "bench_ops");
  fathom::bench::print_header("bench_ops");
  fathom::bench::run_cpu(args.quick);
  if (args.gpu) fathom::bench::run_gpu();
  return 0;
}
