#!/usr/bin/env bash
# Build variants of the fused attention kernels (compile switches of native/cuda/attention_mma.cu:
# MLA_MMA_FWD_KT, MLA_MMA_FWD_MT2, MLA_MMA_HOLD, MLA_MMA_HEAVY_FIRST) and time each with
# bench/attention-train.js in one command, so the variants are compared on one machine in one run.
# Usage: bash bench/attention-variants.sh B:T:H:Hkv:Dh[,…] NAME:"FLAGS" …
#   e.g. bash bench/attention-variants.sh 8:2048:9:3:64 base:"" kt128:"-DMLA_MMA_FWD_KT=128 -DMLA_MMA_FWD_MT2=0"
# FLAGS of the form @FILE build FILE (an earlier copy of attention_mma.cu) instead of the current source.
# PARITY=1 also runs the CUDA suite's training-kernel parity test on each variant; VARIANT_DIR=DIR keeps
# the libraries (DIR/lib-NAME.so, for MHA2MLA_CUDA_LIB) instead of deleting them.
# (GPU machine; `npm run build` done; nvcc on PATH.)
set -euo pipefail
cd "$(dirname "$0")/.."
SHAPES=$1; shift
W=${VARIANT_DIR:-$(mktemp -d)}
flags=(-O3 -std=c++17 -Xcompiler -fPIC -arch=native -Inative/include)
mkdir -p "$W/common"
for f in native/cuda/*.cu; do
  [ "$(basename "$f")" = attention_mma.cu ] || nvcc "${flags[@]}" -c "$f" -o "$W/common/$(basename "$f" .cu).o" &
done
for v in "$@"; do
  name=${v%%:*}; extra=${v#*:}
  src=native/cuda/attention_mma.cu
  if [ "${extra:0:1}" = @ ]; then src=${extra:1}; extra="-x cu"; fi
  # shellcheck disable=SC2086  # FLAGS is a list of -D switches
  (nvcc "${flags[@]}" -Inative/cuda $extra -c "$src" -o "$W/$name.o") &
done
wait
for v in "$@"; do
  name=${v%%:*}
  nvcc -shared -arch=native -Xlinker -z,nodelete "$W"/common/*.o "$W/$name.o" -lcublas -lcusolver -o "$W/lib-$name.so"
done
for v in "$@"; do
  name=${v%%:*}
  MHA2MLA_CUDA_LIB="$W/lib-$name.so" node dist/bench/attention-train.js --shapes "$SHAPES" --routes fused --label "$name"
  if [ "${PARITY:-}" = 1 ]; then
    # A failing variant is reported and the others still run (set -e would end the loop here).
    MHA2MLA_CUDA_LIB="$W/lib-$name.so" node --test --test-name-pattern "training kernels" dist/test/backends/cuda.test.js > "$W/parity-$name.txt" 2>&1 || echo "$name: PARITY FAILED"
    grep -E "^not ok|^# (pass|fail)" "$W/parity-$name.txt" | sed "s/^/$name: /" || true
  fi
done
[ -n "${VARIANT_DIR:-}" ] || rm -rf "$W"
