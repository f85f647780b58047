/**
 * GEMM throughput of linear (y = x·wᵀ) on this machine: the native CPU kernel and the TypeScript
 * reference backend, median of several runs. Prints a Markdown section for docs/benchmarks.md.
 * Run: npm run build && node dist/bench/gemm.js
 */
import os from "node:os";
import { referenceBackend } from "../src/backends/reference/index.js";
import { loadNativeCpu, NativeCpuBackend } from "../src/backends/native/cpu.js";
import type { Backend } from "../src/tensor/backend.js";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function gflops(b: Backend, M: number, K: number, N: number, reps: number): number {
  const x = b.upload(Float32Array.from({ length: M * K }, (_, i) => Math.sin(i)), [M, K]);
  const w = b.upload(Float32Array.from({ length: N * K }, (_, i) => Math.cos(i)), [N, K]);
  b.linear(x, w);
  const times: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    b.linear(x, w);
    times.push((performance.now() - t0) / 1000);
  }
  return (2 * M * K * N) / median(times) / 1e9;
}

const lib = loadNativeCpu();
const native = typeof lib === "string" ? null : new NativeCpuBackend(lib);
console.log(`## GEMM (${new Date().toISOString().slice(0, 10)}, ${os.cpus().length} cores, ${os.cpus()[0]?.model.trim()}, node ${process.version})`);
console.log(`\nCommand: \`npm run build && node dist/bench/gemm.js\`. linear y[M,N] = x[M,K]·w[N,K]ᵀ, float32, median of runs. Native: ${native ? native.info : `not built (${lib})`}.\n`);
console.log("| M×K×N | native CPU kernel | TypeScript reference |");
console.log("| --- | --- | --- |");
for (const [M, K, N] of [[1024, 1024, 1024], [4096, 512, 4096]] as const) {
  const n = native ? `${gflops(native, M, K, N, 7).toFixed(1)} GFLOP/s` : "–";
  const r = `${gflops(referenceBackend, M, K, N, 1).toFixed(2)} GFLOP/s`;
  console.log(`| ${M}×${K}×${N} | ${n} | ${r} |`);
}
