#!/usr/bin/env bash
# A CUDA library of another commit, for an A/B in one GPU-machine call: build it here (no GPU needed,
# ~40 s on 2 cores), carry it, and point MHA2MLA_CUDA_LIB at it on the device beside the working tree's
# own build. sm_90 only and without cuDNN (the decode kernels do not use it; prefill then takes our
# fused kernels or cuBLAS). Needs nvcc and the cuBLAS/cuSOLVER headers and libraries: CUBLAS_HOME holds
# include/ and lib/ (e.g. the nvidia-cublas and nvidia-cusolver wheels unpacked into one nvidia/cu13).
# Usage: CUBLAS_HOME=DIR [NVCC_EXTRA=FLAGS] bash bench/build-cuda-ab.sh REF OUT.so     (REF: a commit, e.g. main)
set -euo pipefail
cd "$(dirname "$0")/.."
REF=${1:?REF (a commit)} OUT=${2:?OUT.so}
H=${CUBLAS_HOME:?CUBLAS_HOME: a folder with the cuBLAS/cuSOLVER include/ and lib/}
W=$(mktemp -d)
trap 'git worktree remove --force "$W/src" >/dev/null 2>&1; rm -rf "$W"' EXIT
git worktree add -q --detach "$W/src" "$REF"
# nvcc takes -lcublas only through an unversioned name; the wheels ship versioned ones.
mkdir -p "$W/link"
for l in cublas cublasLt cusolver; do ln -s "$(ls "$H"/lib/lib$l.so.* | head -1)" "$W/link/lib$l.so"; done
# NVCC_EXTRA: more nvcc flags, e.g. -DMLA_LATENT_DIAG=1 for the latent kernel's timing builds.
ls "$W"/src/native/cuda/*.cu | xargs -P "$(nproc)" -I{} sh -c \
  'nvcc -O3 -std=c++17 -Xcompiler -fPIC -gencode=arch=compute_90,code=sm_90 $3 -I "$1/src/native/include" -I "$2/include" -c "$0" -o "$1/$(basename "$0" .cu).o"' {} "$W" "$H" "${NVCC_EXTRA:-}"
nvcc -shared -Xlinker -z,nodelete -gencode=arch=compute_90,code=sm_90 "$W"/*.o -L"$W/link" -lcublas -lcusolver -o "$OUT"
echo "built $OUT from $(git rev-parse --short "$REF") (sm_90, no cuDNN)"
