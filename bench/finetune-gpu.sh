#!/usr/bin/env bash
# GPU fine-tuning throughput beside PyTorch, same synth checkpoint, same batch × seq, one command:
# ours (`mha2mla finetune --device cuda`, the MLA conversion, bf16 mixed precision and f32) and
# PyTorch 2.x HF LlamaForCausalLM of the original checkpoint (bf16 autocast, fused AdamW, SDPA),
# eager and torch.compile (bench/finetune_torch.py), each also with activation/gradient checkpointing. Tokens/s are steady state (steps after the first
# two); MFU = 6·params·tokens/s / 989 TFLOP/s.
# Usage: [PRECISIONS=…] [TORCH_MODES=…] [BRACKET=1] bash bench/finetune-gpu.sh [WORKDIR] [ARCH] [SEQ] [BATCH] [STEPS] [LAYERS] [TEXT] [RANK] [ROPE_PAIRS]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/mha2mla-ftgpu}; ARCH=${2:-smollm-135m}; SEQ=${3:-2048}; BATCH=${4:-8}; STEPS=${5:-8}; LAYERS=${6:-}
TEXT=${7:-../shared/data/text/tinystories_val.txt}; RANK=${8:-32}; PAIRS=${9:-4}
CLI="node dist/src/cli/main.js"
M="$W/$ARCH${LAYERS:+-L$LAYERS}"
mkdir -p "$W"
[ -f "$M/config.json" ] || $CLI synth --arch "$ARCH" ${LAYERS:+--layers "$LAYERS"} --dtype bf16 --out "$M" --force > /dev/null
cp fixtures/models/stories260K/tokenizer.json fixtures/models/stories260K/tokenizer_config.json "$M/"
[ -f "$M-mla/config.json" ] || $CLI convert "$M" --device cuda --rank "$RANK" --rope-pairs "$PAIRS" --rope-strategy uniform --out "$M-mla" --force > /dev/null 2>&1
echo "$(date -u +%F), $(nvidia-smi --query-gpu=name --format=csv,noheader), $ARCH${LAYERS:+ ($LAYERS layers)}, MLA R $PAIRS rank $RANK, seq $SEQ, batch $BATCH"
# A mode is eager or compile, optionally +ckpt (gradient checkpointing); $1 tags the JSON file.
torch_runs() {
  for mode in ${TORCH_MODES:-eager eager+ckpt compile}; do
    python3 bench/finetune_torch.py --model "$M" --seq "$SEQ" --batch "$BATCH" --steps "$STEPS" --warmup-steps 3 $([[ $mode == compile* ]] && echo --compile) $([[ $mode == *+ckpt ]] && echo --checkpointing) --json "$W/torch-$mode$1.json" 2>"$W/torch-$mode$1.err" | tail -1 || tail -3 "$W/torch-$mode$1.err"
  done
}
# PyTorch eager moves by ±5% from one run to the next on these machines: BRACKET=1 also runs the
# PyTorch modes before ours, so our runs sit between two of each.
[ "${BRACKET:-0}" = 1 ] && torch_runs -before
# A variant is a precision, optionally +ckpt (--checkpoint-activations).
for variant in ${PRECISIONS:-bf16 bf16+ckpt f32}; do
  prec=${variant%+ckpt}; ckpt=""; [ "$variant" != "$prec" ] && ckpt=--checkpoint-activations
  out="$W/ft-$variant"
  /usr/bin/time -f "%M" -o "$out.rss" $CLI finetune "$M-mla" --device cuda --precision "$prec" $ckpt --data "$TEXT" --val-fraction 0.02 --tokens $((SEQ * BATCH * STEPS)) --seq "$SEQ" --batch "$BATCH" --lr 1e-4 --out "$out" --force > "$out.log" 2>&1 || { tail -5 "$out.log"; continue; }
  node bench/finetune_summary.mjs "$out" "$variant" "$SEQ" "$BATCH" "$M-mla"
done
torch_runs ""
