#!/usr/bin/env bash
# Perplexity cost of a quantized decode cache (--kv-cache bf16|int8|int4 against f32) with its bytes
# per token, for each MODEL given (original MHA and conversions), by `mha2mla eval`.
# Usage: [TEXT=FILE TOKENS=N CTX=N DEVICE=cpu] bash bench/kv-cache-quality.sh MODEL...   Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI="node dist/src/cli/main.js"
TEXT=${TEXT:-../shared/data/text/debian_dev_val.txt}; TOKENS=${TOKENS:-20000}; CTX=${CTX:-256}; DEVICE=${DEVICE:-cpu}
W=$(mktemp -d)
echo "$(date -u +%F), $(nproc) cores, --device $DEVICE, $(basename "$TEXT") (first $TOKENS tokens, ctx $CTX)"
echo
echo "| model | cache | bytes/token (all layers) | NLL | Δ NLL vs f32 |"
echo "| --- | --- | --- | --- | --- |"
for m in "$@"; do
  base=""
  for d in f32 bf16 int8 int4; do
    $CLI eval "$m" --text "$TEXT" --tokens "$TOKENS" --ctx "$CTX" --kv-cache "$d" --device "$DEVICE" --json "$W/e.json" > /dev/null 2> "$W/err" || { tail -2 "$W/err"; continue; }
    read -r nll bytes < <(node -e "const j=require('$W/e.json');console.log(j.nll.toFixed(5), j.kv_cache.bytes_per_token)")
    [ -z "$base" ] && base=$nll
    echo "| $(basename "$m") | $d | $bytes | $nll | $(node -e "console.log((100*($nll-$base)/$base).toFixed(3)+'%')") |"
  done
done
