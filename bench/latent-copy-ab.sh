#!/usr/bin/env bash
# One GPU-machine call for the latent kernel's copy path (issue 13; docs/latent-decode-design.md): the copy-only
# microbenchmark (bench/latent-copy.cu: the kernel's grid and stage ring by each way of copying), then the roles
# kernel built with each set of tuning flags given (default: cp.async stages, each split from its own starting
# tile, each with its no-MMA timing build, and the no-MMA timing build of the default) beside
# the tree's build, timed per layer call by decode-attention.js (whose "max abs diff" line checks each against
# the cuBLAS route). Needs `npm run build` and the tree's CUDA library built (node scripts/build-native.mjs), nvcc.
# Usage: bash bench/latent-copy-ab.sh OUT_DIR ["FLAGS" …]      e.g. bash bench/latent-copy-ab.sh /tmp/lca "-DROLES_CPASYNC=1"
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?OUT_DIR}; shift
[ $# -gt 0 ] || set -- "-DROLES_CPASYNC=1" "-DROLES_CPASYNC=1 -DMLA_ROLES_DIAG=1" "-DROLES_STAGGER=1" "-DROLES_STAGGER=1 -DMLA_ROLES_DIAG=1" "-DMLA_ROLES_DIAG=1"
FLAGS=("$@")
mkdir -p "$OUT/obj"
CUDA_LIB=${CUDA_HOME:-/usr/local/cuda}/lib64
FL="-O3 -std=c++17 -Xcompiler -fPIC -gencode=arch=compute_90,code=sm_90 -Inative/include"
# The other sources once (in the background while the microbenchmark runs), then the roles kernel per flag set.
( ls native/cuda/*.cu | grep -v latent_decode_roles | xargs -P "$(nproc)" -I{} sh -c "nvcc $FL -c {} -o $OUT/obj/\$(basename {} .cu).o" ) > "$OUT/objects.txt" 2>&1 &
i=0
for flags in "${FLAGS[@]}"; do
  i=$((i + 1))
  ( nvcc $FL $flags -c native/cuda/latent_decode_roles.cu -o "$OUT/roles-$i.o" 2>&1 | grep -v Advisory | grep -i error ) &
done
nvcc -O3 -std=c++17 -arch=sm_90 -o "$OUT/lc" bench/latent-copy.cu > "$OUT/lc-build.txt" 2>&1 || { cat "$OUT/lc-build.txt"; exit 1; }
# (stages, stagger): the kernel's ring, then each split from its own starting tile, then two stages.
for run in "3 0" "3 1" "2 0"; do read -r st sg <<< "$run"; "$OUT/lc" 8 16384 "$st" "$sg" | tee "$OUT/latent-copy-$st-$sg.txt"; done
wait
i=0
for flags in "${FLAGS[@]}"; do
  i=$((i + 1))
  nvcc -shared -Xlinker -z,nodelete -gencode=arch=compute_90,code=sm_90 "$OUT"/obj/*.o "$OUT/roles-$i.o" -L"$CUDA_LIB" -lcublas -lcusolver -o "$OUT/lib-$i.so" || { echo "link failed for $flags"; continue; }
done
attn() { MHA2MLA_CUDA_LIB=$2 timeout 90 node dist/bench/decode-attention.js --contexts 4096,16384 --batches 1,8 --kinds mla > "$OUT/attn-$1.txt" 2>&1; echo "== $1 (rc $?)"; grep -E "fused|max abs" "$OUT/attn-$1.txt"; }
attn tree ""
i=0
for flags in "${FLAGS[@]}"; do i=$((i + 1)); echo "lib-$i: $flags"; [ -f "$OUT/lib-$i.so" ] && attn "lib-$i" "$(realpath "$OUT/lib-$i.so")"; done
attn tree-again ""
