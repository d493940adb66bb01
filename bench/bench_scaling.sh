#!/usr/bin/env bash
# bench_scaling.sh: training tokens/s of `fathom train` at 1, 2 and 4 ranks with the scaling
# efficiency (issue 4; docs/parallelism.md "Measured: MoE layer and training scaling").
#
# For each preset (configs/runs/pretrain-<preset>.yaml) it runs, at a fixed global batch (the
# preset's micro_batch_size x grad_accum sequences per step, micro_batch_size divided by the number
# of data-parallel ranks), with evaluation off:
#   1 rank x 1 thread (the baseline), 1 rank x 2 threads (with the OMP_WAIT_POLICY below, and also
#   with active), and for each N in --ranks:
#   N ranks x 1 thread as dp=N, and as dp=N ep=N (experts split over the ranks).
# Each run logs every step (metrics.jsonl); its tokens/s is tokens per step / the median step time
# of the steps after the first --skip (warm-up). A configuration's value is the median over
# --rounds rounds; the rounds run the whole matrix in turn, so that a change in the machine's load
# hits every configuration alike. Scaling efficiency = tokens/s / (cores x tokens/s of 1 rank x 1
# thread), cores = ranks x threads. Also shown: the median MFU the trainer logs (against each
# rank's GEMM ceiling measured at start-up, x ranks), the median expert-parallel all-to-all time
# per step (rank 0's, dispatcher metrics) and the spread of tokens/s over the rounds.
#
# usage: bench/bench_scaling.sh [--fathom PATH] [--presets "tiny small"] [--ranks "2 4"]
#                               [--rounds R] [--steps N] [--skip S] [--work DIR] [--keep]
#                               [--wait-idle SECONDS]
#   --steps N  steps per run for every preset (default: tiny 60, small 30)
#   --work     run directories (default: a fresh mktemp -d, removed at the end unless --keep)
#   --wait-idle before each run, wait up to SECONDS for a moment when no other process is
#              running (/proc/loadavg, sampled for 3 s), for shared machines; default 0: no wait
# Environment: MPIRUN (default mpirun); MPIRUN_FLAGS (default: --allow-run-as-root
# --oversubscribe --mca btl_vader_single_copy_mechanism none, as MACHINE.md says for this
# machine); OMP_WAIT_POLICY (default passive: spinning OpenMP threads collapse when other processes
# share the cores, kernels/threads.h). Every run gets OMP_NUM_THREADS = train.threads and
# OMPI_MCA_mpi_yield_when_idle=1; OPENBLAS_CORETYPE is removed from the environment.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fathom="$root/build/fathom"
presets="tiny small"
ranks_list="2 4"
rounds=3
steps=""
skip=5
work=""
keep=0
wait_idle=0
usage() {
  sed -n '/^# usage:/,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' >&2
  exit 2
}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --fathom) fathom="$2"; shift 2 ;;
    --presets) presets="$2"; shift 2 ;;
    --ranks) ranks_list="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --skip) skip="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --wait-idle) wait_idle="$2"; shift 2 ;;
    *) usage ;;
  esac
done
die() {  # message [status]
  echo "bench_scaling.sh: $1" >&2
  exit "${2:-2}"
}
[[ -x "$fathom" ]] || die "no fathom binary at $fathom (--fathom)"
[[ "$rounds" =~ ^[1-9][0-9]*$ && "$skip" =~ ^[0-9]+$ && "$wait_idle" =~ ^[0-9]+$ ]] || usage
if [[ -z "$work" ]]; then
  work="$(mktemp -d /tmp/bench_scaling.XXXXXX)"
  [[ $keep == 1 ]] || trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"
mpirun="${MPIRUN:-mpirun}"
wait_policy="${OMP_WAIT_POLICY:-passive}"
default_flags="--allow-run-as-root --oversubscribe --mca btl_vader_single_copy_mechanism none"
read -r -a mpirun_flags <<< "${MPIRUN_FLAGS:-$default_flags}"

# A preset's value of train.<key> (the first "key: value" line of its train section).
preset_value() {
  awk -v key="$2" '/^train:/ {in_train = 1; next} /^[^ #]/ {in_train = 0}
    in_train && $1 == key ":" {print $2; exit}' "$root/configs/runs/pretrain-$1.yaml"
}

# Median of the numbers on stdin (one per line); empty when there are none.
median() {
  sort -g | awk '{v[NR] = $1}
    END {if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'
}

# Values of a numeric key in metrics.jsonl for the steps after `skip`.
jsonl_values() {  # file key
  awk -v key="\"$2\": " -v skip="$skip" '{
      if (!match($0, /"step": [0-9]+/)) next
      step = substr($0, RSTART + 8, RLENGTH - 8) + 0
      if (step <= skip || !index($0, "\"step_ms\"")) next
      i = index($0, key); if (!i) next
      rest = substr($0, i + length(key)); sub(/[,}].*/, "", rest); print rest
    }' "$1"
}

# Waits (at most --wait-idle seconds) until /proc/loadavg shows no running process but the one
# reading it, throughout 3 s of samples; prints a note on stderr when it gives up.
wait_for_idle() {
  (( wait_idle > 0 )) || return 0
  local deadline=$((SECONDS + wait_idle)) busy i procs
  while (( SECONDS < deadline )); do
    busy=0
    for ((i = 0; i < 12; ++i)); do
      read -r _ _ _ procs _ < /proc/loadavg  # "running/total"; this shell is one of them
      (( ${procs%/*} > 1 )) && busy=1
      sleep 0.25
    done
    (( busy )) || return 0
  done
  echo "bench_scaling.sh: machine still busy after ${wait_idle} s; running anyway" >&2
}

# One run: preset, ranks, threads, ep, OpenMP wait policy, round
#   -> "tokens_per_s ms_per_step mfu a2a_ms tokens_per_step"
run_one() {
  local preset=$1 n=$2 threads=$3 ep=$4 policy=$5 round=$6
  local mbs n_steps dir log
  mbs=$(preset_value "$preset" micro_batch_size)
  if [[ -n "$steps" ]]; then
    n_steps=$steps
  elif [[ $preset == tiny ]]; then
    n_steps=60
  else
    n_steps=30
  fi
  (( n_steps > skip + 2 )) || die "--steps must exceed --skip + 2"
  (( mbs % n == 0 )) || die "$preset micro_batch_size $mbs does not split over $n ranks"
  dir="$work/$preset-np$n-t$threads-ep$ep-$policy-r$round"
  log="$dir.log"
  rm -rf "$dir"
  local sets=(--set train.steps="$n_steps" --set train.eval_samples=0 --set train.log_every=1
    --set train.checkpoint_every=0 --set train.threads="$threads"
    --set train.micro_batch_size=$((mbs / n)) --set parallel.dp="$n" --set parallel.ep="$ep"
    --set optimizer.schedule.warmup_steps=$((n_steps / 5))
    --set optimizer.schedule.decay_start=$((n_steps / 2))
    --set optimizer.schedule.decay_steps=$((n_steps / 2)) --set mtp.switch_step="$n_steps")
  local cmd=("$fathom" train "$root/configs/runs/pretrain-$preset.yaml" --run-dir "$dir"
    "${sets[@]}")
  if (( n > 1 )); then
    cmd=("$mpirun" "${mpirun_flags[@]}" -np "$n" -x OMP_NUM_THREADS -x OMP_WAIT_POLICY
      -x OMPI_MCA_mpi_yield_when_idle
      "${cmd[@]}")
  fi
  wait_for_idle
  if ! env -u OPENBLAS_CORETYPE OMP_NUM_THREADS="$threads" OMP_WAIT_POLICY="$policy" \
      OMPI_MCA_mpi_yield_when_idle=1 "${cmd[@]}" > "$log" 2>&1; then
    echo "bench_scaling.sh: run failed: ${cmd[*]}" >&2
    tail -20 "$log" >&2
    exit 1
  fi
  local step_ms tps_logged mfu a2a tokens
  step_ms=$(jsonl_values "$dir/metrics.jsonl" step_ms | median)
  # tokens per step = tokens_per_s x step_ms / 1000 of any logged step (the same for every step).
  tps_logged=$(jsonl_values "$dir/metrics.jsonl" tokens_per_s | head -1)
  local one_ms
  one_ms=$(jsonl_values "$dir/metrics.jsonl" step_ms | head -1)
  tokens=$(awk -v a="$tps_logged" -v b="$one_ms" 'BEGIN {printf "%.0f", a * b / 1000}')
  mfu=$(jsonl_values "$dir/metrics.jsonl" mfu | median)
  a2a=$(jsonl_values "$dir/metrics.jsonl" ep_all_to_all_ms | median)
  awk -v t="$tokens" -v ms="$step_ms" -v mfu="$mfu" -v a2a="${a2a:--1}" \
    'BEGIN {printf "%.1f %.2f %.4f %.2f %d\n", t / (ms / 1000), ms, mfu, a2a, t}'
}

# The matrix: "preset ranks threads ep wait-policy" per line. 1 rank x 2 threads runs under both
# wait policies: spinning threads win on an idle machine and collapse on a busy one.
configs=()
for preset in $presets; do
  [[ -f "$root/configs/runs/pretrain-$preset.yaml" ]] || die "no configs/runs/pretrain-$preset.yaml"
  configs+=("$preset 1 1 1 $wait_policy" "$preset 1 2 1 $wait_policy")
  [[ $wait_policy == active ]] || configs+=("$preset 1 2 1 active")
  for n in $ranks_list; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "--ranks: '$n' is not a rank count"
    mbs=$(preset_value "$preset" micro_batch_size)
    (( mbs % n == 0 )) || die "$preset micro_batch_size $mbs does not split over $n ranks"
    configs+=("$preset $n 1 1 $wait_policy" "$preset $n 1 $n $wait_policy")
  done
done

cpu_model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
echo "# bench_scaling: $(uname -n), $(nproc) cores, $cpu_model"
echo "# load average at start (1 5 15 min): $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# fathom: $fathom; $rounds round(s); tokens/s from the median step time after $skip" \
  "warm-up steps"
echo "# OMP_WAIT_POLICY=$wait_policy (1 rank x 2 threads: also active); mpirun ${mpirun_flags[*]}"
declare -A results
for ((round = 1; round <= rounds; ++round)); do
  for c in "${configs[@]}"; do
    read -r preset n threads ep policy <<< "$c"
    out=$(run_one "$preset" "$n" "$threads" "$ep" "$policy" "$round") || exit 1
    results["$c"]+="$out"$'\n'
  done
  echo "# round $round done, load average $(cut -d' ' -f1-3 /proc/loadavg)"
done

printf "%-6s %-20s %5s %4s %9s %8s %9s %18s %6s %5s %8s\n" preset layout ranks thr \
  tok/step ms/step tokens/s "(min..max)" eff MFU a2a_ms
declare -A base
for c in "${configs[@]}"; do
  read -r preset n threads ep policy <<< "$c"
  lines="${results[$c]}"
  tps=$(awk 'NF {print $1}' <<< "$lines" | median)
  lo=$(awk 'NF {print $1}' <<< "$lines" | sort -g | head -1)
  hi=$(awk 'NF {print $1}' <<< "$lines" | sort -g | tail -1)
  ms=$(awk 'NF {print $2}' <<< "$lines" | median)
  mfu=$(awk 'NF {print $3}' <<< "$lines" | median)
  a2a=$(awk 'NF {print $4}' <<< "$lines" | median)
  tokens=$(awk 'NF {print $5; exit}' <<< "$lines")
  if (( n == 1 && threads == 1 )); then base[$preset]=$tps; fi
  cores=$((n * threads))
  eff=$(awk -v t="$tps" -v b="${base[$preset]}" -v c="$cores" 'BEGIN {printf "%.2f", t / (c * b)}')
  if (( ep > 1 )); then layout="dp$n x ep$ep"; else layout="dp$n"; fi
  (( threads > 1 )) && layout="$layout omp:$policy"
  a2a_text=$(awk -v a="$a2a" 'BEGIN {if (a < 0) print "-"; else printf "%.2f", a}')
  printf "%-6s %-20s %5d %4d %9d %8.1f %9.0f %18s %6s %5.3f %8s\n" "$preset" "$layout" "$n" \
    "$threads" "$tokens" "$ms" "$tps" "($(printf %.0f "$lo")..$(printf %.0f "$hi"))" "$eff" "$mfu" \
    "$a2a_text"
done
echo "# eff = tokens/s / (ranks x threads x tokens/s of 1 rank x 1 thread); a2a_ms: expert-parallel"
echo "# all-to-all time per step on rank 0 (dispatcher metrics), '-' without expert parallelism"
