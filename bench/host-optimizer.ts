/**
 * The CPU training step's optimizer loops (gradient norm + AdamW over every parameter), TypeScript
 * against the native CPU library, at N float32 parameters (default mha26m-debian's 26.5M). The
 * reference backend uses the first, the native CPU backend the second (optimizerLoops).
 * Run: node dist/bench/host-optimizer.js [N]
 */
import { ReferenceBackend } from "../src/backends/reference/index.js";
import { hostTraining } from "../src/backends/reference/training.js";
import { loadNativeCpu, NativeCpuBackend } from "../src/backends/native/cpu.js";

const n = Number(process.argv[2] ?? 26_500_000);
const lib = loadNativeCpu();
if (typeof lib === "string") throw new Error(`the native CPU library is not built: ${lib}`);
const R = new ReferenceBackend();
const N = new NativeCpuBackend(lib);
const h = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
const filled = () => R.make([n], new Float32Array(n).fill(0.01));
console.log(`${new Date().toISOString().slice(0, 10)}, ${n.toLocaleString("en-US")} parameters, node ${process.version}`);
for (const [name, loops] of [["TypeScript loops (reference backend)", () => null], ["native loops (native CPU backend)", () => N.optimizerLoops()]] as const) {
  const t = hostTraining(R, loops);
  const [p, g, m, v] = [filled(), filled(), filled(), filled()];
  t.adamw(p, g, m, v, 1e-3, h, 0.1, 0.05, 1, null); // warm-up
  const reps = 5, t0 = performance.now();
  for (let i = 0; i < reps; i++) {
    t.sumSquares(g);
    t.adamw(p, g, m, v, 1e-3, h, 0.1, 0.05, 1, null);
  }
  console.log(`${name}: ${((performance.now() - t0) / reps).toFixed(1)} ms per step (gradient norm + AdamW)`);
}
