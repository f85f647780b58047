#!/usr/bin/env bash
# Issue 13: decode tokens/s, KV bytes and share of the HBM bound, original MHA vs converted MLA
# (absorbed, latent cache) on the GPU, beside HF transformers on the MHA model (bench/decode_torch.py),
# the peer a user would pick, in one command. A synth model of ARCH (default llama2-7b) with LAYERS
# layers (default 4, to keep the run within the device time of a session: per-token KV sizes scale
# with the layer count, tokens/s roughly inversely), converted with CONVERT (default the paper's
# llama2-7b setting, --rank 64 --rope-pairs 8 --rope-strategy uniform). The MLA model decodes in both
# absorbed forms (run time, as DeepSeek's inference does, and pre-multiplied).
# Ends with issue 13's goals judged over the rows (bench/decode-goals.ts), which it also keeps in
# WORKDIR/decode-rows-ARCH-LLAYERS.txt.
# Usage: bash bench/decode.sh [WORKDIR] [LAYERS]     (env ARCH, CONVERT, CONTEXTS, BATCHES, STEPS, KV_CACHES, MHA_ROUTES, PREMULTIPLIED, ROUNDS; PEER=0 skips PyTorch; GRAPHS=0 runs every step op by op)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/mha2mla-decode}
LAYERS=${2:-4}
ARCH=${ARCH:-llama2-7b}
CONVERT=${CONVERT:---rank 64 --rope-pairs 8 --rope-strategy uniform}
CLI="node dist/src/cli/main.js"
M="$W/$ARCH-L$LAYERS"
mkdir -p "$W"
$CLI synth --arch "$ARCH" --layers "$LAYERS" --dtype bf16 --out "$M" --force > /dev/null 2>&1
# synth writes no tokenizer and the runtime loads one with the model: borrow the bundled one (token ids only).
cp fixtures/models/stories260K/tokenizer.json fixtures/models/stories260K/tokenizer_config.json "$M/"
$CLI convert "$M" --device cuda $CONVERT --out "$M-mla" --force 2>&1 | tail -1
echo "$(date -u +%Y-%m-%d), $(nvidia-smi --query-gpu=name --format=csv,noheader), $ARCH shape with $LAYERS layers, bf16 linear weights, caches ${KV_CACHES:-f32 bf16}; convert $CONVERT"
SHAPES="--contexts ${CONTEXTS:-4096,16384} --batches ${BATCHES:-1,8,32,128} --steps ${STEPS:-16}"
ROWS="$W/decode-rows-$ARCH-L$LAYERS.txt"
run() { node dist/bench/decode.js "$@" --device cuda $SHAPES --graphs "${GRAPHS:-1}"; }
# KV_CACHES: the cache storages to run (default both; bf16 is what HF's peer stores, and where MLA
# takes the fused latent kernel); PREMULTIPLIED=0 skips the pre-multiplied absorbed form.
# MHA_ROUTES: on bf16 caches MHA runs once per decode-attention route (MHA2MLA_MHA_DECODE; default
# both: "kernel", recorded as a graph, and "cublas", op by op), so its best row is the fair comparison
# whichever route its shape defaults to; MHA_ROUTES=default runs only what it defaults to.
# ROUNDS=N (default 1): our rows N times over, each round separate processes (one GPU's processes differ
# by a few percent in rate); the goals take each row's median over the rounds (bench/decode-goals.ts).
{
  head=1
  for round in $(seq "${ROUNDS:-1}"); do
    for kv in ${KV_CACHES:-f32 bf16}; do
      if [ "$kv" = bf16 ] && [ "${MHA_ROUTES:-kernel cublas}" != default ]; then
        for route in ${MHA_ROUTES:-kernel cublas}; do
          MHA2MLA_MHA_DECODE=$route run "$M" --kv-cache bf16 | tail -n +$head | sed "s/| mha, bf16 cache/| mha ($route route), bf16 cache/"
          head=3
        done
        run "$M-mla" --kv-cache bf16 | tail -n +$head
      else
        run "$M" "$M-mla" --kv-cache "$kv" | tail -n +$head
      fi
      head=3
    done
    if [ "${PREMULTIPLIED:-1}" != 0 ]; then MHA2MLA_ABSORB=premultiplied run "$M-mla" | tail -n +3 || true; fi
  done
  if [ "${PEER:-1}" != 0 ]; then
    python3 bench/decode_torch.py "$M" "${CONTEXTS:-4096,16384}" "${BATCHES:-1,8,32,128}" "${STEPS:-16}"
  fi
} | tee "$ROWS"
# Issue 13's goals over these rows (best row of each kind per shape; bench/decode-goals.ts).
echo
node dist/bench/decode-goals.js "$ROWS"
