#!/usr/bin/env bash
# The GPU machine's check: builds the native libraries (CPU and CUDA) and runs the CUDA test suite,
# which CI (no GPU) skips with its reason. Writes the TAP log to LOG (default docs/device-logs/cuda-test-h100.txt).
# Usage: bash bench/cuda-check.sh [LOG]      (needs nvcc with cuBLAS/cuSOLVER, a GPU, and `npm run build` done)
set -euo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-docs/device-logs/cuda-test-h100.txt}
node scripts/build-native.mjs
node --test dist/test/backends/cuda.test.js > "$LOG" 2>&1 || { grep -B2 -A30 "^not ok" "$LOG" | head -80; exit 1; }
grep -E "^(not )?ok|^# (pass|fail)" "$LOG"
