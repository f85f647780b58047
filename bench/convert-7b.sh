#!/usr/bin/env bash
# Issue 4, acceptance 3 and 4: a llama2-7b-shaped checkpoint (synth, bf16, 32 layers) converted on the
# GPU (--rank 64 --rope-pairs 8 --rope-strategy uniform; then 2-norm with calibration), beside a
# PyTorch script doing the same joint-SVD conversion on the same files in the same run.
# Usage: bash bench/convert-7b.sh [WORKDIR] [CALIB_TEXT]   (needs ~45 GB of disk, a GPU, python3+torch)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/mha2mla-7b}
CALIB=${2:-../shared/data/text/tinystories_val.txt}
CLI="node dist/src/cli/main.js"
mkdir -p "$W"
[ -f "$W/src/config.json" ] || $CLI synth --arch llama2-7b --dtype bf16 --out "$W/src" --force > "$W/synth.log" 2>&1
# synth writes no tokenizer; calibration only needs token ids, so borrow the bundled one.
cp fixtures/models/stories260K/tokenizer.json fixtures/models/stories260K/tokenizer_config.json "$W/src/" 2>/dev/null || true
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true

gpu_peak() { # samples used GPU memory every 100 ms while "$@" runs; prints the peak in MiB to $W/gpu_peak
  ( while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.1; done ) > "$W/gpu.samples" &
  local p=$!
  "$@"
  local rc=$?
  kill $p; sort -n "$W/gpu.samples" | tail -1 > "$W/gpu_peak"
  return $rc
}

if [ "${SKIP_UNIFORM:-}" = "" ]; then
echo "== mha2mla convert (uniform) on the GPU"
rm -rf "$W/mla"
gpu_peak python3 bench/measure.py $CLI convert "$W/src" --device cuda --rank 64 --rope-pairs 8 --rope-strategy uniform --out "$W/mla" --force > "$W/ours.log" 2> "$W/ours.time"
grep measure: "$W/ours.time"
node -e "const j=require('$W/mla/mla_conversion.json');console.log(JSON.stringify({timings:j.timings,kv:j.kv}))"
echo "peak GPU memory (nvidia-smi, MiB): $(cat $W/gpu_peak)"
tail -3 "$W/ours.log"
rm -rf "$W/mla"

if [ -z "${SKIP_TORCH:-}" ]; then
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
echo "== PyTorch joint-SVD conversion (torch.linalg.svd fp32 on the GPU, safetensors)"
rm -rf "$W/torch"
gpu_peak python3 bench/measure.py python3 bench/convert_7b_torch.py "$W/src" "$W/torch" 64 8 2> "$W/torch.time"
grep measure: "$W/torch.time"
echo "peak GPU memory (nvidia-smi, MiB): $(cat $W/gpu_peak)"
rm -rf "$W/torch"
fi
fi

if [ "${SKIP_2NORM:-}" = "" ]; then
  echo "== mha2mla convert (2-norm, --calib-samples 32 --calib-len 2048) on the GPU"
  gpu_peak python3 bench/measure.py timeout ${TWO_NORM_TIMEOUT:-3600} $CLI convert "$W/src" --device cuda --rank 64 --rope-pairs 8 --rope-strategy 2-norm --calib "$CALIB" --calib-samples 32 --calib-len 2048 --out "$W/mla2" --force > "$W/ours2.log" 2> "$W/ours2.time" || echo "2-norm run exited with $?"
  grep measure: "$W/ours2.time"; tr '\r' '\n' < "$W/ours2.time" | grep -v "^$" | tail -4
  [ -f "$W/mla2/mla_conversion.json" ] && node -e "const j=require('$W/mla2/mla_conversion.json');console.log(JSON.stringify({timings:j.timings}))"
  echo "peak GPU memory (nvidia-smi, MiB): $(cat $W/gpu_peak)"
  tail -3 "$W/ours2.log"
  rm -rf "$W/mla2"
fi
