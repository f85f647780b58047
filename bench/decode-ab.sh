#!/usr/bin/env bash
# A whole-tree decode A/B in one GPU-machine call: this tree against the commit bench/prepare-base.sh put under
# .carry/base, each side with its own compiled TypeScript and its own CUDA library (built here when absent),
# in alternated rounds of separate processes (one GPU's processes differ by a few percent), on the models a
# bench/decode.sh run made (synth + convert here when absent). Rows: bench/decode.ts's tables, headed by side and round,
# then per row kind each side's median and the pairs the tree gains (bench/decode-ab-summary.awk).
# Usage: bash bench/decode-ab.sh OUT.txt [ROUNDS]     (env W: models' folder, default /tmp/dec4; LAYERS 4;
#        CONTEXTS 16384; BATCHES 8; DEADLINE seconds after which no round starts, default 470)
# An A/B of settings rather than of trees: ENV_BASE and ENV_TREE (space-separated NAME=VALUE, e.g.
# ENV_BASE=MHA2MLA_LINEAR_MANY=1 ENV_TREE=MHA2MLA_LINEAR_MANY=0) run both sides from this tree, "base" under
# ENV_BASE and "tree" under ENV_TREE; no .carry/base is needed then.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?OUT.txt}; ROUNDS=${2:-4}
W=${W:-/tmp/dec4}; LAYERS=${LAYERS:-4}; M="$W/llama2-7b-L$LAYERS"
ENVS=${ENV_BASE:-}${ENV_TREE:-}
if [ -z "$ENVS" ]; then
  [ -d .carry/base/dist ] || { echo "no .carry/base: run bench/prepare-base.sh REF on the dev machine and carry .carry" >&2; exit 2; }
  [ -e .carry/base/node_modules ] || ln -s "$PWD/node_modules" .carry/base/node_modules
fi
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
[ -n "$ENVS" ] || ( cd .carry/base && [ -f build/native/libmla_cuda.so ] || node scripts/build-native.mjs > /tmp/decode-ab-base-build.txt 2>&1 ) &
[ -f build/native/libmla_cuda.so ] || node scripts/build-native.mjs > /tmp/decode-ab-tree-build.txt 2>&1
if [ ! -d "$M-mla" ]; then
  node dist/src/cli/main.js synth --arch llama2-7b --layers "$LAYERS" --dtype bf16 --out "$M" --force > /dev/null 2>&1
  cp fixtures/models/stories260K/tokenizer.json fixtures/models/stories260K/tokenizer_config.json "$M/"
  node dist/src/cli/main.js convert "$M" --device cuda --rank 64 --rope-pairs 8 --rope-strategy uniform --out "$M-mla" --force 2>&1 | tail -1
fi
wait
echo "ready in $(el) s${ENVS:+ (base: ${ENV_BASE:-defaults}; tree: ${ENV_TREE:-defaults}; both this tree)}" > "$OUT"
ARGS=("$M" "$M-mla" --kv-cache bf16 --device cuda --contexts "${CONTEXTS:-16384}" --batches "${BATCHES:-8}" --steps 16 --graphs 1)
for r in $(seq "$ROUNDS"); do
  for side in base tree; do
    [ "$(el)" -gt "${DEADLINE:-470}" ] && break 2
    echo "== $side round $r" >> "$OUT"
    if [ -n "$ENVS" ]; then
      # shellcheck disable=SC2046
      [ $side = base ] && set -- ${ENV_BASE:-} || set -- ${ENV_TREE:-}
      env "$@" MHA2MLA_CUDA_LIB="$PWD/build/native/libmla_cuda.so" timeout 60 node dist/bench/decode.js "${ARGS[@]}"
    elif [ $side = base ]; then (cd .carry/base && MHA2MLA_CUDA_LIB=$PWD/build/native/libmla_cuda.so timeout 60 node dist/bench/decode.js "${ARGS[@]}")
    else MHA2MLA_CUDA_LIB=$PWD/build/native/libmla_cuda.so timeout 60 node dist/bench/decode.js "${ARGS[@]}"; fi 2>&1 | grep -E "^\| llama|rror" >> "$OUT"
  done
done
awk -f bench/decode-ab-summary.awk "$OUT" > "$OUT.summary" && cat "$OUT.summary" >> "$OUT"
cat "$OUT"
