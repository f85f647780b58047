#!/usr/bin/env bash
# Where an evaluation forward goes, kernel by kernel: ncu over `mha2mla eval` of BATCH windows of CTX
# tokens (one forward), then bench/ncu_step_summary.py from its first embedding kernel. GPU machine,
# with the CUDA library built; MODEL e.g. a synth folder of bench/eval-gpu.sh. ncu serializes kernels
# and locks clocks: shares, not wall time. HF's side: PROFILE=1 python3 bench/eval_torch.py MODEL CTX BATCH BATCH.
# Usage: bash bench/ncu-eval-forward.sh MODEL TEXT [CTX] [BATCH] [OUT.csv]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1; TEXT=$2; CTX=${3:-2048}; BATCH=${4:-16}; OUT=${5:-/tmp/ncu-eval-forward.csv}
ncu --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv --print-units base \
  node dist/src/cli/main.js eval "$MODEL" --device cuda --text "$TEXT" --ctx "$CTX" --batch "$BATCH" --tokens $(((CTX - 1) * BATCH)) > "$OUT"
python3 bench/ncu_step_summary.py "$OUT" embedding
