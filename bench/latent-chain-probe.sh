#!/usr/bin/env bash
# Issue 13: where a 16-key tile's ~2 µs goes in the roles kernel at 16k × 8 (docs/latent-decode-design.md, thirty-eighth
# session). Timing builds 1 (no MMAs), 2 (no copies: the math path), 6 (hand-offs alone), 7 (hand-offs + softmax), per
# layer call beside the tree, two rounds; ncu's per-SASS-instruction stall samples of the tree's kernel. GPU machine, run from
# any folder after npm run build (nvcc, ncu, cuobjdump on PATH). Usage: bash bench/latent-chain-probe.sh OUT_DIR
# (env DIAGS: the timing builds, default "1 2 6 7"; 8 and 9 read the stages' latent rows from shared memory once a
# warp a tile, both roles or the score warps alone. NCU=0 skips the profile; PIPES=1 adds ncu's tensor-pipe share.
# BUILDS: tuning builds as NAME:FLAGS words (FLAGS comma-separated), e.g. "ch1:-DROLES_CH=1
# pipe:-DROLES_PIPE=1,-DROLES_CH=1" or "wide:-DROLES_WIDE=1" (built for sm_90a), timed beside the DIAGS and, being meant to
# give the tree's outputs, each checked first by the GPU suite's latent test run on its library. The tree's library is
# scripts/build-native.mjs's, whose roles kernel is the ROLES_WIDE one on a 9.0 GPU unless MHA2MLA_ROLES_WIDE=0; the
# DIAGS and BUILDS are four-score-warp builds for sm_90 unless their flags say ROLES_WIDE=1.)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?OUT_DIR}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
W=${WORK:-/tmp/latent-chain-probe}  # objects and libraries (large: kept out of OUT_DIR)
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
FL="-O3 -std=c++17 -Xcompiler -fPIC -gencode=arch=compute_90,code=sm_90 -Inative/include"
LINK="-shared -Xlinker -z,nodelete -gencode=arch=compute_90,code=sm_90 -L/usr/local/cuda/lib64 -lcublas -lcusolver"
DIAGS=${DIAGS-1 2 6 7}
mkdir -p $W/obj $W/libs
( ls native/cuda/*.cu | grep -v latent_decode_roles | xargs -P 8 -I{} sh -c "nvcc $FL -c {} -o $W/obj/\$(basename {} .cu).o" &
  for d in $DIAGS; do nvcc $FL -DMLA_ROLES_DIAG=$d -c native/cuda/latent_decode_roles.cu -o $W/roles-d$d.o & done
  # A build with ROLES_WIDE (setmaxnreg) compiles for sm_90a.
  for b in ${BUILDS:-}; do f=$(echo "${b#*:}" | tr , ' '); fl=$FL; case "$f" in *ROLES_WIDE=1*) fl=${FL/compute_90,code=sm_90/compute_90a,code=sm_90a};; esac
    nvcc $fl $f -c native/cuda/latent_decode_roles.cu -o $W/roles-${b%%:*}.o & done; wait
  for d in $DIAGS; do nvcc $LINK $W/obj/*.o $W/roles-d$d.o -o $W/libs/lib-diag$d.so; done
  for b in ${BUILDS:-}; do nvcc $LINK $W/obj/*.o $W/roles-${b%%:*}.o -o $W/libs/lib-${b%%:*}.so; done; echo done ) > $OUT/diag-build.txt 2>&1 &
# The tree's own library meanwhile (the variants' builds above run beside it).
MHA2MLA_NVCC_FLAGS="-lineinfo" node scripts/build-native.mjs > $OUT/build.txt 2>&1 || { cat $OUT/build.txt; exit 1; }
echo "build $(el) s"
K=k_latent_decode_rolesILi32
[ "${NCU:-1}" = 0 ] || {
cuobjdump -sass -arch sm_90 build/native/libmla_cuda.so | awk -v k="$K" '$0 ~ "Function : .*" k { f = 1; print; next } f && /Function : / { f = 0 } f' > $OUT/$K.sass 2>&1
timeout 150 ncu --kernel-name regex:k_latent_decode --launch-skip 3 --launch-count 1 --section SourceCounters --section WarpStateStats \
  --page source --print-source sass --csv node dist/bench/decode-attention.js --contexts 16384 --batches 8 --reps 4 --kinds mla > $OUT/ncu-sass-16384x8.txt 2>&1
python3 bench/ncu_sass_summary.py $OUT/ncu-sass-16384x8.txt > $OUT/ncu-sass-16384x8-summary.txt 2>&1; tail -30 $OUT/ncu-sass-16384x8-summary.txt
echo "ncu $(el) s"
}
# The tensor pipe's busy share and the kernel's cycles (PIPES=1): whether the scores' and the weighted sum's MMAs, 128
# m16n8k16 a tile on each SM sub-partition, fill it (then only fewer MMAs or wgmma help, not a shorter hand-off chain).
[ "${PIPES:-0}" = 1 ] && timeout 120 ncu --kernel-name regex:k_latent_decode --launch-skip 3 --launch-count 1 \
  --metrics sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_tensor_op_hmma.sum,sm__cycles_elapsed.avg,smsp__inst_executed.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum \
  node dist/bench/decode-attention.js --contexts 16384 --batches 8 --reps 4 --kinds mla > $OUT/ncu-pipes-16384x8.txt 2>&1 && grep -E "sm__|smsp__|l1tex__" $OUT/ncu-pipes-16384x8.txt
wait; tail -1 $OUT/diag-build.txt
attn() { MHA2MLA_CUDA_LIB=$2 timeout 40 node dist/bench/decode-attention.js --contexts 16384 --batches 8 --kinds mla > $OUT/attn-$1.txt 2>&1; echo "== $1 rc $? $(grep -E 'fused \|' $OUT/attn-$1.txt | cut -d'|' -f6)"; }
for b in ${BUILDS:-}; do
  n=${b%%:*}
  [ -f $W/libs/lib-$n.so ] && MHA2MLA_CUDA_LIB=$W/libs/lib-$n.so timeout 90 node --test --test-name-pattern="fused latent decode" dist/test/backends/cuda.test.js > $OUT/test-$n.txt 2>&1
  echo "== $n latent test: $(grep -E '^# (pass|fail)' $OUT/test-$n.txt | tr '\n' ' ')"
done
for r in 1 2; do
  attn tree-$r ""
  for d in $DIAGS; do [ -f $W/libs/lib-diag$d.so ] && attn diag$d-$r $W/libs/lib-diag$d.so; done
  for b in ${BUILDS:-}; do n=${b%%:*}; [ -f $W/libs/lib-$n.so ] && attn $n-$r $W/libs/lib-$n.so; done
done
echo "done $(el) s"
