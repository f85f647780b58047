#!/usr/bin/env bash
# GPU evaluation (prefill) throughput: `mha2mla eval` of a bf16 synth model of ARCH (LAYERS layers, all
# when empty) and of its MLA conversion (R 4 uniform, rank RANK) at context CTX, windows batched, on
# each attention route of ROUTES (default "default fused cudnn gemm": what runs unset, the fused
# tensor-core kernels, cuDNN's fused attention where the CUDA library was built with it, the cuBLAS
# chunks; each run names its
# route, so an MHA2MLA_CUDA_ATTENTION in the caller's environment does not relabel a row), beside
# bench/eval_torch.py (HF Llama, bf16, SDPA; batch 1 and batch 8) in the same run.
# BATCH: windows per forward (eval --batch; default eval's own choice). Each of our rows gives tokens/s
# over the whole run and after the first forward (which alone pays the one-time costs): HF's script times
# after a warm-up forward, so the second is the one to set beside it.
# Usage: [ROUTES=…] [BATCH=…] bash bench/eval-gpu.sh [WORKDIR] [ARCH] [LAYERS] [CTX] [WINDOWS] [TEXT] [RANK]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/mha2mla-eval}; ARCH=${2:-smollm-135m}; LAYERS=${3:-}; CTX=${4:-2048}; WINDOWS=${5:-32}
TEXT=${6:-../shared/data/text/tinystories_val.txt}; RANK=${7:-32}
# Fail before any model is made: on the GPU machine ../shared is absent, so a default TEXT is missing there.
[ -f "$TEXT" ] || { echo "bench/eval-gpu.sh: no text at $TEXT (on the GPU machine ../shared is not copied: carry one, e.g. .carry/text/debian_train.txt, and pass it as TEXT)" >&2; exit 2; }
CLI="node dist/src/cli/main.js"
M="$W/$ARCH${LAYERS:+-L$LAYERS}"
mkdir -p "$W"
[ -f "$M/config.json" ] || $CLI synth --arch "$ARCH" ${LAYERS:+--layers "$LAYERS"} --dtype bf16 --out "$M" --force > /dev/null 2>&1
cp fixtures/models/stories260K/tokenizer.json fixtures/models/stories260K/tokenizer_config.json "$M/"
[ -f "$M-mla/config.json" ] || $CLI convert "$M" --device cuda --rank "$RANK" --rope-pairs 4 --rope-strategy uniform --out "$M-mla" --force > /dev/null 2>&1
echo "$(date -u +%F), $(nvidia-smi --query-gpu=name --format=csv,noheader), $ARCH${LAYERS:+ ($LAYERS layers)}, ctx $CTX, $WINDOWS windows"
for model in "$M" "$M-mla"; do
  for route in ${ROUTES:-default fused cudnn gemm}; do
    if [ "$route" = cudnn ] && ! grep -q cuDNN build/native/libmla_cuda.so.json 2>/dev/null; then echo "{\"tool\":\"mha2mla\",\"attention\":\"cudnn\",\"skipped\":\"this build has no cuDNN route\"}"; continue; fi
    name=$(basename "$model")-$route
    env MHA2MLA_CUDA_ATTENTION="$route" $CLI eval "$model" --device cuda --text "$TEXT" --ctx "$CTX" --tokens $(((CTX - 1) * WINDOWS)) ${BATCH:+--batch "$BATCH"} --json "$W/eval-$name.json" > /dev/null 2> "$W/eval-$name.err" || { tail -3 "$W/eval-$name.err"; continue; }
    node -e "const j=require('$W/eval-$name.json'); const r=Array.isArray(j)?j[0]:j; console.log(JSON.stringify({tool:'mha2mla', model:'$(basename "$model")', attention:'$route', ctx:$CTX, tokens:r.tokens, seconds:r.seconds, tokens_per_s:+r.tokens_per_second.toFixed(1), tokens_per_s_after_first_forward:r.tokens_per_second_warm?+r.tokens_per_second_warm.toFixed(1):null, nll:r.nll}))"
  done
done
for b in 1 8; do python3 bench/eval_torch.py "$M" "$CTX" "$WINDOWS" "$b"; done
