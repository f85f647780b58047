#!/usr/bin/env bash
# The latent decode kernel's tuning builds against this tree's build, in one GPU-machine call: each
# library in LIBDIR (built here with `CUBLAS_HOME=… NVCC_EXTRA=-DFLAG=1 bash bench/build-cuda-ab.sh HEAD
# LIBDIR/lib-NAME.so`, carried) times the MLA attention alone per layer call at the llama2-7b shape, with
# the tree's build before and after (drift). decode-attention.js prints each run's largest difference
# between the fused kernel and the cuBLAS route: a variant's correctness check.
# Usage: bash bench/latent-variants.sh LIBDIR OUT_DIR [CONTEXTS] [BATCHES]   (needs `npm run build`, a GPU)
set -uo pipefail
cd "$(dirname "$0")/.."
LIBDIR=${1:?LIBDIR with lib-*.so} OUT=${2:?OUT_DIR} CONTEXTS=${3:-16384} BATCHES=${4:-8,32}
mkdir -p "$OUT"
attn() {  # $1 tag, $2 library ("" = the tree's build)
  MHA2MLA_CUDA_LIB=$2 timeout 90 node dist/bench/decode-attention.js --contexts "$CONTEXTS" --batches "$BATCHES" --kinds mla > "$OUT/attn-$1.txt" 2>&1
  echo "== $1 (rc $?)"; grep -E "fused|max abs" "$OUT/attn-$1.txt"
}
attn tree ""
for lib in "$LIBDIR"/lib-*.so; do n=$(basename "$lib" .so); attn "${n#lib-}" "$PWD/$lib"; done
attn tree-again ""
