#!/usr/bin/env bash
# GPU evaluation throughput: `mha2mla eval` on a llama2-7b-shaped synth model with LAYERS layers at
# context CTX, for each T > 1 attention route (MHA2MLA_CUDA_ATTENTION), beside bench/eval_torch.py
# (HF Llama, bf16, SDPA) in the same run. Usage: bash bench/eval-gpu.sh [WORKDIR] [LAYERS] [CTX] [WINDOWS] [TEXT]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/mha2mla-eval}; LAYERS=${2:-8}; CTX=${3:-4096}; WINDOWS=${4:-4}; TEXT=${5:-../shared/data/text/tinystories_val.txt}
CLI="node dist/src/cli/main.js"
M="$W/llama2-7b-L$LAYERS"
[ -f "$M/config.json" ] || $CLI synth --arch llama2-7b --layers "$LAYERS" --dtype bf16 --out "$M" --force > /dev/null 2>&1
cp fixtures/models/stories260K/tokenizer.json fixtures/models/stories260K/tokenizer_config.json "$M/"
echo "$(date -u +%F), $(nvidia-smi --query-gpu=name --format=csv,noheader), llama2-7b shape, $LAYERS layers, ctx $CTX, $WINDOWS windows"
for route in gemm flash; do
  MHA2MLA_CUDA_ATTENTION=$route $CLI eval "$M" --device cuda --text "$TEXT" --ctx "$CTX" --tokens $((CTX * WINDOWS)) --json "$W/eval-$route.json" > /dev/null 2> "$W/eval-$route.err"
  node -e "const j=require('$W/eval-$route.json'); const r=Array.isArray(j)?j[0]:j; console.log(JSON.stringify({tool:'mha2mla', attention:'$route', ctx:$CTX, tokens:r.tokens, seconds:r.seconds, tokens_per_s:+r.tokens_per_second.toFixed(1), nll:r.nll}))"
done
python3 bench/eval_torch.py "$M" "$CTX" "$WINDOWS"
