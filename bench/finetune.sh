#!/usr/bin/env bash
# Recovery fine-tuning of converted stories260K (the fine-tuning issue's acceptance 3 and 4):
# train on the first 90% of tinystories_val.txt, measure on the last 10% ([BOS] + 255 windows),
# seq 256, batch 16, AdamW (0.9, 0.95), lr 1e-3, 5% warmup, 1-sqrt decay over the last 20%,
# clip 1.0, 200k tokens; plain cross-entropy and distillation from the original model.
# Usage: bash bench/finetune.sh [SCRATCH]   Prints a Markdown section for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:-/tmp/mha2mla-ft}
mkdir -p "$S"
CLI="node dist/src/cli/main.js"
DATA=../shared/data/text/tinystories_val.txt
COMMON="--data $DATA --tokens 200000 --seq 256 --batch 16 --lr 1e-3 --warmup 0.05 --schedule wsd --decay-fraction 0.2 --clip 1 --val-fraction 0.1 --force"
echo "## Recovery fine-tuning ($(date -u +%Y-%m-%d), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), node $(node --version))"
echo
echo "Command: \`bash bench/finetune.sh\`. Held-out NLL on the last 10% of the tokens of tinystories_val.txt. Original stories260K: 1.871."
echo
echo "| conversion | training | NLL before | NLL after | PyTorch reference | wall | tokens/s |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for setting in "1 2 3.143–3.153" "2 4 2.623"; do
  set -- $setting
  $CLI convert stories260K --rope-strategy high --rope-pairs $1 --rank $2 --out "$S/mla-r$1-k$2" --force > /dev/null 2>&1
  modes="ce"; [ "$1" = 1 ] && modes="ce distill"
  for mode in $modes; do
    extra=""; [ "$mode" = distill ] && extra="--distill stories260K --distill-weight 0.5"
    start=$(date +%s.%N)
    $CLI finetune "$S/mla-r$1-k$2" $COMMON $extra --out "$S/ft-r$1-k$2-$mode" --json "$S/ft-r$1-k$2-$mode.json" > /dev/null 2> "$S/ft-r$1-k$2-$mode.log"
    end=$(date +%s.%N)
    node -e "const j=require('$S/ft-r$1-k$2-$mode.json');console.log('| high R=$1 rank $2 | '+('$mode'==='ce'?'cross-entropy':'distill (w 0.5, T 1)')+' | '+j.valNllBefore.toFixed(3)+' | '+j.valNllAfter.toFixed(3)+' | '+('$mode'==='ce'?'$3':'–')+' | '+($end-$start).toFixed(0)+' s | '+Math.round(j.tokensPerSecond)+' |')"
  done
done
