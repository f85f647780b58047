#!/usr/bin/env bash
# EG-MLA against MLA (issue 15): the same model converted as MLA at rank RANK and RANK/2, and as
# EG-MLA (gate width GATE) at RANK/2, each fine-tuned with the same data, budget and schedule.
# Reports the KV elements per token and the held-out NLL before and after fine-tuning: finetune's
# validation split (the last --val-fraction of DATA), or `mha2mla eval` on EVAL_TEXT when set.
# Defaults: stories260K on TinyStories, R 1, rank 4, gate 8, 200k tokens on the CPU.
# mha26m-debian on the GPU: MODEL=…/mha26m-debian DATA=…/debian_train.txt EVAL_TEXT=…/debian_dev_val.txt
#   R=4 RANK=16 GATE=32 TOKENS=500000 LR=2e-4 DEVICE=cuda CALIB=…/debian_train.txt bash bench/eg-mla.sh /tmp/eg
# VARIANTS picks rows, KIND:RANK each (default "mla:RANK mla:RANK/2 eg-mla:RANK/2").
# Usage: [VARIANTS=…] bash bench/eg-mla.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/mha2mla-eg-mla}
MODEL=${MODEL:-stories260K}
DATA=${DATA:-../shared/data/text/tinystories_val.txt}
R=${R:-1}; RANK=${RANK:-4}; GATE=${GATE:-8}; HALF=$((RANK / 2))
TOKENS=${TOKENS:-200000}; SEQ=${SEQ:-256}; BATCH=${BATCH:-16}; DEVICE=${DEVICE:-cpu}
CLI="node dist/src/cli/main.js"
mkdir -p "$W"
STRATEGY="--rope-strategy uniform"; [ -n "${CALIB:-}" ] && STRATEGY="--rope-strategy 2-norm --calib $CALIB"
TRAIN="--data $DATA --tokens $TOKENS --seq $SEQ --batch $BATCH ${LR:+--lr $LR} --warmup 0.05 --schedule wsd --decay-fraction 0.2 --val-fraction 0.1 --device $DEVICE --force"
nll() { $CLI eval "$1" --text "$EVAL_TEXT" --ctx "$SEQ" --tokens 20000 --device "$DEVICE" --json "$2" > /dev/null 2>> "$W/eval.log"; node -e "console.log(require(require('path').resolve('$2')).nll.toFixed(4))"; }
echo "$(date -u +%F), $(basename "$MODEL"), R $R, $TOKENS tokens, device $DEVICE ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
echo
echo "| conversion | KV elements per token and layer | NLL converted | NLL fine-tuned | fine-tune wall |"
echo "| --- | --- | --- | --- | --- |"
for v in ${VARIANTS:-mla:$RANK mla:$HALF eg-mla:$HALF}; do
  set -- ${v/:/ }
  name="$1-r$2"; extra=""; [ "$1" = eg-mla ] && extra="--attention eg-mla --gate-dim $GATE"
  $CLI convert "$MODEL" $STRATEGY --rope-pairs "$R" --rank "$2" $extra --device "$DEVICE" --out "$W/$name" --force > "$W/$name.convert.log" 2>&1
  kv=$(node -e "const c=require('$W/$name/config.json');const m=c.mha2mla;console.log(m.latent_dim+2*m.rope_pairs*(c.num_key_value_heads??c.num_attention_heads))")
  start=$(date +%s.%N)
  $CLI finetune "$W/$name" $TRAIN --out "$W/$name-ft" --json "$W/$name.ft.json" > /dev/null 2> "$W/$name.ft.log"
  wall=$(node -e "console.log(($(date +%s.%N)-$start).toFixed(0))")
  if [ -n "${EVAL_TEXT:-}" ]; then before=$(nll "$W/$name" "$W/$name.before.json"); after=$(nll "$W/$name-ft" "$W/$name.after.json")
  else read -r before after < <(node -e "const j=require('$W/$name.ft.json');console.log(j.valNllBefore.toFixed(4),j.valNllAfter.toFixed(4))"); fi
  label="MLA rank $2"; [ "$1" = eg-mla ] && label="EG-MLA rank $2, gate $GATE"
  echo "| $label | $kv | $before | $after | $wall s |"
done
