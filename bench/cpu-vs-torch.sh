#!/usr/bin/env bash
# Issue 7, acceptance 2 and 3: GEMM (own kernel vs OpenBLAS), eval throughput on a synth smollm-135m
# (float32) and fine-tune throughput on stories260K, native CPU backend beside PyTorch CPU, both pinned
# to the same 2 cores (taskset) in the same run. Needs python3 with torch, transformers, tokenizers.
# Usage: [PYTHON=python3] [TOKENS=8000] bash bench/cpu-vs-torch.sh [WORKDIR] [TEXT]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/mha2mla-cpu}
TEXT=${2:-../shared/data/text/tinystories_val.txt}
CLI="node dist/src/cli/main.js"
PIN="taskset -c 0,1"
export OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 THREADS=2
mkdir -p "$W"
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), pinned to cores 0,1; $(date -u +%Y-%m-%d)"
echo "== GEMM, own kernel (MHA2MLA_BLAS=own)"
MHA2MLA_BLAS=own $PIN node dist/bench/gemm.js
echo "== GEMM, OpenBLAS when found (library: $(node -e "const k=require('koffi');console.log(k.load('build/native/libmla_cpu.so').func('const char* mla_build_info(void)')())"))"
$PIN node dist/bench/gemm.js
for blas in own default; do
  [ $blas = own ] && export MHA2MLA_BLAS=own || unset MHA2MLA_BLAS
  echo "== BLAS route: $blas"
  [ -f "$W/smollm/config.json" ] || $CLI synth --arch smollm-135m --dtype f32 --out "$W/smollm" --force > /dev/null
  cp fixtures/models/stories260K/tokenizer.json fixtures/models/stories260K/tokenizer_config.json "$W/smollm/"
  $PIN $CLI eval "$W/smollm" --text "$TEXT" --tokens ${TOKENS:-8000} --ctx 256 --device cpu --json "$W/eval.json" > /dev/null 2>&1
  node -e "const j=require('$W/eval.json');console.log(JSON.stringify({tool:'mha2mla',mode:'eval smollm-135m',tokens:j.tokens,tokens_per_second:Math.round(j.tokens_per_second)}))"
  $PIN $CLI finetune stories260K --data "$TEXT" --tokens 40960 --seq 256 --batch 16 --device cpu --val-fraction 0 --out "$W/ft" --force --json "$W/ft.json" > /dev/null 2> "$W/ft.log" || tail -3 "$W/ft.log"
  node -e "const j=require('$W/ft.json');console.log(JSON.stringify({tool:'mha2mla',mode:'finetune stories260K',tokens_per_second:Math.round(j.tokensPerSecond)}))"
done
PY=${PYTHON:-python3}
if $PY -c "import torch, transformers, tokenizers" 2>/dev/null; then
  echo "== PyTorch $($PY -c 'import torch;print(torch.__version__)') CPU (transformers)"
  $PIN $PY bench/cpu_torch.py eval "$W/smollm" "$TEXT" ${TOKENS:-8000} 256 2>/dev/null
  $PIN $PY bench/cpu_torch.py finetune fixtures/models/stories260K "$TEXT" 40960 256 16 2>/dev/null
elif $PY -c "import torch, numpy" 2>/dev/null; then
  echo "== PyTorch $($PY -c 'import torch;print(torch.__version__)') CPU (plain Llama in bench/torch_llama_cpu.py; no transformers here)"
  $PIN $PY bench/torch_llama_cpu.py eval "$W/smollm" ${TOKENS:-8000} 256
  $PIN $PY bench/torch_llama_cpu.py finetune fixtures/models/stories260K 40960 256 16
else
  echo "== PyTorch: not importable by $PY (set PYTHON=...; Debian: apt-get install python3-torch, then PYTHON=/usr/bin/python3)"
fi
