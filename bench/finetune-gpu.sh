#!/usr/bin/env bash
# Fine-tuning on the GPU, every op on the device (attention backward and the distillation KL included):
# a llama2-7b-shaped synth model with LAYERS layers, converted (--rank 64 --rope-pairs 8), then
# `finetune --device cuda` with and without distillation from the original. Prints tokens/s and loss.
# Usage: bash bench/finetune-gpu.sh [WORKDIR] [LAYERS] [TEXT]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/mha2mla-ftgpu}; LAYERS=${2:-2}; TEXT=${3:-../shared/data/text/tinystories_val.txt}
CLI="node dist/src/cli/main.js"
M="$W/llama2-7b-L$LAYERS"
mkdir -p "$W"
[ -f "$M/config.json" ] || $CLI synth --arch llama2-7b --layers "$LAYERS" --dtype bf16 --out "$M" --force > /dev/null 2>&1
cp fixtures/models/stories260K/tokenizer.json fixtures/models/stories260K/tokenizer_config.json "$M/"
$CLI convert "$M" --device cuda --rank 64 --rope-pairs 8 --rope-strategy uniform --out "$M-mla" --force 2>&1 | tail -1
echo "$(date -u +%F), $(nvidia-smi --query-gpu=name --format=csv,noheader), llama2-7b shape, $LAYERS layers (MLA), seq 512, batch 4, 16384 tokens"
for mode in plain distill; do
  extra=""; [ $mode = distill ] && extra="--distill $M"
  $CLI finetune "$M-mla" --device cuda --data "$TEXT" --tokens 16384 --seq 512 --batch 4 --lr 1e-4 --out "$W/ft-$mode" --force $extra > "$W/ft-$mode.log" 2>&1
  echo "== $mode"; tr '\r' '\n' < "$W/ft-$mode.log" | grep -v '^$' | tail -3
  tail -1 "$W/ft-$mode/train_log.jsonl" 2>/dev/null || true
done
