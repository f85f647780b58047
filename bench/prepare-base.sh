#!/usr/bin/env bash
# The other side of a whole-tree A/B on the GPU machine (bench/decode-ab.sh): another commit's compiled
# TypeScript and native sources under .carry/base (ignored; carry ".carry" to the device with the tree), so
# that a change touching both TypeScript and CUDA is timed against that commit in one call. Here, no GPU
# needed: a git worktree at REF, its `tsc` build, then dist/src, dist/bench, native/, scripts/ and what the
# benches read (package.json, bench/hbm.json); its native libraries are built on the device.
# Usage: bash bench/prepare-base.sh [REF]      (default main; needs npm ci done here)
set -euo pipefail
cd "$(dirname "$0")/.."
REF=${1:-main}
W=$(mktemp -d)
trap 'git worktree remove --force "$W/src" >/dev/null 2>&1; rm -rf "$W"' EXIT
git worktree add -q --detach "$W/src" "$REF"
ln -s "$PWD/node_modules" "$W/src/node_modules"
(cd "$W/src" && npx tsc -p tsconfig.json)
rm -rf .carry/base && mkdir -p .carry/base/dist .carry/base/bench
cp -r "$W/src/dist/src" "$W/src/dist/bench" .carry/base/dist/
cp -r "$W/src/native" "$W/src/scripts" "$W/src/package.json" .carry/base/
cp "$W/src/bench/hbm.json" .carry/base/bench/
grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo '/.carry/' >> .git/info/exclude
echo "prepared .carry/base from $(git rev-parse --short "$REF") ($(du -sh .carry/base | cut -f1)); carry .carry with the tree"
