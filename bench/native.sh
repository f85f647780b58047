#!/usr/bin/env bash
# Native CPU backend vs the TypeScript reference backend: GEMM, eval and fine-tune throughput on the
# bundled model. Prints a Markdown section for docs/benchmarks.md (needs ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:-/tmp/mha2mla-native}
mkdir -p "$S"
CLI="node dist/src/cli/main.js"
node dist/bench/gemm.js
echo
echo "Eval and fine-tune throughput (\`bash bench/native.sh\`):"
echo
echo "| run | native CPU | reference |"
echo "| --- | --- | --- |"
row=""
for dev in cpu reference; do
  $CLI eval stories260K --text ../shared/data/text/tinystories_val.txt --tokens 50000 --device $dev --json "$S/eval-$dev.json" > /dev/null 2>&1
  row="$row | $(node -e "const j=require('$S/eval-$dev.json');console.log(Math.round(j.tokens_per_second)+' tok/s (NLL '+j.nll.toFixed(5)+')')")"
done
echo "| eval stories260K, ctx 256, 50k tokens$row |"
$CLI convert stories260K --rope-strategy high --rope-pairs 1 --rank 2 --out "$S/mla" --force > /dev/null 2>&1
row=""
for dev in cpu reference; do
  $CLI finetune "$S/mla" --data ../shared/data/text/tinystories_val.txt --tokens 40960 --seq 256 --batch 16 --device $dev --out "$S/ft-$dev" --force --json "$S/ft-$dev.json" > /dev/null 2>&1
  row="$row | $(node -e "const j=require('$S/ft-$dev.json');console.log(Math.round(j.tokensPerSecond)+' tok/s')")"
done
echo "| fine-tune converted stories260K (seq 256, batch 16, 10 steps)$row |"
