#!/usr/bin/env bash
# Conversion methods at equal KV bytes, before and after the recovery fine-tune (conversion-quality
# and deepseek-format issues): mha26m-debian at −81.25% KV (144 cached elements per token and layer),
# calibration on debian_train.txt, 500k tokens of debian_train.txt on the GPU (bf16; seq 256, batch 16,
# lr 1e-3, WSD: the settings of bench/finetune-numerics.sh's recovery stage), NLL on debian_dev_val.txt
# (ctx 256, first 20,000 tokens) by `mha2mla eval`. Prints a Markdown table.
# DEVICE=cpu runs the same table without a GPU (float32; slower: about 20 minutes per method on 2 cores).
# Usage: [DEVICE=cuda|cpu] [METHODS="ours-2norm ours-2norm-bkv ours-2norm-disjoint ours-r8-bkv ours-per-layer-bkv deepseek-48-bkv deepseek-40-bkv+refit"] [LR=1e-3] bash bench/recovery-table.sh [WORKDIR] [MODEL] [TEXT_DIR]
# (LR: the peak learning rate; 1e-3 throws the better-initialized deepseek conversion off, see docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/mha2mla-recovery}; M=${2:-../shared/models/mha26m-debian}; TD=${3:-../shared/data/text}
CLI="node dist/src/cli/main.js"
mkdir -p "$W"
DEVICE=${DEVICE:-cuda}; PRECISION=bf16; [ "$DEVICE" = cpu ] && PRECISION=f32
EV="--text $TD/debian_dev_val.txt --ctx 256 --tokens 20000 --weights f32 --device $DEVICE"
TRAIN="--tokens 500000 --seq 256 --batch 16 --lr ${LR:-1e-3} --warmup 0.05 --decay-fraction 0.2 --val-fraction 0.1 --device $DEVICE --precision $PRECISION"
nll() { $CLI eval "$1" $EV --json "$2" > /dev/null 2>> "$W/eval.log"; node -e "console.log(require(require('path').resolve('$2')).nll.toFixed(5))"; }
echo "$(date -u +%F), $DEVICE ($PRECISION): $([ "$DEVICE" = cpu ] && echo "$(nproc) cores" || nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null), $(basename "$M"), lr ${LR:-1e-3}"
echo
echo "| method (equal KV bytes) | converted | fine-tuned (500k tokens) | fine-tune wall |"
echo "| --- | --- | --- | --- |"
echo "| original MHA | $(nll "$M" "$W/original.json") | | |"
for method in ${METHODS:-ours-2norm ours-2norm-bkv deepseek-48-bkv}; do
  # A "+refit" suffix adds --refit-output (o_proj solved again on the calibration text).
  base=${method%+refit}
  case $base in
    ours-2norm) flags="--rope-strategy 2-norm --rope-pairs 4 --rank 16 --no-balance-kv"; name="ours, 2-norm R 4, rank 16, weight SVD (the paper's)";;
    ours-2norm-bkv) flags="--rope-strategy 2-norm --rope-pairs 4 --rank 16"; name="ours, 2-norm R 4, rank 16, BKV (default)";;
    ours-2norm-disjoint) flags="--rope-strategy 2-norm --rope-pairs 4 --rank 16 --rope-disjoint"; name="ours, 2-norm R 4, rank 16, BKV, --rope-disjoint (exportable to deepseek_v3 exactly)";;
    ours-per-layer-bkv) flags="--rope-strategy 2-norm --rope-pairs 4 --rank 16 --kv-split per-layer"; name="ours, 2-norm, the bytes of R 4 rank 16 split per layer (--kv-split per-layer), BKV";;
    ours-r*-bkv) r=$(echo "$base" | cut -d- -f2 | tr -d r); flags="--rope-strategy 2-norm --rope-pairs $r --rank $((24 - 2 * r))"; name="ours, 2-norm R $r, rank $((24 - 2 * r)), BKV (the same bytes, more rope)";;
    deepseek-*) dr=$(echo "$base" | cut -d- -f2); bkv=""; [[ $base == *-bkv ]] || bkv=--no-balance-kv
      flags="--format deepseek --rope-pairs 4 --rank 16 --rope-dim $dr --kv-lora-rank $((144 - dr)) $bkv"; name="deepseek_v3, rope dim $dr, kv_lora_rank $((144 - dr))${bkv:+, no BKV}${bkv:-, BKV}";;
    *) echo "unknown method $method" >&2; exit 2;;
  esac
  [ "$base" != "$method" ] && { flags="$flags --refit-output"; name="$name, output refit"; }
  out="$W/$method"
  $CLI convert "$M" $flags --calib "$TD/debian_train.txt" --device cpu --out "$out" --force > "$out.convert.log" 2>&1 || { echo "| $name | convert failed: $(tail -1 "$out.convert.log") | | |"; continue; }
  before=$(nll "$out" "$out.before.json")
  start=$(date +%s.%N)
  $CLI finetune "$out" --data "$TD/debian_train.txt" $TRAIN --out "$out-ft" --force --json "$out.ft.json" > /dev/null 2> "$out.ft.log" || { echo "| $name | $before | fine-tune failed: $(tail -1 "$out.ft.log") | |"; continue; }
  wall=$(node -e "console.log(($(date +%s.%N)-$start).toFixed(0))")
  echo "| $name | $before | $(nll "$out-ft" "$out.after.json") | $wall s |"
done
