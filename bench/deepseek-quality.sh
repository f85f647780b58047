#!/usr/bin/env bash
# Quality before fine-tuning at equal KV bytes: our format vs `convert --format deepseek`, with and
# without BKV, and a sweep of the shared rope key's width (docs/benchmarks.md, "convert --format
# deepseek at equal KV bytes"). mha26m-debian at −81.25% KV (144 elements per token and layer: our
# R 4, rank 16), calibration on debian_train.txt, NLL on debian_dev_val.txt (ctx 256, first 20,000
# tokens) by `mha2mla eval`; with STOCK=1 also by stock transformers (test/golden/deepseek_check.py,
# which prints the kv_a_layernorm cost too; needs python3 with torch + transformers, checked before any
# work; each check's output is kept as DIR.stock.json / DIR.stock.log, and a failed one says so in its
# cell). The norm cost is |nll − nll_exact|, "–" where the check gives no nll_exact (null: it measures
# none for a bias-free folder).
# Usage: [STOCK=1] [RANK=16 PAIRS=4 ROPE_DIMS="16 32 40 48 56 64"] [CALIB=FILE EVAL_TEXT=FILE EVAL_TOKENS=N]
#        bash bench/deepseek-quality.sh [WORKDIR] [MODEL] [TEXT_DIR]
# Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/mha2mla-dsq}; M=${2:-../shared/models/mha26m-debian}; TD=${3:-../shared/data/text}
CLI="node dist/src/cli/main.js"
if [ "${STOCK:-0}" = 1 ] && ! err=$(python3 -c "import torch; from transformers import DeepseekV3ForCausalLM" 2>&1); then
  echo "error: STOCK=1 runs test/golden/deepseek_check.py, which needs python3 with torch and a transformers that has DeepseekV3ForCausalLM: $(echo "$err" | tail -1)" >&2
  echo "hint: install them (CPU builds are enough), or run without STOCK=1" >&2
  exit 1
fi
mkdir -p "$W"
EVAL_TEXT=${EVAL_TEXT:-$TD/debian_dev_val.txt}; CALIB=${CALIB:-$TD/debian_train.txt}; EVAL_TOKENS=${EVAL_TOKENS:-20000}
EV="--text $EVAL_TEXT --ctx 256 --tokens $EVAL_TOKENS"
# NLL of model $1, its eval JSON kept as $2 (under the work folder).
nll() { $CLI eval "$1" $EV --json "$2" > /dev/null 2>&1; node -e "console.log(require(require('path').resolve('$2')).nll.toFixed(5))"; }
echo "| conversion | NLL (mha2mla eval) | stock transformers NLL / norm cost |"
echo "| --- | --- | --- |"
echo "| original | $(nll "$M" "$W/original.json") | |"
# Stock transformers' NLL of the deepseek_v3 folder $1 and the norm's cost, or why there is none.
stock() {
  if ! python3 test/golden/deepseek_check.py --model "$1" --text "$EVAL_TEXT" --tokens "$EVAL_TOKENS" --ctx 256 > "$1.stock.json" 2> "$1.stock.log"; then
    echo "failed: $1.stock.log"
    return
  fi
  # nll_exact is null where the check has no exact map for the norm: no cost, not |nll − null| = nll.
  node -e "const j=JSON.parse(require('fs').readFileSync('$1.stock.json','utf8').trim().split('\n').pop());console.log(j.nll.toFixed(5)+' / '+(typeof j.nll_exact==='number'?Math.abs(j.nll-j.nll_exact).toExponential(1):'–'))"
}
row() {
  local name=$1; shift
  local out="$W/${name// /-}"
  $CLI convert "$M" --rank "${RANK:-16}" --rope-pairs "${PAIRS:-4}" --calib "$CALIB" --out "$out" --force "$@" > "$out.log" 2>&1
  local stock=""
  if [ "${STOCK:-0}" = 1 ] && [[ " $* " == *" deepseek "* ]]; then stock=$(stock "$out"); fi
  echo "| $name | $(nll "$out" "$out.json") | $stock |"
}
row "ours 2-norm" --rope-strategy 2-norm --no-balance-kv
row "ours 2-norm BKV" --rope-strategy 2-norm
for dr in ${ROPE_DIMS:-16 32 40 48 56 64}; do
  row "deepseek rope-dim $dr" --format deepseek --rope-dim $dr --no-balance-kv
  row "deepseek rope-dim $dr BKV" --format deepseek --rope-dim $dr
done
