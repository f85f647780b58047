#!/usr/bin/env bash
# Issue 17: data-parallel fine-tuning on the GPUs of one machine beside PyTorch DDP (torchrun, HF
# LlamaForCausalLM of the original synth checkpoint, bf16 autocast, fused AdamW, SDPA; bench/finetune_torch.py),
# same shapes and global batch, in one command. Then the acceptance checks that need two GPUs:
#   scaling: tokens/s on each GPU count of GPUS that the machine has, ours (`finetune --gpus N`) and DDP's;
#   equivalence: the step losses of --gpus 2 against --gpus 1 at the same --batch (so 2 GPUs × batch B/2
#     against 1 GPU × batch B), largest relative difference;
#   resume: a --gpus 2 run stopped (SIGINT to the launcher) after STOP_AT steps, resumed on 1 and on 2 GPUs,
#     its final validation NLL against the uninterrupted --gpus 2 run's.
# Usage: [GPUS="1 2 4 8"] [STOP_AT=4] bash bench/multi-gpu.sh [WORKDIR] [ARCH] [SEQ] [BATCH] [STEPS] [LAYERS] [TEXT]
# e.g. bash bench/multi-gpu.sh /tmp/mg smollm-135m 2048 16 12; bash bench/multi-gpu.sh /tmp/mg llama2-7b 2048 8 6 ""
set -uo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/mha2mla-multigpu}; ARCH=${2:-smollm-135m}; SEQ=${3:-2048}; BATCH=${4:-16}; STEPS=${5:-12}; LAYERS=${6:-}
TEXT=${7:-fixtures/text/tinystories_25k.txt}
CLI="node dist/src/cli/main.js"
M="$W/$ARCH${LAYERS:+-L$LAYERS}"
mkdir -p "$W"
[ -f "$M/config.json" ] || $CLI synth --arch "$ARCH" ${LAYERS:+--layers "$LAYERS"} --dtype bf16 --out "$M" --force > /dev/null
cp fixtures/models/stories260K/tokenizer.json fixtures/models/stories260K/tokenizer_config.json "$M/"
[ -f "$M-mla/config.json" ] || $CLI convert "$M" --device cuda --rank 32 --rope-pairs 4 --rope-strategy uniform --out "$M-mla" --force > /dev/null 2>&1
AVAIL=$(nvidia-smi -L | wc -l)
echo "$(date -u +%F), ${AVAIL} x $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $ARCH${LAYERS:+ ($LAYERS layers)}, seq $SEQ, global batch $BATCH, $STEPS steps"
FT="--data $TEXT --val-fraction 0.02 --seq $SEQ --batch $BATCH --lr 1e-4"
for n in ${GPUS:-1 2 4 8}; do
  [ "$n" -le "$AVAIL" ] || { echo "gpus $n: skipped, this machine has $AVAIL"; continue; }
  [ $((BATCH % n)) = 0 ] || { echo "gpus $n: skipped, --batch $BATCH does not split over $n"; continue; }
  out="$W/ft-g$n"
  $CLI finetune "$M-mla" --gpus "$n" $FT --tokens $((SEQ * BATCH * STEPS)) --out "$out" --force > "$out.log" 2>&1 || { echo "ours, gpus $n: failed"; tail -5 "$out.log"; continue; }
  echo "ours, gpus $n: $(node bench/finetune_summary.mjs "$out" bf16 "$SEQ" "$BATCH" "$M-mla")"
  torchrun --standalone --nproc_per_node "$n" bench/finetune_torch.py --model "$M" --seq "$SEQ" --batch "$BATCH" --steps "$STEPS" --warmup-steps 3 --json "$W/torch-g$n.json" > "$W/torch-g$n.log" 2>&1 \
    && echo "DDP, gpus $n: $(cat "$W/torch-g$n.json")" || { echo "DDP, gpus $n: failed"; tail -5 "$W/torch-g$n.log"; }
done
losses() { node -e 'const fs=require("fs");console.log(JSON.stringify(fs.readFileSync(process.argv[1]+"/train_log.jsonl","utf8").trim().split("\n").map(JSON.parse).filter(r=>r.loss!==undefined).map(r=>r.loss)))' "$1"; }
if [ -f "$W/ft-g1/finetune.json" ] && [ -f "$W/ft-g2/finetune.json" ]; then
  node -e 'const [a,b]=process.argv.slice(1).map(JSON.parse);let m=0;a.forEach((x,i)=>m=Math.max(m,Math.abs(x-b[i])/Math.abs(x)));console.log(`equivalence: --gpus 2 against --gpus 1 at --batch '"$BATCH"', ${a.length} steps, largest relative step-loss difference ${m.toExponential(2)}`)' "$(losses "$W/ft-g1")" "$(losses "$W/ft-g2")"
fi
if [ "$AVAIL" -ge 2 ] && [ -f "$W/ft-g2/finetune.json" ]; then
  S="$W/ft-stop"
  rm -rf "$S"
  $CLI finetune "$M-mla" --gpus 2 $FT --tokens $((SEQ * BATCH * STEPS)) --out "$S" > "$S.log" 2>&1 &
  P=$!
  until [ "$(grep -c '"loss"' "$S/train_log.jsonl" 2>/dev/null || echo 0)" -ge "${STOP_AT:-4}" ] || ! kill -0 $P 2>/dev/null; do sleep 0.5; done
  kill -INT $P; wait $P; echo "stopped: exit $? ($(tail -1 "$S.log"))"
  for n in 1 2; do
    rm -rf "$S-r$n"; cp -r "$S" "$S-r$n"
    $CLI finetune "$M-mla" --gpus "$n" $FT --tokens $((SEQ * BATCH * STEPS)) --out "$S-r$n" --resume > "$S-r$n.log" 2>&1
    echo "resumed on $n GPU(s): exit $?, val NLL $(node -e 'console.log(require(process.argv[1]).val_nll_after)' "$S-r$n/finetune.json") (uninterrupted --gpus 2: $(node -e 'console.log(require(process.argv[1]).val_nll_after)' "$W/ft-g2/finetune.json"))"
  done
fi
