#!/usr/bin/env bash
# CPU decode tokens/s of an MHA model and its MLA conversion under this tree and another checkout
# (OLD: a worktree of an earlier commit, built), alternated REPEATS times so this machine's drift falls
# on both. Prints each run's table rows, labelled.
# Usage: bash bench/cpu-decode-ab.sh OLD_TREE MHA_DIR MLA_DIR [REPEATS=2]   (env CONTEXTS, BATCHES, STEPS, KV_CACHE=f32)
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$(cd "${1:?OLD_TREE}" && pwd) MHA=$(realpath "${2:?MHA_DIR}") MLA=$(realpath "${3:?MLA_DIR}") REPEATS=${4:-2}
run() { (cd "$1" && node dist/bench/decode.js "$MHA" "$MLA" --device cpu --contexts "${CONTEXTS:-1024,4096}" --batches "${BATCHES:-1,8}" --steps "${STEPS:-32}" --kv-cache "${KV_CACHE:-f32}" --repeats 3) 2>&1 | grep -E "^\| [^-m]|^\| m[^o]" | sed "s/^/$2 /"; }
echo "$(date -u +%Y-%m-%d), $(nproc) cores, $(node --version), --kv-cache ${KV_CACHE:-f32}; old: $(git -C "$OLD" rev-parse --short HEAD), new: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' + working tree')"
for i in $(seq "$REPEATS"); do run "$OLD" "old$i"; run . "new$i"; done
