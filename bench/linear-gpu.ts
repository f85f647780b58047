/**
 * The trainer's matrix products on the GPU, one shape at a time: linear (y = x·wᵀ, float32 x [M, K],
 * bf16 w [N, K], float32 y) and its backward (dx and dw), as the trainer calls them, beside
 * bench/linear_torch.py (the same shapes under bf16 autocast). Milliseconds per call and TFLOP/s.
 * Run: node dist/bench/linear-gpu.js [--shapes M:K:N,…]
 */
import { openCuda } from "./cudaBench.js";
import { toBf16Bits } from "../src/io/dtype.js";

const args = process.argv.slice(2);
const at = args.indexOf("--shapes");
// smollm-135m at 8 × 2048 tokens: q/o, MLP up and down, the MLA latent and up-projections, the rope keys.
const shapes = (at >= 0 ? args[at + 1]! : "16384:576:576,16384:576:1536,16384:1536:576,16384:576:32,16384:32:168,16384:32:192,16384:576:24").split(",").map((s) => s.split(":").map(Number) as [number, number, number]);
const { backend, sync } = openCuda();
const rand = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898) * 0.5);
for (const [M, K, N] of shapes) {
  const x = backend.upload(rand(M * K), [M, K]);
  const w = backend.uploadBf16(toBf16Bits(rand(N * K)), [N, K]);
  const dy = backend.upload(rand(M * N), [M, N]);
  const time = (pass: string, flops: number, step: () => (null | { dispose(): void })[]) => {
    for (const t of step()) t?.dispose();
    sync();
    const reps = 50;
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) for (const t of step()) t?.dispose();
    sync();
    const ms = (performance.now() - t0) / reps;
    console.log(JSON.stringify({ tool: "mha2mla", pass, M, K, N, ms: +ms.toFixed(4), tflops: +(flops / ms / 1e9).toFixed(1) }));
  };
  time("forward", 2 * M * K * N, () => [backend.linear(x, w)]);
  time("backward", 4 * M * K * N, () => {
    const g = backend.linearBackward(x, w, dy, { x: true, w: true, bias: false });
    return [g.dx, g.dw];
  });
  for (const t of [x, w, dy]) t.dispose();
}
