/**
 * The per-head products of MLA's run-time absorption (Backend.headLinear: y[t, h] = W[g(h)]·x[t, h]),
 * alone on the GPU at the llama2-7b decode shapes: the query's nope part into the latent (K 112 → N
 * 2048) and the latent output back to the head dim (K 2048 → N 128), 32 heads in 32 groups, for T
 * tokens (the decode batch). bf16 weights as a bf16 checkpoint keeps them. Prints µs per call and the
 * share of the HBM bound of the weight bytes; bench/head_linear_torch.py times torch.bmm on the same shapes.
 * Run: node dist/bench/head-linear.js [--shapes T:H:G:K:N,…] [--reps 50]
 */
import { openCuda } from "./cudaBench.js";
import { hbmBound } from "./hbm.js";

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : dflt;
};
const DEFAULT = ["1:32:32:112:2048", "8:32:32:112:2048", "32:32:32:112:2048", "1:32:32:2048:128", "8:32:32:2048:128", "32:32:32:2048:128"].join(",");
const shapes = opt("shapes", DEFAULT).split(",").map((s) => s.split(":").map(Number) as [number, number, number, number, number]);
const reps = Number(opt("reps", "50"));
const { backend: B, sync } = openCuda();
const rand = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898) * 0.5);

const hbm = hbmBound(B.info);
console.log(`| T | H | G | K | N | ours µs per call | % of HBM bound (weights; ${hbm.label}) |`);
console.log("| --- | --- | --- | --- | --- | --- | --- |");
for (const [T, H, G, K, N] of shapes) {
  const x = B.upload(rand(T * H * K), [T, H, K]);
  const w32 = B.upload(rand(G * N * K), [G, N, K]);
  const w = B.empty([G, N, K], "a bf16 benchmark weight", 1);
  B.training.cast(w32, w);
  const call = () => B.headLinear(x, w).dispose();
  for (let i = 0; i < 5; i++) call();
  sync();
  const t0 = performance.now();
  for (let r = 0; r < reps; r++) call();
  sync();
  const us = ((performance.now() - t0) / reps) * 1000;
  const bound = (G * N * K * 2) / hbm.bytesPerS;
  console.log(`| ${T} | ${H} | ${G} | ${K} | ${N} | ${us.toFixed(1)} | ${((100 * bound * 1e6) / us).toFixed(0)}% |`);
  for (const t of [x, w32, w]) t.dispose();
}
