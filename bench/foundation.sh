#!/usr/bin/env bash
# Foundation benchmarks: eval time of the reference perplexity (acceptance 3 of the foundation issue)
# and synth of the full llama2-7b shape (throughput, peak RSS) beside a dd write of the same size.
# Usage: bash bench/foundation.sh [SCRATCH_DIR]   (needs ../shared and ~14 GB free in SCRATCH_DIR)
# Prints a Markdown section for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SCRATCH=${1:-/tmp/mha2mla-bench}
mkdir -p "$SCRATCH" out
CLI="node dist/src/cli/main.js"
TEXT=../shared/data/text/tinystories_val.txt
rss() { grep "Maximum resident" "$1" | awk '{printf "%.0f MB", $6/1024}'; }
wall() { grep "Elapsed (wall" "$1" | awk '{print $8}'; }

echo "## Foundation ($(date -u +%Y-%m-%d), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), node $(node --version))"
echo
echo "| command | result | wall | peak RSS |"
echo "| --- | --- | --- | --- |"
for m in stories260K stories260K-mha; do
  /usr/bin/time -v $CLI eval $m --text $TEXT --ctx 256 --tokens 50000 --json out/bench-eval-$m.json 2> "$SCRATCH/time-$m" >/dev/null
  r=$(node -e "const j=require('./out/bench-eval-$m.json');console.log('NLL '+j.nll.toFixed(5)+', ppl '+j.ppl.toFixed(4)+', '+Math.round(j.tokens_per_second)+' tok/s')")
  echo "| \`mha2mla eval $m --text tinystories_val.txt --ctx 256 --tokens 50000\` | $r | $(wall "$SCRATCH/time-$m") | $(rss "$SCRATCH/time-$m") |"
done
# Disk baseline first, same size and write size as synth, so both see the same disk state.
bytes=13477093376
rm -rf "$SCRATCH/llama2-7b" "$SCRATCH/dd"; sync; sleep 5
start=$(date +%s.%N)
dd if=/dev/zero of="$SCRATCH/dd" bs=4M count=$((bytes / 4194304)) 2>/dev/null
end=$(date +%s.%N)
echo "| \`dd if=/dev/zero bs=4M\` of the same size (disk baseline through the page cache) | $(node -e "console.log(($bytes/1e9/($end-$start)).toFixed(2))") GB/s | $(node -e "console.log(($end-$start).toFixed(1))") s | – |"
rm -f "$SCRATCH/dd"; sync; sleep 5
/usr/bin/time -v $CLI synth --arch llama2-7b --out "$SCRATCH/llama2-7b" --json out/bench-synth.json 2> "$SCRATCH/time-synth" >/dev/null
r=$(node -e "const j=require('./out/bench-synth.json');console.log((j.bytes/1e9).toFixed(2)+' GB, '+j.shards+' shards, '+j.gbPerSecond.toFixed(2)+' GB/s')")
echo "| \`mha2mla synth --arch llama2-7b\` (bf16, 32 layers) | $r | $(wall "$SCRATCH/time-synth") | $(rss "$SCRATCH/time-synth") |"
node dist/src/cli/main.js inspect "$SCRATCH/llama2-7b" --json > out/bench-synth-inspect.json
echo
echo "Read-back: \`mha2mla inspect\` on the written folder: $(node -e "const j=require('./out/bench-synth-inspect.json');console.log(j.params+' params, '+j.kv_elems_per_token+' KV elements/token')")."
rm -rf "$SCRATCH/llama2-7b"
