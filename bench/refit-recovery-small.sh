#!/usr/bin/env bash
# --refit-output before and after a recovery fine-tune at small scale, on the CPU: stories260K at 16
# cached elements per token and layer (R 1, rank 2), our format (2-norm, BKV) and the deepseek format
# (BKV), each with and without the output refit, then 200k tokens of bench/finetune.sh's fine-tune.
# Prints: method, held-out NLL before, after, wall. METHODS (default the four below) picks rows by
# name: ours, ours-refit, ds, ds-refit, ours-per-layer (--kv-split per-layer over R 0 and 1).
# Usage: [METHODS="ours ours-per-layer"] bash bench/refit-recovery-small.sh [SCRATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:-/tmp/mha2mla-refit-small}; mkdir -p $S; CLI="node dist/src/cli/main.js"
DATA=../shared/data/text/tinystories_val.txt
COMMON="--data $DATA --tokens 200000 --seq 256 --batch 16 --lr 1e-3 --warmup 0.05 --schedule wsd --decay-fraction 0.2 --clip 1 --val-fraction 0.1 --force"
declare -A FLAGS=([ours]="" [ours-refit]="--refit-output" [ds]="--format deepseek" [ds-refit]="--format deepseek --refit-output" [ours-per-layer]="--kv-split per-layer --kv-split-pairs 0,1")
for tag in ${METHODS:-ours ours-refit ds ds-refit}; do
  [ -n "${FLAGS[$tag]+x}" ] || { echo "unknown method $tag" >&2; exit 2; }
  set -- ${FLAGS[$tag]}; name=${tag%%-*}
  $CLI convert stories260K --rank 2 --rope-pairs 1 --calib fixtures/text/tinystories.txt $( [ $name = ours ] && echo --rope-strategy 2-norm ) "$@" --out $S/$tag --force > $S/$tag.convert.log 2>&1 || { echo "$tag convert failed"; tail -2 $S/$tag.convert.log; continue; }
  start=$(date +%s)
  $CLI finetune $S/$tag $COMMON --out $S/$tag-ft --json $S/$tag-ft.json > /dev/null 2> $S/$tag-ft.log || { echo "$tag ft failed"; tail -2 $S/$tag-ft.log; continue; }
  node -e "const j=require('$S/$tag-ft.json');console.log('$tag', j.valNllBefore.toFixed(4), j.valNllAfter.toFixed(4), ($(date +%s)-$start)+'s')"
done
