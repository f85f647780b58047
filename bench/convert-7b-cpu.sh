#!/usr/bin/env bash
# The native CPU issue's acceptance 4: synth llama2-7b (bf16, 32 layers), then convert it with
# --rank 64 --rope-pairs 8 --rope-strategy uniform on this machine; wall time, time per layer, peak RSS.
# Usage: bash bench/convert-7b-cpu.sh [SCRATCH]  (needs ~28 GB free). Prints a Markdown section.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:-/tmp/mha2mla-7b}
mkdir -p "$S"
CLI="node dist/src/cli/main.js"
[ -f "$S/llama2-7b/config.json" ] || $CLI synth --arch llama2-7b --out "$S/llama2-7b" --force > /dev/null 2>&1
start=$(date +%s)
/usr/bin/time -v $CLI convert "$S/llama2-7b" --rank 64 --rope-pairs 8 --rope-strategy uniform --out "$S/mla" --force > "$S/convert.out" 2> "$S/convert.err"
end=$(date +%s)
rss=$(grep "Maximum resident" "$S/convert.err" | awk '{printf "%.2f GB", $6/1048576}')
factor=$(node -e "const j=require('$S/mla/mla_conversion.json');console.log(j.timings.factor_s.toFixed(0)+' s factoring, '+(j.timings.factor_s/32).toFixed(1)+' s per layer')")
echo "| \`convert llama2-7b-synth --rank 64 --rope-pairs 8 --rope-strategy uniform\` (native CPU, $(nproc) cores) | $((end-start)) s total; $factor | $rss | $(grep -o 'KV cache.*' "$S/convert.out") |"
