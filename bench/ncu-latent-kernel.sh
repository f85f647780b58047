#!/usr/bin/env bash
# Why the fused latent decode kernel runs where it does: ncu's stall reasons, scheduler, memory and
# occupancy sections for a few launches of k_latent_decode in op-by-op decode steps of an MLA model
# (e.g. the one bench/decode.sh converts). Issue 13's open rows (batch 1 at ≥ 50% of the HBM bound,
# 16k × 8 at ≥ 2× MHA) are bound by this kernel's per-tile time (docs/benchmarks.md, sixteenth session:
# ~5 µs a tile at 0.36 TB/s); this says which phase and which stall. GPU machine, CUDA library built.
# Usage: bash bench/ncu-latent-kernel.sh MLA_DIR [CTX] [BATCH] [OUT.txt]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1; CTX=${2:-4096}; BATCH=${3:-1}; OUT=${4:-/tmp/ncu-latent-kernel.txt}
# --launch-skip 8: past the first step's launches (one per layer), so the caches and clocks are warm.
ncu --kernel-name regex:k_latent_decode --launch-skip 8 --launch-count 2 \
  --section LaunchStats --section Occupancy --section SpeedOfLight --section MemoryWorkloadAnalysis \
  --section SchedulerStats --section WarpStateStats --section SourceCounters \
  node dist/bench/decode.js "$MODEL" --device cuda --kv-cache bf16 --graphs 0 --contexts "$CTX" --batches "$BATCH" --steps 4 --repeats 1 > "$OUT" 2>&1
grep -E "k_latent_decode|Duration|Memory Throughput|DRAM Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Limit|Warp Cycles Per Issued|Issue Slots Busy|No Eligible|Stall|smsp__pcsamp|L2 Hit|L1/TEX Hit|Dynamic Shared" "$OUT" | head -80
echo "full report: $OUT"
