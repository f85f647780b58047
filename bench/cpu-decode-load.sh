#!/usr/bin/env bash
# CPU decode tokens/s of one model, on an idle machine and with one core kept busy by another process
# (`yes`): how the native CPU library's OpenMP team behaves when a core is taken. Each setting runs
# ROUNDS times (default 5); prints every rate and the mean. EVAL_TEXT=FILE adds eval's tokens/s (ctx 256,
# 8,000 tokens of FILE) beside each.
# The library's bound for running a kernel on the calling thread is MHA2MLA_CPU_SERIAL_MACS (README):
# set it in the environment to compare bounds.
# Usage: [EVAL_TEXT=FILE] bash bench/cpu-decode-load.sh MODEL_DIR [ROUNDS] [TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: bash bench/cpu-decode-load.sh MODEL_DIR [ROUNDS] [TOKENS]}; ROUNDS=${2:-5}; TOKENS=${3:-150}
rate() {
  local log
  log=$(node dist/src/cli/main.js generate "$MODEL" --device cpu --prompt "The Debian package manager" --max-tokens "$TOKENS" 2>&1) || { echo "generate failed: $log" >&2; exit 1; }
  echo "$log" | tail -1 | grep -o '[0-9.]* tokens/s' | cut -d' ' -f1
}
evalRate() {
  local json log
  json=$(mktemp)
  log=$(node dist/src/cli/main.js eval "$MODEL" --device cpu --text "$EVAL_TEXT" --ctx 256 --tokens 8000 --json "$json" 2>&1) || { echo "eval failed: $log" >&2; exit 1; }
  node -e 'console.log(Math.round(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).tokens_per_second))' "$json"
  rm -f "$json"
}
mean() { local label=$1 fn=$2 sum=0 all="" r
  for _ in $(seq "$ROUNDS"); do r=$($fn); all="$all $r"; sum=$(echo "$sum + $r" | bc -l); done
  printf '%s:%s (mean %.1f tokens/s)\n' "$label" "$all" "$(echo "$sum / $ROUNDS" | bc -l)"
}
run() {
  mean "$1, decode" rate
  if [ -n "${EVAL_TEXT:-}" ]; then mean "$1, eval" evalRate; fi
}
echo "$(date -u +%Y-%m-%d), $(nproc) cores, $(node -e 'import("./dist/src/backends/select.js").then(({selectBackend}) => console.log(selectBackend("cpu", { info() {}, warn() {}, log() {} }).info))')"
run idle
yes > /dev/null & HOG=$!
trap 'kill $HOG 2>/dev/null' EXIT INT TERM
run "one core busy"
