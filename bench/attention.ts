/**
 * Causal attention for T > 1 (prefill, evaluation) on the GPU: the three routes of MHA2MLA_CUDA_ATTENTION
 * (gemm: cuBLAS over query chunks, the default; flash: the fused kernel; rows: one block per query
 * row) in one process, at the llama2-7b head shape.
 * Prints one JSON line per (kernel, T): milliseconds per call and effective TFLOP/s (4·T²/2·H·Dh).
 * Run: node dist/bench/attention.js [--lengths 1024,4096,16384] [--heads 32] [--head-dim 128]
 */
import { CudaBackend, loadCuda } from "../src/backends/native/cuda.js";

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : dflt;
};
const lib = loadCuda();
if (typeof lib === "string") {
  console.error(`no CUDA: ${lib}`);
  process.exit(1);
}
const B = new CudaBackend(lib);
const H = Number(opt("heads", "32")), Dh = Number(opt("head-dim", "128"));
for (const T of opt("lengths", "1024,4096,16384").split(",").map(Number)) {
  const rand = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898) * 0.5);
  const q = B.upload(rand(T * H * Dh), [T, H, Dh]), k = B.upload(rand(T * H * Dh), [T, H, Dh]), v = B.upload(rand(T * H * Dh), [T, H, Dh]);
  const opts = { scale: 1 / Math.sqrt(Dh), queryOffset: 0, window: null };
  for (const kernel of ["gemm", "flash", "rows"]) {
    process.env["MHA2MLA_CUDA_ATTENTION"] = kernel;
    B.attention(q, k, v, opts).toArray(); // warm-up
    const reps = T >= 16384 ? 2 : 5;
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) {
      const o = B.attention(q, k, v, opts);
      if (r === reps - 1) o.toArray(); // waits for the stream
      o.dispose();
    }
    const ms = (performance.now() - t0) / reps;
    const flops = 4 * (T * T / 2) * H * Dh;
    console.log(JSON.stringify({ tool: "mha2mla", kernel, T, H, Dh, ms: +ms.toFixed(2), tflops: +(flops / ms / 1e9).toFixed(2) }));
  }
  delete process.env["MHA2MLA_CUDA_ATTENTION"];
  for (const t of [q, k, v]) t.dispose();
}
