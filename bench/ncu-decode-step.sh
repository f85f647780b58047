#!/usr/bin/env bash
# Where a recorded decode step goes, kernel by kernel: ncu (graph nodes profiled one by one) over a short
# bench/decode.js run of one model, then bench/ncu_step_summary.py over the last step. GPU machine, with
# the CUDA library built. ncu serializes kernels and locks clocks: shares, not wall time.
# REAL=1: kernels at the GPU's own clocks with warm caches (--clock-control none --cache-control none),
# so the sum is comparable with a recorded step's time (what is left is the gaps between kernels and the host).
# Usage: bash bench/ncu-decode-step.sh MODEL_DIR [CTX] [BATCH] [OUT.csv]     (e.g. a bench/decode.sh model; env REAL)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1; CTX=${2:-4096}; BATCH=${3:-1}; OUT=${4:-/tmp/ncu-decode-step.csv}
REAL_FLAGS=()
[ "${REAL:-0}" = 1 ] && REAL_FLAGS=(--clock-control none --cache-control none)
ncu "${REAL_FLAGS[@]}" --graph-profiling node --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv --print-units base \
  node dist/bench/decode.js "$MODEL" --device cuda --kv-cache bf16 --contexts "$CTX" --batches "$BATCH" --steps 2 --repeats 1 > "$OUT"
python3 bench/ncu_step_summary.py "$OUT"
