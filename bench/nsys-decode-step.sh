#!/usr/bin/env bash
# Where a recorded decode step goes at the GPU's own clocks, kernel by kernel: two nsys runs of
# bench/decode.js (8 and 40 steps, graph nodes traced), their per-kernel sums differenced per step by
# bench/nsys_step_diff.py. Works at 16k × 8, where ncu (bench/ncu-decode-step.sh) would replay every
# prefill kernel. GPU machine, CUDA library built, nsys on PATH.
# Usage: bash bench/nsys-decode-step.sh MODEL_DIR [CTX] [BATCH] [OUTDIR]     (e.g. a bench/decode.sh model)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1; CTX=${2:-4096}; BATCH=${3:-1}; OUT=${4:-/tmp/nsys-decode-step}
command -v nsys > /dev/null || { echo "nsys is not on PATH here: use bench/ncu-decode-step.sh (short contexts)" >&2; exit 2; }
mkdir -p "$OUT"
for steps in 8 40; do
  p="$OUT/step-$CTX-$BATCH-$steps"
  nsys profile -q --cuda-graph-trace=node -o "$p" -f true \
    node dist/bench/decode.js "$MODEL" --device cuda --kv-cache bf16 --contexts "$CTX" --batches "$BATCH" --steps "$steps" --repeats 1 > "$p.log"
  nsys stats -q --report cuda_gpu_kern_sum --format csv -o "$p" "$p.nsys-rep" > /dev/null
done
grep -h "| $CTX | $BATCH |" "$OUT"/step-"$CTX-$BATCH"-*.log | cut -c1-200
python3 bench/nsys_step_diff.py "$OUT/step-$CTX-$BATCH-8_cuda_gpu_kern_sum.csv" "$OUT/step-$CTX-$BATCH-40_cuda_gpu_kern_sum.csv" 32
