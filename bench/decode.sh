#!/usr/bin/env bash
# Issue 4, acceptance 5: decode tokens/s and KV bytes, original MHA vs converted MLA (absorbed, latent
# cache) on the GPU. A llama2-7b-shaped synth model with LAYERS layers (default 4, to keep the run
# within the device time of a session: per-token KV sizes scale with the layer count, tokens/s
# roughly inversely), converted with --rank 64 --rope-pairs 8 --rope-strategy uniform.
# Usage: bash bench/decode.sh [WORKDIR] [LAYERS]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/mha2mla-decode}
LAYERS=${2:-4}
CLI="node dist/src/cli/main.js"
mkdir -p "$W"
$CLI synth --arch llama2-7b --layers "$LAYERS" --dtype bf16 --out "$W/llama2-7b-L$LAYERS" --force > /dev/null 2>&1
# synth writes no tokenizer and the runtime loads one with the model: borrow the bundled one (token ids only).
cp fixtures/models/stories260K/tokenizer.json fixtures/models/stories260K/tokenizer_config.json "$W/llama2-7b-L$LAYERS/"
$CLI convert "$W/llama2-7b-L$LAYERS" --device cuda --rank 64 --rope-pairs 8 --rope-strategy uniform --out "$W/llama2-7b-L$LAYERS-mla" --force 2>&1 | tail -1
echo "$(date -u +%Y-%m-%d), $(nvidia-smi --query-gpu=name --format=csv,noheader), llama2-7b shape with $LAYERS layers, bf16 linear weights and f32 cache on the GPU"
node dist/bench/decode.js "$W/llama2-7b-L$LAYERS" "$W/llama2-7b-L$LAYERS-mla" --device cuda --contexts ${CONTEXTS:-1024,4096,16384} --batches ${BATCHES:-1,32} --steps ${STEPS:-16}
