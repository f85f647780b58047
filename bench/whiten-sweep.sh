#!/usr/bin/env bash
# Issue 16, "activation-aware SVD tuned": how far toward the calibration covariance to whiten before
# the SVD. β = 0 is the plain weight SVD, β = 1 the full activation-aware SVD (C^{β/2} through the
# MHA2MLA_WHITEN_POWER experiment switch). deepseek format, BKV (the defaults), mha26m-debian at −81.25%
# KV; calibration on debian_train.txt, NLL on debian_dev_val.txt (ctx 256, first 20,000 tokens).
# Usage: [POWERS="0 0.25 0.5 0.75 1"] [ROPE_DIMS="48"] bash bench/whiten-sweep.sh [WORKDIR] [MODEL] [TEXT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/mha2mla-whiten}; M=${2:-../shared/models/mha26m-debian}; TD=${3:-../shared/data/text}
CLI="node dist/src/cli/main.js"
mkdir -p "$W"
echo "| rope dim | β | NLL |"
echo "| --- | --- | --- |"
for dr in ${ROPE_DIMS:-48}; do
  for p in ${POWERS:-0 0.25 0.5 0.75 1}; do
    o="$W/d$dr-p$p"
    MHA2MLA_WHITEN_POWER=$p $CLI convert "$M" --rank 16 --rope-pairs 4 --calib "$TD/debian_train.txt" --format deepseek --rope-dim "$dr" --svd-init activations --out "$o" --force > "$o.log" 2>&1
    $CLI eval "$o" --text "$TD/debian_dev_val.txt" --ctx 256 --tokens 20000 --json "$o.json" > /dev/null 2>&1
    echo "| $dr | $p | $(node -e "console.log(require(require('path').resolve('$o.json')).nll.toFixed(5))") |"
  done
done
