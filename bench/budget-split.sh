#!/usr/bin/env bash
# Rope pairs against latent dims at equal KV bytes (conversion-quality issue, "split the budget"):
# mha26m-debian at −81.25% KV, 144 cached elements per token and layer = 6 KV heads × (2R + rank), so
# (R, rank) ∈ {(2, 20), (4, 16), (6, 12), (8, 8), (10, 4)}; 2-norm selection and BKV (the defaults)
# calibrated on debian_train.txt; NLL on debian_dev_val.txt (ctx 256, first 20,000 tokens), no fine-tuning.
# Usage: [SPLITS="4:16 8:8"] bash bench/budget-split.sh [WORKDIR] [MODEL] [TEXT_DIR] [DEVICE]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/mha2mla-split}; M=${2:-../shared/models/mha26m-debian}; TD=${3:-../shared/data/text}; DEV=${4:-cpu}
CLI="node dist/src/cli/main.js"
mkdir -p "$W"
echo "$(date -u +%F), $(basename "$M"), device $DEV"
echo
echo "| R (rope pairs per KV head) | rank | KV elements per token and layer | NLL after conversion |"
echo "| --- | --- | --- | --- |"
for split in ${SPLITS:-2:20 4:16 6:12 8:8 10:4}; do
  r=${split%:*}; k=${split#*:}; out="$W/r$r-k$k"
  $CLI convert "$M" --rope-strategy 2-norm --rope-pairs "$r" --rank "$k" --calib "$TD/debian_train.txt" --device "$DEV" --out "$out" --force > "$out.log" 2>&1
  $CLI eval "$out" --text "$TD/debian_dev_val.txt" --ctx 256 --tokens 20000 --device "$DEV" --json "$out.json" > /dev/null 2>> "$out.log"
  echo "| $r | $k | $((6 * (2 * r + k))) | $(node -e "console.log(require(require('path').resolve('$out.json')).nll.toFixed(5))") |"
done
