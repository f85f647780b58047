#!/usr/bin/env bash
# Fine-tuning numerics and recovery on the GPU machine (GPU training issue, acceptance 3 and 5).
#  numerics: the same 200 steps (same data order, schedule, seed) on the CPU in f32, on the GPU in
#            f32 and on the GPU in bf16 mixed precision; held-out NLL (finetune's validation tail) of
#            each, for stories260K (2-norm R 1, rank 4) and mha26m-debian (2-norm R 4, rank 16).
#  recovery: mha26m-debian, 2-norm R 4 rank 16 (−81.25% KV), 500k tokens of debian_train.txt on the
#            GPU (bf16), beside test/golden/finetune_mla_torch.py (PyTorch, the same data order,
#            schedule and optimizer, bf16 autocast); NLL on debian_dev_val.txt (ctx 256, first
#            20,000 tokens) before and after, with the perplexity protocol of `mha2mla eval`.
# Usage: STAGES="numerics recovery" bash bench/finetune-numerics.sh [WORKDIR] [MHA26M] [TEXT_DIR]
#   TEXT_DIR holds tinystories_val.txt, debian_train.txt and debian_dev_val.txt (default ../shared/data/text).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/mha2mla-ftnum}; M26=${2:-../shared/models/mha26m-debian}; TD=${3:-../shared/data/text}
CLI="node dist/src/cli/main.js"
mkdir -p "$W"
[ -f "$M26/model.safetensors" ] || { echo "mha26m-debian not found at $M26" >&2; exit 1; }
echo "$(date -u +%F), $(nvidia-smi --query-gpu=name --format=csv,noheader), $(nproc) CPU cores, node $(node --version)"
nll() { node -e "const j=require('$1');console.log((j.$2).toFixed(5))"; }

if [[ " ${STAGES:-numerics recovery} " == *" numerics "* ]]; then
  echo
  echo "| model (conversion) | steps × batch × seq | CPU f32 | GPU f32 (Δ) | GPU bf16 (Δ) | GPU bf16 tok/s |"
  echo "| --- | --- | --- | --- | --- | --- |"
  for spec in "stories260K|stories260K|$TD/tinystories_val.txt|1|4|4|128|1e-3" "mha26m-debian|$M26|$TD/debian_train.txt|4|16|4|128|5e-4"; do
    IFS='|' read -r name model text pairs rank batch seq lr <<< "$spec"
    mla="$W/$name-mla"
    [ -f "$mla/config.json" ] || $CLI convert "$model" --rope-strategy 2-norm --rope-pairs "$pairs" --rank "$rank" --calib "$text" --device cpu --out "$mla" --force > "$mla.log" 2>&1
    common="--data $text --tokens $((200 * batch * seq)) --seq $seq --batch $batch --lr $lr --val-fraction 0.02 --force"
    $CLI finetune "$mla" $common --device cpu --out "$W/$name-cpu" --json "$W/$name-cpu.json" > /dev/null 2> "$W/$name-cpu.log"
    $CLI finetune "$mla" $common --device cuda --precision f32 --out "$W/$name-f32" --json "$W/$name-f32.json" > /dev/null 2> "$W/$name-f32.log"
    $CLI finetune "$mla" $common --device cuda --precision bf16 --out "$W/$name-bf16" --json "$W/$name-bf16.json" > /dev/null 2> "$W/$name-bf16.log"
    node -e "
      const [c,f,b]=['cpu','f32','bf16'].map(p=>require('$W/$name-'+p+'.json'));
      const d=(x)=>(x.valNllAfter-c.valNllAfter).toExponential(1)+', '+(100*(x.valNllAfter-c.valNllAfter)/c.valNllAfter).toFixed(3)+'%';
      console.log('| $name (2-norm R $pairs, rank $rank) | 200 × $batch × $seq | '+c.valNllBefore.toFixed(4)+' → '+c.valNllAfter.toFixed(5)+' | '+f.valNllAfter.toFixed(5)+' ('+d(f)+') | '+b.valNllAfter.toFixed(5)+' ('+d(b)+') | '+Math.round(b.tokensPerSecond)+' |')"
  done
fi

if [[ " ${STAGES:-numerics recovery} " == *" recovery "* ]]; then
  mla="$W/m26-r4k16"
  [ -f "$mla/config.json" ] || $CLI convert "$M26" --rope-strategy 2-norm --rope-pairs 4 --rank 16 --calib "$TD/debian_train.txt" --device cpu --out "$mla" --force > "$mla.log" 2>&1
  ev="--text $TD/debian_dev_val.txt --ctx 256 --tokens 20000 --weights f32"
  train="--tokens 500000 --seq 256 --batch 16 --lr 1e-3 --warmup 0.05 --decay-fraction 0.2 --val-fraction 0.1"
  $CLI eval "$M26" $ev --device cuda --json "$W/orig.json" > /dev/null 2>&1
  $CLI eval "$mla" $ev --device cuda --json "$W/before.json" > /dev/null 2>&1
  start=$(date +%s.%N)
  $CLI finetune "$mla" --data "$TD/debian_train.txt" $train --device cuda --precision bf16 --out "$W/m26-ft" --force --json "$W/ft.json" > /dev/null 2> "$W/ft.log"
  ours_s=$(node -e "console.log(($(date +%s.%N)-$start).toFixed(0))")
  $CLI eval "$W/m26-ft" $ev --device cuda --json "$W/after.json" > /dev/null 2>&1
  start=$(date +%s.%N)
  python3 test/golden/finetune_mla_torch.py --model "$mla" --train "$TD/debian_train.txt" $train --eval-text "$TD/debian_dev_val.txt" --eval-tokens 20000 --ctx 256 --dtype bf16 --json "$W/torch.json" > /dev/null 2> "$W/torch.err" || tail -5 "$W/torch.err"
  torch_s=$(node -e "console.log(($(date +%s.%N)-$start).toFixed(0))")
  echo
  echo "mha26m-debian, 2-norm R 4 rank 16 (−81.25% KV), 500k tokens of debian_train.txt (seq 256, batch 16, lr 1e-3, WSD); NLL on debian_dev_val.txt (ctx 256, 20,000 tokens):"
  echo
  echo "| | original MHA | converted | fine-tuned | wall |"
  echo "| --- | --- | --- | --- | --- |"
  echo "| ours (GPU, bf16) | $(nll "$W/orig.json" nll) | $(nll "$W/before.json" nll) | $(nll "$W/after.json" nll) | ${ours_s} s |"
  node -e "const t=require('$W/torch.json');const o=require('$W/after.json').nll;const k=Object.keys(t);const b=t.eval_nll_before??t.evalNllBefore, a=t.eval_nll_after??t.evalNllAfter;console.log('| PyTorch (test/golden/finetune_mla_torch.py, bf16 autocast) | | '+(b!=null?b.toFixed(5):'?')+' | '+(a!=null?a.toFixed(5):'?')+' | ${torch_s} s |');if(a!=null)console.log('\nours vs PyTorch after fine-tuning: '+(100*(o-a)/a).toFixed(2)+'%');else console.log('torch keys: '+k.join(','))"
fi
