/**
 * The trainer's matrix products on the GPU, one shape at a time: linear (y = x·wᵀ, float32 x [M, K],
 * bf16 w [N, K], float32 y) and its backward (dx and dw), as the trainer calls them, beside
 * bench/linear_torch.py (the same shapes under bf16 autocast). Milliseconds per call and TFLOP/s.
 * With --decode: the forward only, at decode's few rows, over enough copies of w (≥ 256 MiB, used in
 * turn) that the 50 MB L2 cannot serve them, and its weight-read rate in TB/s (the peer: F.linear on
 * bf16 x and w, as HF decodes, with as many copies).
 * Run: node dist/bench/linear-gpu.js [--shapes M:K:N,…] [--decode]
 */
import { openCuda } from "./cudaBench.js";
import { toBf16Bits } from "../src/io/dtype.js";

const args = process.argv.slice(2);
const at = args.indexOf("--shapes");
const decode = args.includes("--decode");
// smollm-135m at 8 × 2048 tokens: q/o, MLP up and down, the MLA latent and up-projections, the rope keys.
const shapes = (at >= 0 ? args[at + 1]! : "16384:576:576,16384:576:1536,16384:1536:576,16384:576:32,16384:32:168,16384:32:192,16384:576:24").split(",").map((s) => s.split(":").map(Number) as [number, number, number]);
const { backend, sync } = openCuda();
const rand = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898) * 0.5);
for (const [M, K, N] of shapes) {
  const x = backend.upload(rand(M * K), [M, K]);
  const copies = decode ? Math.min(64, Math.max(1, Math.ceil((256 << 20) / (N * K * 2)))) : 1;
  const ws = Array.from({ length: copies }, () => backend.uploadBf16(toBf16Bits(rand(N * K)), [N, K]));
  const w = ws[0]!;
  const dy = decode ? null : backend.upload(rand(M * N), [M, N]);
  const time = (pass: string, flops: number, step: (w: typeof x) => (null | { dispose(): void })[]) => {
    for (const t of step(w)) t?.dispose();
    sync();
    const reps = decode ? Math.max(50, 2 * copies) : 50;
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) for (const t of step(ws[r % copies]!)) t?.dispose();
    sync();
    const ms = (performance.now() - t0) / reps;
    const rate = decode ? { weight_tb_per_s: +((N * K * 2) / ms / 1e9).toFixed(2), copies } : {};
    console.log(JSON.stringify({ tool: "mha2mla", pass, M, K, N, ms: +ms.toFixed(4), tflops: +(flops / ms / 1e9).toFixed(1), ...rate }));
  };
  time("forward", 2 * M * K * N, (wi) => [backend.linear(x, wi)]);
  if (dy)
    time("backward", 4 * M * K * N, () => {
      const g = backend.linearBackward(x, w, dy, { x: true, w: true, bias: false });
      return [g.dx, g.dw];
    });
  for (const t of [x, ...ws, dy]) t?.dispose();
}
