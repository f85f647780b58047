#!/usr/bin/env bash
# CPU decode tokens/s of one model, on an idle machine and with one core kept busy by another process
# (`yes`): how the native CPU library's OpenMP team behaves when a core is taken. Each setting runs
# ROUNDS times (default 5); prints every rate and the mean.
# Usage: bash bench/cpu-decode-load.sh MODEL_DIR [ROUNDS] [TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: bash bench/cpu-decode-load.sh MODEL_DIR [ROUNDS] [TOKENS]}; ROUNDS=${2:-5}; TOKENS=${3:-150}
rate() {
  local log
  log=$(node dist/src/cli/main.js generate "$MODEL" --device cpu --prompt "The Debian package manager" --max-tokens "$TOKENS" 2>&1) || { echo "generate failed: $log" >&2; exit 1; }
  echo "$log" | tail -1 | grep -o '[0-9.]* tokens/s' | cut -d' ' -f1
}
run() {
  local label=$1 sum=0 all=""
  for _ in $(seq "$ROUNDS"); do r=$(rate); all="$all $r"; sum=$(echo "$sum + $r" | bc -l); done
  printf '%s:%s (mean %.1f tokens/s)\n' "$label" "$all" "$(echo "$sum / $ROUNDS" | bc -l)"
}
echo "$(date -u +%Y-%m-%d), $(nproc) cores, $(node -e 'import("./dist/src/backends/select.js").then(({selectBackend}) => console.log(selectBackend("cpu", { info() {}, warn() {}, log() {} }).info))')"
run idle
yes > /dev/null & HOG=$!
trap 'kill $HOG 2>/dev/null' EXIT INT TERM
run "one core busy"
