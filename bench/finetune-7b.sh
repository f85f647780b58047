#!/usr/bin/env bash
# Full llama2-7b shape (32 layers) on one GPU: `finetune --train all` at seq 2048 (refused before any
# allocation when it cannot fit, with what would), with --checkpoint-activations, and `--train attention`;
# a few steps each, tokens/s and peak memory, beside PyTorch eager with gradient checkpointing. Usage: bash bench/finetune-7b.sh [WORKDIR] [BATCH] [STEPS] [TEXT]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/mha2mla-ft7b}; BATCH=${2:-2}; STEPS=${3:-3}; TEXT=${4:-../shared/data/text/tinystories_val.txt}
CLI="node dist/src/cli/main.js"
M="$W/llama2-7b"
mkdir -p "$W"
[ -f "$M/config.json" ] || $CLI synth --arch llama2-7b --dtype bf16 --out "$M" --force > /dev/null 2>&1
cp fixtures/models/stories260K/tokenizer.json fixtures/models/stories260K/tokenizer_config.json "$M/"
[ -f "$M-mla/config.json" ] || $CLI convert "$M" --device cuda --rank 64 --rope-pairs 8 --rope-strategy uniform --out "$M-mla" --force > /dev/null 2>&1
echo "$(date -u +%F), $(nvidia-smi --query-gpu=name --format=csv,noheader), llama2-7b (32 layers), MLA R 8 rank 64, seq 2048, batch $BATCH"
# A variant is --train all|attention, optionally +ckpt (--checkpoint-activations). Without
# checkpointing the 7B shape does not fit: the refusal (before anything is allocated) is printed.
# Peak GPU memory as the driver sees it (the allocator's own peak is in each run's finetune.json),
# polled once a second for the whole script.
SMI_LOG="$W/nvidia-smi-memory.txt"; : > "$SMI_LOG"
(while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >> "$SMI_LOG" 2>/dev/null; sleep 1; done) &
SMI=$!
trap 'kill $SMI 2>/dev/null' EXIT
for variant in ${VARIANTS:-all all+ckpt attention+ckpt}; do
  what=${variant%+ckpt}; ckpt=""; [ "$variant" != "$what" ] && ckpt=--checkpoint-activations
  out="$W/ft-$variant"
  if $CLI finetune "$M-mla" --device cuda --train $what $ckpt --data "$TEXT" --val-fraction 0.01 --tokens $((2048 * BATCH * STEPS)) --seq 2048 --batch "$BATCH" --lr 1e-5 --out "$out" --force > "$out.log" 2>&1; then
    grep "memory plan" "$out.log"; node bench/finetune_summary.mjs "$out" "bf16, --train $what $ckpt" 2048 "$BATCH"
  else
    echo "--train $what $ckpt: $(grep -E '^(error|hint)|hint:|memory plan|rror' "$out.log" | tr '\n' ' ')"
  fi
done
for mode in ${TORCH_MODES:-eager+ckpt}; do
  python3 bench/finetune_torch.py --model "$M" --seq 2048 --batch "$BATCH" --steps "$STEPS" --warmup-steps 2 $([[ $mode == compile* ]] && echo --compile) $([[ $mode == *+ckpt ]] && echo --checkpointing) --json "$W/torch-$mode.json" 2>"$W/torch-$mode.err" | tail -1 || tail -3 "$W/torch-$mode.err"
done
echo "peak GPU memory over the script (nvidia-smi, MiB): $(sort -n "$SMI_LOG" | tail -1)"
