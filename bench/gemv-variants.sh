#!/usr/bin/env bash
# Tuning builds of the tensor-core gemv kernel (native/cuda/gemv.cu's GEMV_MMA_* macros) timed on a
# decode step's products in one GPU-machine call: every other source compiled once, gemv.cu once per
# variant, each linked into its own library (no cuDNN: these products do not use it) and loaded through
# MHA2MLA_CUDA_LIB by bench/linear-gpu.js --decode at MHA2MLA_GEMV_ROWS=16; cuBLAS (MHA2MLA_GEMV_ROWS=0)
# and PyTorch's F.linear (bench/linear_torch.py --decode) on the same shapes beside them. Each variant first
# passes the GPU suite's two gemv tests (float64 sums, linearMany's bits) or says it failed.
# Usage: bash bench/gemv-variants.sh OUTDIR "NAME=FLAGS" …   e.g. "nt2=-DGEMV_MMA_NT=2" "base="
# (env TESTS=0: no tests; SHAPES, HEADS, MANY: linear-gpu.js's --shapes, --heads and --many; default the llama2-7b
# batch-8 step's: its large products, MLA's per-head products, and MLA's and MHA's projections of the normed input)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?OUTDIR}; shift
SHAPES=${SHAPES:-8:4096:11008,8:11008:4096,8:4096:4096,8:4096:32000}
HEADS=${HEADS:-8:32:112:2048,8:32:2048:128}
MANY=${MANY:-8:4096:512+2048+512+3584,8:4096:4096+4096+4096}
mkdir -p "$OUT/obj"
FLAGS=(-O3 -std=c++17 -Xcompiler -fPIC -arch=native -Inative/include)
ls native/cuda/*.cu | grep -v '/gemv.cu$' | xargs -P "$(nproc)" -I{} sh -c 'nvcc "$@" -c {} -o "'"$OUT"'/obj/$(basename {} .cu).o"' _ "${FLAGS[@]}"
for v in "$@"; do
  name=${v%%=*}; extra=${v#*=}
  rm -f "$OUT/gemv-$name.o" "$OUT/lib-$name.so"  # a build that fails leaves no older library to be timed under its name
  # shellcheck disable=SC2086
  (nvcc "${FLAGS[@]}" $extra -c native/cuda/gemv.cu -o "$OUT/gemv-$name.o" && nvcc -shared -Xlinker -z,nodelete -arch=native "$OUT"/obj/*.o "$OUT/gemv-$name.o" -lcublas -lcusolver -o "$OUT/lib-$name.so") &
done
wait
for v in "$@"; do
  name=${v%%=*}
  [ -f "$OUT/lib-$name.so" ] || { echo "$name: did not build"; continue; }
  # Its products against float64 sums and linearMany's bits first (the GPU suite's two gemv tests; TESTS=0 skips them).
  if [ "${TESTS:-1}" != 0 ]; then
    MHA2MLA_CUDA_LIB="$OUT/lib-$name.so" node --test --test-name-pattern="^(linearMany|decode products)" dist/test/backends/cuda.test.js > "$OUT/test-$name.txt" 2>&1 \
      && echo "$name: gemv tests pass" || { echo "$name: gemv tests FAIL ($OUT/test-$name.txt)"; grep -m3 -A8 "^not ok" "$OUT/test-$name.txt"; }
  fi
  MHA2MLA_CUDA_LIB="$OUT/lib-$name.so" MHA2MLA_GEMV_ROWS=16 node dist/bench/linear-gpu.js --decode --shapes "$SHAPES" --heads "$HEADS" --many "$MANY" | sed "s/^/$name /"
done
MHA2MLA_GEMV_ROWS=0 MHA2MLA_CUDA_LIB="$OUT/lib-${1%%=*}.so" node dist/bench/linear-gpu.js --decode --shapes "$SHAPES" --heads "$HEADS" --many "$MANY" | sed "s/^/cublas /"
python3 bench/linear_torch.py --decode --shapes "$SHAPES" | sed "s/^/torch /"
