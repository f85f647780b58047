/**
 * The trainer's matrix products on the GPU, one shape at a time: linear (y = x·wᵀ, float32 x [M, K],
 * bf16 w [N, K], float32 y) and its backward (dx and dw), as the trainer calls them, beside
 * bench/linear_torch.py (the same shapes under bf16 autocast). Milliseconds per call and TFLOP/s.
 * With --decode: the forward only, at decode's few rows and on bf16 x (as a decode step feeds them),
 * over enough copies of w (≥ 256 MiB, used in turn) that the 50 MB L2 cannot serve them, and its
 * weight-read rate in TB/s (the peer: F.linear on bf16 x and w, as HF decodes, with as many copies).
 * --heads T:H:K:N,…: decode's per-head products too (headLinear: float32 x [T, H, K], bf16 w [H, N, K];
 * MLA's run-time absorption, e.g. 8:32:112:2048 and 8:32:2048:128 at llama2-7b's batch 8), timed as --decode,
 * each beside headLinearKN on the same bytes stored k-major ([H, K, N], as MLA's k_up_proj is); each also as
 * graph_ms, the copies' calls recorded as one CUDA graph and replayed (no host work between kernels); the
 * --decode shapes report graph_ms too.
 * --many M:K:N1+N2+…,…: decode's projections of one x in one launch (linearMany on bf16 x, ≤ 4 weights: MLA's
 * 8:4096:512+2048+512+3584 at llama2-7b's batch 8, MHA's 8:4096:4096+4096+4096), timed as --decode.
 * Run: node dist/bench/linear-gpu.js [--shapes M:K:N,…] [--decode] [--heads T:H:K:N,…] [--many M:K:N1+N2,…]
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
  // Decode's products read bf16 inputs (the norms and SwiGLU write them; MHA2MLA_DECODE_BF16_INPUTS).
  const x = decode ? backend.uploadBf16(toBf16Bits(rand(M * K)), [M, K]) : backend.upload(rand(M * K), [M, K]);
  const copies = decode ? Math.min(64, Math.max(1, Math.ceil((256 << 20) / (N * K * 2)))) : 1;
  // One host array uploaded into every copy (making one per copy took minutes at 7B shapes).
  const bits = toBf16Bits(rand(N * K));
  const ws = Array.from({ length: copies }, () => backend.uploadBf16(bits, [N, K]));
  const w = ws[0]!;
  const dy = decode ? null : backend.upload(rand(M * N), [M, N]);
  const time = (pass: string, flops: number, step: (w: typeof x) => (null | { dispose(): void })[]) => {
    for (const t of step(w)) t?.dispose();
    sync();
    const reps = decode ? Math.max(200, 2 * copies) : 50;
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) for (const t of step(ws[r % copies]!)) t?.dispose();
    sync();
    const ms = (performance.now() - t0) / reps;
    const graphMs = decode ? recordedMs(() => ws.forEach((wi) => step(wi).forEach((t) => t?.dispose())), copies) : NaN;
    const rate = decode ? { weight_tb_per_s: +((N * K * 2) / ms / 1e9).toFixed(2), graph_ms: +graphMs.toFixed(4), graph_weight_tb_per_s: +((N * K * 2) / graphMs / 1e9).toFixed(2), copies } : {};
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
/**
 * Milliseconds a call with the host out of the way: `calls` calls (those `run` makes) recorded once as a CUDA graph
 * and replayed, as a decode step replays its kernels. The op-by-op times beside it pay an FFI call, an allocation
 * and a free per call, which at ~15 µs can be the host's pace rather than the kernel's (forty-first session).
 */
function recordedMs(run: () => void, calls: number): number {
  const one = Int32Array.of(0);
  let graph;
  try {
    graph = backend.captureStep(one, one, run).graph;
  } catch (e) {
    console.error(`not recorded: ${(e as Error).message}`);
    return NaN;
  }
  try {
    sync();
    const reps = Math.max(20, Math.ceil(400 / calls));
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) graph.launch(one, one);
    sync();
    return (performance.now() - t0) / (reps * calls);
  } finally {
    graph.dispose();
  }
}

/**
 * A decode product's call over its copies of the weights (`bytes` a copy) in turn: ms a call op by op and recorded
 * (graph_ms), and the weight-read rates of both.
 */
function decodeRates<W>(call: (w: W) => void, copies: readonly W[], bytes: number) {
  call(copies[0]!);
  sync();
  const reps = Math.max(200, 2 * copies.length);
  const t0 = performance.now();
  for (let r = 0; r < reps; r++) call(copies[r % copies.length]!);
  sync();
  const ms = (performance.now() - t0) / reps;
  const graphMs = recordedMs(() => copies.forEach(call), copies.length);
  return { ms: +ms.toFixed(4), weight_tb_per_s: +(bytes / ms / 1e9).toFixed(2), graph_ms: +graphMs.toFixed(4), graph_weight_tb_per_s: +(bytes / graphMs / 1e9).toFixed(2), copies: copies.length };
}

const hat = args.indexOf("--heads");
for (const [T, H, K, N] of (hat >= 0 ? args[hat + 1]!.split(",") : []).map((s) => s.split(":").map(Number) as [number, number, number, number])) {
  const x = backend.upload(rand(T * H * K), [T, H, K]);
  const copies = Math.min(64, Math.max(1, Math.ceil((256 << 20) / (H * N * K * 2))));
  const bits = toBf16Bits(rand(H * N * K));
  // headLinear reads w [H, N, K]; headLinearKN the same bytes stored k-major, [H, K, N] (MLA's k_up_proj as stored).
  for (const pass of ["headLinear", "headLinearKN"] as const) {
    const ws = Array.from({ length: copies }, () => backend.uploadBf16(bits, pass === "headLinear" ? [H, N, K] : [H, K, N]));
    const call = (w: (typeof ws)[number]) => (pass === "headLinear" ? backend.headLinear(x, w) : backend.headLinearKN(x, w)).dispose();
    console.log(JSON.stringify({ tool: "mha2mla", pass, T, H, K, N, ...decodeRates(call, ws, H * N * K * 2) }));
    for (const t of ws) t.dispose();
  }
  x.dispose();
}

const mat = args.indexOf("--many");
for (const spec of mat >= 0 ? args[mat + 1]!.split(",") : []) {
  const [M, K, Ns] = spec.split(":") as [string, string, string];
  const m = Number(M), k = Number(K), ns = Ns.split("+").map(Number);
  const bytes = ns.reduce((a, n) => a + n * k * 2, 0);
  const x = backend.uploadBf16(toBf16Bits(rand(m * k)), [m, k]);
  const copies = Math.min(64, Math.max(1, Math.ceil((256 << 20) / bytes)));
  const bits = ns.map((n) => toBf16Bits(rand(n * k)));
  const sets = Array.from({ length: copies }, () => ns.map((n, i) => backend.uploadBf16(bits[i]!, [n, k])));
  const call = (set: (typeof sets)[number]) => backend.linearMany!(x, set, []).forEach((y) => y.dispose());
  console.log(JSON.stringify({ tool: "mha2mla", pass: "linearMany", M: m, K: k, N: Ns, ...decodeRates(call, sets, bytes) }));
  for (const t of [x, ...sets.flat()]) t.dispose();
}
