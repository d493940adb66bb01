#!/usr/bin/env bash
# Builds and tests Fathom on a machine with an NVIDIA GPU: a Release build with the CUDA backend
# in build-gpu/, then every ctest test (the GPU tests run instead of skipping), then the GPU
# benchmarks. Everything is shown and written to the log.
#
# usage: scripts/gpu_check.sh [LOG]     (default LOG: build-gpu/gpu_check.log)
# Exits non-zero when configuring or building fails, when the CUDA tests cannot run (no usable
# device: they would skip and pass vacuously), or when any test or benchmark fails.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="$repo/build-gpu"
log="${1:-$build_dir/gpu_check.log}"
mkdir -p "$build_dir" "$(dirname "$log")"

main() {
  echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname), repo $repo"
  if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
    export PATH="/usr/local/cuda/bin:$PATH"
  fi
  if [[ $(id -u) -eq 0 ]]; then  # the MPI tests run mpirun, which refuses root by default
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  fi

  echo "== nvidia-smi"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi || echo "gpu_check: nvidia-smi failed (no driver?)"
  else
    echo "gpu_check: nvidia-smi not found"
  fi
  command -v nvcc >/dev/null && nvcc --version | tail -n 2

  echo "== set up and build ($build_dir, Release, FATHOM_CUDA=ON)"
  # The same installer and build as the README's commands: missing Debian packages, ccache.
  bash "$repo/scripts/setup.sh" --build-dir "$build_dir" --cuda ON ||
    { echo "gpu_check: set-up or build failed"; return 1; }

  local tests_ok=1
  # The GPU tests skip without a usable device, which would make this check pass vacuously.
  local probe
  probe=$("$build_dir/tests/kernels_tests" --gtest_filter='CudaAllocator.*' 2>&1) || true
  if [[ "$probe" == *SKIPPED* || "$probe" != *PASSED* ]]; then
    echo "$probe"
    echo "gpu_check: the CUDA tests do not run here (no usable CUDA device?): failing"
    tests_ok=0
  fi

  echo "== ctest (GPU tests included)"
  ctest --test-dir "$build_dir" --output-on-failure || tests_ok=0

  local bench
  for bench in bench_gemm bench_ops; do
    if [[ -x "$build_dir/bench/$bench" ]]; then
      echo "== $bench --gpu"
      "$build_dir/bench/$bench" --gpu || { echo "gpu_check: $bench failed"; tests_ok=0; }
    else
      echo "== $bench: not built, skipped"
    fi
  done

  if [[ $tests_ok -eq 0 ]]; then
    echo "gpu_check: FAILED (see the test and benchmark output above)"
    return 1
  fi
  echo "gpu_check: all tests passed"
}

status=0
main 2>&1 | tee "$log" || status=$?
echo "gpu_check: log written to $log"
exit "$status"
