#!/usr/bin/env bash
# Installs the Debian packages Fathom needs (only those missing), then configures and builds it
# with ccache. Idempotent: with everything installed and built it takes seconds.
#
# usage: scripts/setup.sh [--build-dir DIR] [--cuda AUTO|ON|OFF] [--build-type TYPE] [--no-build]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="$repo/build"
cuda="AUTO"
build_type="Release"
do_build=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-dir) build_dir="$2"; shift 2 ;;
    --cuda) cuda="$2"; shift 2 ;;
    --build-type) build_type="$2"; shift 2 ;;
    --no-build) do_build=0; shift ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

packages=(build-essential cmake ninja-build ccache pkg-config
          libopenmpi-dev openmpi-bin libhdf5-dev libabsl-dev libyaml-cpp-dev
          libopenblas-openmp-dev libgtest-dev libgmock-dev libpng-dev nlohmann-json3-dev
          # The golden tests' independent PyTorch reference (tests/reference/; run by
          # /usr/bin/python3) and bench_train's PyTorch comparison.
          python3-torch python3-numpy)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "setup.sh: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# nvcc lives outside PATH in the toolkit's default location.
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

if [[ -n "${OPENBLAS_CORETYPE:-}" ]]; then
  echo "setup.sh: note: OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE is set in this environment; fathom" \
       "and the benchmarks report whether it matches this CPU (see docs/performance.md)"
fi

[[ $do_build -eq 1 ]] || exit 0

export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
# Paths relative to the checkout, so a fresh clone elsewhere (CI) reuses the cache.
export CCACHE_BASEDIR="$repo"
mkdir -p "$build_dir"
cmake -S "$repo" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="$build_type" -DFATHOM_CUDA="$cuda" \
  > "$build_dir/configure.log" 2>&1 || { cat "$build_dir/configure.log"; exit 1; }
grep -E "^-- Fathom:" "$build_dir/configure.log" || true
cmake --build "$build_dir" -j "$(nproc)"
