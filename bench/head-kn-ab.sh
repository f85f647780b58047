#!/usr/bin/env bash
# Issue 13: MLA's key up-projection at a decode batch's 5–16 rows a group (headLinearKN), by route: cuBLAS (the
# default past 4 rows), the FMA kernel (MHA2MLA_HEAD_KN_ROWS=8 MHA2MLA_HEAD_KN_MMA=0) and the tensor-core kernel
# (MHA2MLA_HEAD_KN_ROWS=16; docs/wip/head-kn-mma.patch until it lands). Per call (bench/linear-gpu.js --heads,
# llama2-7b's 32 groups, K 112, N 2048), then recorded decode steps of a llama2-7b-shaped MHA model and its MLA
# conversion, ROUNDS rounds alternating the default and the tensor-core route (separate processes), tokens/s.
# GPU machine, after npm run build and node scripts/build-native.mjs. Usage: bash bench/head-kn-ab.sh [WORKDIR] [LAYERS]
# (env CONTEXTS, BATCHES, ROUNDS)
set -uo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/head-kn-ab}
LAYERS=${2:-4}
M=$W/llama2-7b-L$LAYERS
CLI="node dist/src/cli/main.js"
echo "$(date -u +%F), $(nvidia-smi --query-gpu=name --format=csv,noheader)"
mkdir -p "$W"
if [ ! -f "$M-mla/config.json" ]; then
  $CLI synth --arch llama2-7b --layers "$LAYERS" --dtype bf16 --out "$M" --force > /dev/null
  cp fixtures/models/stories260K/tokenizer.json fixtures/models/stories260K/tokenizer_config.json "$M/"
  $CLI convert "$M" --device cuda --rank 64 --rope-pairs 8 --rope-strategy uniform --out "$M-mla" --force 2>&1 | tail -1
fi
for env in "MHA2MLA_HEAD_KN_ROWS=4" "MHA2MLA_HEAD_KN_ROWS=8 MHA2MLA_HEAD_KN_MMA=0" "MHA2MLA_HEAD_KN_ROWS=16"; do
  echo "== $env"
  env $env node dist/bench/linear-gpu.js --decode --shapes 8:4096:4096 --heads 8:32:112:2048,16:32:112:2048 2>&1 | grep -E "headLinearKN|rror"
done
for r in $(seq 1 "${ROUNDS:-3}"); do
  for rows in 4 16; do
    MHA2MLA_HEAD_KN_ROWS=$rows node dist/bench/decode.js "$M" "$M-mla" --device cuda --kv-cache bf16 --contexts "${CONTEXTS:-4096,16384}" --batches "${BATCHES:-8}" --steps 16 --repeats 3 2>&1 | grep "^| llama" | sed "s/^/round $r, MHA2MLA_HEAD_KN_ROWS=$rows /"
  done
done
