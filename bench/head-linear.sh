#!/usr/bin/env bash
# MLA decode's per-head absorption products (Backend.headLinear) alone, ours beside torch.bmm at the
# same shapes, in one command (the decode profile showed 0.11 ms per call where the weights take ~3.5 µs).
# Usage: [SHAPES=T:H:G:K:N,…] bash bench/head-linear.sh
set -euo pipefail
cd "$(dirname "$0")/.."
echo "$(date -u +%F), $(nvidia-smi --query-gpu=name --format=csv,noheader)"
node dist/bench/head-linear.js ${SHAPES:+--shapes "$SHAPES"}
python3 bench/head_linear_torch.py ${SHAPES:+--shapes "$SHAPES"}
