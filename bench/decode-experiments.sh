#!/usr/bin/env bash
# One GPU-machine call's worth of decode experiments for issue 13, each step under its own time limit
# so one slow step cannot eat the call: the GPU suite, the latent kernel per call at the llama2-7b
# shape, the recorded decode steps of bench/decode.sh (DECODE=1), and ncu's stall reasons for the
# kernel (NCU=1), and where a recorded 4k × 1 step goes kernel by kernel for MLA and MHA
# (STEP=1, after DECODE=1 made the models), and the latent kernel's SASS with ncu's per-instruction
# counters (SASS=1; SASS_KERNEL names the instantiation, the roles kernel at L 2048 by default).
# Usage: [DECODE=1] [NCU=1] [STEP=1] [SASS=1] [AB_LIB=FILE] [COPY_MODES=1] bash bench/decode-experiments.sh OUT_DIR   (needs `npm run build` done, a GPU)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?OUT_DIR}
mkdir -p "$OUT"
step() { local name=$1 limit=$2; shift 2; echo "== $name (≤ ${limit}s)"; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1; local rc=$?; echo "   rc $rc, $((SECONDS - t0)) s"; }
# With NCU=1 the library is built with line tables, so the kernel's source counters name lines.
[ -n "${NCU:-}" ] && export MHA2MLA_NVCC_FLAGS="${MHA2MLA_NVCC_FLAGS:-} -lineinfo"
step suite 240 bash bench/cuda-check.sh "$OUT/cuda-test.txt"
tail -3 "$OUT/cuda-test.txt"; grep "^not ok" "$OUT/cuda-test.txt" | head
# AB_LIB=FILE (another commit's library, bench/build-cuda-ab.sh): the kernels per call under it and under
# this tree's build, alternated twice, in the same call (machine drift cancels).
if [ -n "${AB_LIB:-}" ]; then
  for i in 1 2; do
    MHA2MLA_CUDA_LIB=$AB_LIB step "attention-ab-$i" 120 node dist/bench/decode-attention.js --contexts 4096,16384 --batches 1,8 --kinds mla,mha --reps 100
    step "attention-tree-$i" 120 node dist/bench/decode-attention.js --contexts 4096,16384 --batches 1,8 --kinds mla,mha --reps 100
    grep -hE "fused|kernel" "$OUT/attention-ab-$i.txt" "$OUT/attention-tree-$i.txt"
  done
fi
# COPY_MODES=1: the latent kernel per call under every copy mode, and the GPU suite under the three that
# are not the default (~3.5 min; measured in the nineteenth session, so off unless asked).
if [ -n "${COPY_MODES:-}" ]; then
  for copy in bulk early barrier async; do
    MHA2MLA_LATENT_COPY=$copy step "attention-$copy" 120 node dist/bench/decode-attention.js --contexts 4096,16384 --batches 1,8 --kinds mla
    grep -E "mla .*fused|diff" "$OUT/attention-$copy.txt"
  done
  for copy in early barrier async; do
    MHA2MLA_LATENT_COPY=$copy step "suite-$copy" 120 node --test dist/test/backends/cuda.test.js
    grep -E "^# (pass|fail)|^not ok" "$OUT/suite-$copy.txt"
  done
fi
if [ -n "${DECODE:-}" ]; then
  ARCH=llama2-7b CONTEXTS=4096,16384 BATCHES=1,8 KV_CACHES=bf16 PREMULTIPLIED=0 STEPS=16 step decode 300 bash bench/decode.sh /tmp/dec 4
  tail -40 "$OUT/decode.txt"
fi
if [ -n "${NCU:-}" ] && command -v ncu >/dev/null; then
  for shape in "4096 1" "16384 8"; do
    set -- $shape
    step "ncu-latent-$1x$2" 150 ncu --kernel-name regex:k_latent_decode --launch-skip 3 --launch-count 1 \
      --section LaunchStats --section Occupancy --section SpeedOfLight --section MemoryWorkloadAnalysis \
      --section SchedulerStats --section WarpStateStats --section SourceCounters --import-source yes \
      --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
      node dist/bench/decode-attention.js --contexts "$1" --batches "$2" --reps 4 --kinds mla
    grep -E "Duration|DRAM Throughput|L2 Hit|Achieved Occupancy|Warp Cycles Per Issued|Issue Slots Busy|No Eligible|Stall|stall" "$OUT/ncu-latent-$1x$2.txt" | head -30
    grep -E "issue_stalled" "$OUT/ncu-latent-$1x$2.txt" | sort -k3 -g -r | head -8
  done
fi
if [ -n "${STEP:-}" ] && command -v ncu >/dev/null; then
  for m in llama2-7b-L4-mla llama2-7b-L4; do
    step "ncu-step-$m" 150 bash bench/ncu-decode-step.sh "/tmp/dec/$m" 4096 1 "$OUT/ncu-step-$m.csv"
    head -30 "$OUT/ncu-step-$m.txt"
  done
fi
if [ -n "${SASS:-}" ] && command -v ncu >/dev/null; then
  # Executed instructions and stall samples per SASS instruction of the kernel llama2-7b's latent takes
  # (SASS_KERNEL: the kernel with warps by role, k_latent_decode_rolesILi32, by default; the tile loop is
  # k_latent_decodeILi16, with MHA2MLA_LATENT_KERNEL=tiles): at 16k × 8 and at 4k × 1 (where start-up and
  # finish are half the call); summed by bench/ncu_sass_summary.py.
  K=${SASS_KERNEL:-k_latent_decode_rolesILi32}
  cuobjdump -sass -arch sm_90 build/native/libmla_cuda.so | awk -v k="$K" '$0 ~ "Function : .*" k { f = 1; print; next } f && /Function : / { f = 0 } f' > "$OUT/$K.sass" 2>&1
  for shape in "16384 8" "4096 1"; do
    set -- $shape
    step "ncu-sass-$1x$2" 150 ncu --kernel-name regex:k_latent_decode --launch-skip 3 --launch-count 1 --section SourceCounters \
      --page source --print-source sass --csv node dist/bench/decode-attention.js --contexts "$1" --batches "$2" --reps 4 --kinds mla
    python3 bench/ncu_sass_summary.py "$OUT/ncu-sass-$1x$2.txt" | tee "$OUT/ncu-sass-$1x$2-summary.txt" | tail -22
  done
fi
