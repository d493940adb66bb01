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

# The Debian packages scripts/setup.sh installs; installed here only when configuring fails.
packages=(libopenmpi-dev openmpi-bin libhdf5-dev libabsl-dev libyaml-cpp-dev libopenblas-dev
          libgtest-dev ninja-build ccache)

missing_packages() {
  local p
  for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      echo "$p"
    fi
  done
}

configure() {
  cmake -S "$repo" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFATHOM_CUDA=ON
}

install_missing() {
  local missing
  mapfile -t missing < <(missing_packages)
  if [[ ${#missing[@]} -eq 0 ]]; then
    echo "gpu_check: every listed Debian package is installed; the configure error above is" \
         "something else"
    return 1
  fi
  echo "gpu_check: missing Debian packages: ${missing[*]}"
  local sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null; then
      echo "gpu_check: not root and no sudo: install them by hand:" \
           "apt-get install -y --no-install-recommends ${missing[*]}"
      return 1
    fi
    sudo_cmd=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Try the package lists already on the machine first; refresh them only when that fails (the
  # machine may reach the Debian mirrors, or nothing at all).
  if ! "${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing[@]}"; then
    echo "gpu_check: apt-get install failed; refreshing the package lists and retrying"
    if ! { "${sudo_cmd[@]}" apt-get update && \
           "${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing[@]}"; }; then
      echo "gpu_check: could not install ${missing[*]} (no route to a Debian mirror?)."
      echo "gpu_check: install them by hand, then rerun this script."
      return 1
    fi
  fi
}

main() {
  echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname), repo $repo"
  if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
    export PATH="/usr/local/cuda/bin:$PATH"
  fi
  # Paths relative to the checkout in ccache's keys, as scripts/setup.sh does.
  export CCACHE_BASEDIR="$repo"
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

  echo "== configure ($build_dir, Release, FATHOM_CUDA=ON)"
  if ! configure; then
    echo "gpu_check: configure failed; checking the Debian packages"
    install_missing || return 1
    configure || { echo "gpu_check: configure failed again"; return 1; }
  fi

  echo "== build"
  cmake --build "$build_dir" -j "$(nproc)" || { echo "gpu_check: build failed"; return 1; }

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
