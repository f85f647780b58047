#!/usr/bin/env bash
# The trainer's matrix products (smollm-135m shapes at 8 × 2048 tokens unless SHAPES is set), ours
# (bench/linear-gpu.ts) beside PyTorch under bf16 autocast (bench/linear_torch.py), in one command.
# DECODE=1: decode's forward products (bf16 weights beyond L2, weight-read TB/s) on both sides.
# Usage: [SHAPES=M:K:N,…] [DECODE=1] bash bench/linear-gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
echo "$(date -u +%F), $(nvidia-smi --query-gpu=name --format=csv,noheader)"
node dist/bench/linear-gpu.js ${SHAPES:+--shapes "$SHAPES"} ${DECODE:+--decode}
python3 bench/linear_torch.py ${SHAPES:+--shapes "$SHAPES"} ${DECODE:+--decode}
