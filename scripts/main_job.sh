#!/usr/bin/env bash
# The main job: pretrains the tiny DeepSeek-V3 (MLA, DeepSeekMoE, MTP) on 4 ranks with DualPipe
# pipeline parallelism x expert parallelism x ZeRO-1 data parallelism
# (configs/runs/pretrain-tiny-4ranks.yaml), printing the falling loss, throughput and held-out
# answer exact match. Each run gets its own directory under runs/.
#
# usage: scripts/main_job.sh [fathom train options, e.g. --set train.steps=300]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ranks=4
run_dir="${RUN_DIR:-runs/pretrain-tiny-4ranks-$(date +%Y%m%d-%H%M%S)}"

mpi_args=(-np "$ranks")
[[ $(id -u) -eq 0 ]] && mpi_args+=(--allow-run-as-root)
# Fewer cores than ranks: let ranks share cores, and make waiting ranks yield them.
if [[ $(nproc) -lt $ranks ]]; then
  mpi_args+=(--oversubscribe)
  export OMPI_MCA_mpi_yield_when_idle=1
fi
# Shared-memory transfers without CMA/XPMEM are faster on this kind of machine (MACHINE.md).
mpi_args+=(--mca btl_vader_single_copy_mechanism none)
export OMP_NUM_THREADS=1  # one core per rank

echo "main job: mpirun ${mpi_args[*]} fathom train configs/runs/pretrain-tiny-4ranks.yaml" \
     "--run-dir $run_dir $*"
exec mpirun "${mpi_args[@]}" "$repo/build/fathom" train \
  "$repo/configs/runs/pretrain-tiny-4ranks.yaml" --run-dir "$run_dir" "$@"
