#!/usr/bin/env bash
# Training attention (bf16, causal, batched) forward and forward + backward: our fused tensor-core
# kernels and our chunked-GEMM route beside PyTorch's scaled_dot_product_attention, same shapes, one command.
# Usage: bash bench/attention-train.sh [B:T:H:Hkv:Dh,...]   (GPU machine; `npm run build` and the CUDA library built)
set -euo pipefail
cd "$(dirname "$0")/.."
SHAPES=${1:-8:1024:9:3:64,8:2048:32:32:64,4:2048:32:32:128,1:8192:32:32:128}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
node dist/bench/attention-train.js --shapes "$SHAPES"
python3 bench/attention_train_torch.py "$SHAPES"
