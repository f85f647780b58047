/**
 * Every backward op of the Backend interface and every op of the autograd tape (src/tensor/autograd.ts)
 * on each CPU backend (the reference in float32 and float64, the native CPU library) against central
 * finite differences: the analytic gradient comes from the backend under test (a Tape over its Ops),
 * the numerical one from the float64 reference forward (checked against plain float64 loops in
 * cpuOps.test.ts) at the same float32-representable inputs. Loss = Σ out ⊙ R for a fixed R, or the
 * op's own loss (cross-entropy, distillation KL). Shapes are small and odd (tails of the native
 * vector and tile loops, both native attention kernels, compiled and generic head dims), with edge
 * values: a zero row, saturated SwiGLU gates, rows that see no key, repeated indices. The float64-only
 * original of these checks is backward.test.ts; the whole-model check test/finetune/gradcheck.test.ts.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { cpuBackends } from "./cpuBackends.js";
import { Node, Ops, Tape, type SlotFlag } from "../../src/tensor/autograd.js";
import type { AttentionOptions, Backend } from "../../src/tensor/backend.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { finiteDifference, seededRand } from "../helpers.js";

/** Each CPU backend and the relative gradient error its arithmetic allows (float32: rounding of the analytic gradient). */
const backends = cpuBackends({ f32: 1e-5, f64: 1e-7, native: 1e-5 });
const R64 = new ReferenceBackend("f64");

interface Case {
  shapes: number[][];
  f: (ops: Ops, xs: Node[]) => Node;
  /** Inputs that are constants (no gradient asked: the backward's need flags). */
  fixed?: number[];
  /** Uniform(−scale, scale) inputs, then `edit` (edge values). */
  scale?: number;
  edit?: (xs: Float64Array[]) => void;
  /** The op's own loss: its float64 value, and its gradient w.r.t. the output from the backend under test. */
  loss?: { value: (out: Tensor) => number; seed: (b: Backend, out: Tensor) => Tensor };
  /** Gradients go into flat slots (Node.gradTarget) that hold stale values, as in a training step. */
  slots?: boolean;
}

/** Relative error ‖analytic − numerical‖/‖numerical‖ per trainable input of `c` on backend B. */
function gradErrors(B: Backend, c: Case, seed: number): number[] {
  const rand = seededRand(seed, Float64Array);
  // Float32-representable inputs: the float32 backends see exactly the values differentiated in float64.
  const xs = c.shapes.map((s) => rand(s.reduce((a, b) => a * b, 1), c.scale ?? 1).map(Math.fround));
  c.edit?.(xs);
  const trainable = (i: number) => !c.fixed?.includes(i);
  let R: Float64Array | null = null;
  const weights = (n: number) => (R ??= Float64Array.from({ length: n }, (_, i) => Math.sin(i * 1.3 + 0.7)));

  // Analytic, on B.
  const tape = new Tape(B);
  const ops = new Ops(B, tape);
  const nodes = xs.map((x, i) => (trainable(i) ? ops.param(B.upload(x, c.shapes[i]!), true) : ops.constant(B.upload(x, c.shapes[i]!))));
  if (c.slots) {
    // One flat gradient buffer of stale values (last step's), every slot flagged stale.
    const k = B.training!;
    const total = xs.reduce((a, x) => a + x.length, 0);
    const flat = k.zeros(total + 3, "gradients");
    k.copyInto(flat, 0, B.upload(Float32Array.from({ length: total + 3 }, (_, i) => 100 + i), [total + 3]));
    let off = 1;
    nodes.forEach((n, i) => {
      if (!trainable(i)) return;
      n.gradTarget = k.view(flat, off, [xs[i]!.length]);
      n.slotFlag = { stale: true } satisfies SlotFlag;
      off += xs[i]!.length;
    });
  }
  const out = c.f(ops, nodes);
  tape.backward(out, c.loss ? c.loss.seed(B, out.value) : B.upload(weights(out.value.size), out.value.shape));
  const analytic = nodes.map((n) => (n.gradTarget ?? n.grad)?.toArray() ?? null);

  // Numerical, on the float64 reference forward.
  const lossAt = () => {
    const o = c.f(new Ops(R64, null), xs.map((x, i) => new Node(R64.upload(x, c.shapes[i]!), false))).value;
    if (c.loss) return c.loss.value(o);
    const y = o.toArray(), w = weights(y.length);
    let s = 0;
    for (let i = 0; i < y.length; i++) s += y[i]! * w[i]!;
    return s;
  };
  const errs: number[] = [];
  xs.forEach((x, i) => {
    if (!trainable(i)) return assert.equal(analytic[i], null, `input ${i} is a constant: no gradient`);
    const picks = x.length <= 48 ? [...x.keys()] : Array.from({ length: 48 }, (_, j) => Math.floor((j * 7919) % x.length));
    errs.push(finiteDifference(x, analytic[i] ?? new Float32Array(x.length), lossAt, 1e-6, picks).rel);
  });
  return errs;
}

const att = (scale: number, queryOffset: number, window: number | null, batch?: number): AttentionOptions => ({ scale, queryOffset, window, ...(batch ? { batch } : {}) });
const sum = (a: ArrayLike<number>) => Array.from(a).reduce((x, y) => x + y, 0);

/** Named cases: backward op (and autograd op) → inputs and graph. */
const cases: Record<string, Case> = {
  "linear + bias (K off the vector width)": { shapes: [[5, 17], [7, 17], [7]], f: (o, [x, w, b]) => o.linear(x!, w!, b!) },
  "linear, 3-D x, no bias (4×4 tiles with remainders)": { shapes: [[2, 5, 9], [6, 9]], f: (o, [x, w]) => o.linear(x!, w!, null) },
  "linear, dx only (w constant)": { shapes: [[3, 33], [5, 33], [5]], fixed: [1], f: (o, [x, w, b]) => o.linear(x!, w!, b!) },
  "linear, dw only (x constant, no bias gradient)": { shapes: [[4, 7], [3, 7], [3]], fixed: [0, 2], f: (o, [x, w, b]) => o.linear(x!, w!, b!) },
  "rmsnorm (a zero row)": { shapes: [[4, 9], [9]], f: (o, [x, w]) => o.rmsnorm(x!, w!, 1e-5), edit: ([x]) => x!.fill(0, 9, 18) },
  "rmsnorm, D = 33, large values": { shapes: [[3, 33], [33]], scale: 40, f: (o, [x, w]) => o.rmsnorm(x!, w!, 1e-6) },
  "rope, full": { shapes: [[3, 2, 6]], f: (o, [x]) => o.rope(x!, Int32Array.of(0, 3, 17), Float64Array.of(1, 0.1, 0.01)) },
  "rope, partial with per-head frequencies": { shapes: [[3, 2, 10]], f: (o, [x]) => o.rope(x!, Int32Array.of(1, 4, 9), Float64Array.of(1, 0.3, 0.5, 0.02), 4) },
  "rope, long positions": { shapes: [[2, 1, 8]], f: (o, [x]) => o.rope(x!, Int32Array.of(30000, 30001), Float64Array.of(1, 0.1, 0.01, 1e-3)) },
  "attention GQA 4/2, causal (native decode kernel forward)": { shapes: [[5, 4, 3], [5, 2, 3], [5, 2, 3]], f: (o, [q, k, v]) => o.attention(q!, k!, v!, att(0.6, 0, null)) },
  "attention, cache offset, Dv ≠ Dh": { shapes: [[2, 4, 3], [6, 2, 3], [6, 2, 4]], f: (o, [q, k, v]) => o.attention(q!, k!, v!, att(0.6, 4, null)) },
  "attention, sliding window": { shapes: [[6, 2, 3], [6, 1, 3], [6, 1, 3]], f: (o, [q, k, v]) => o.attention(q!, k!, v!, att(0.6, 0, 3)) },
  "attention, 11 rows, head dim 8 (native prefill kernel, compiled head dim)": { shapes: [[11, 2, 8], [11, 1, 8], [11, 1, 8]], f: (o, [q, k, v]) => o.attention(q!, k!, v!, att(0.35, 0, null)) },
  "attention, 10 rows, Dh 5 / Dv 7, window 4 (generic prefill loop)": { shapes: [[10, 4, 5], [10, 2, 5], [10, 2, 7]], f: (o, [q, k, v]) => o.attention(q!, k!, v!, att(0.45, 0, 4)) },
  "attention, first rows see no key (negative offset)": { shapes: [[4, 2, 3], [4, 1, 3], [4, 1, 3]], f: (o, [q, k, v]) => o.attention(q!, k!, v!, att(0.6, -2, null)) },
  "attention, 2 sequences stacked (batch)": { shapes: [[6, 2, 3], [6, 2, 3], [6, 2, 3]], f: (o, [q, k, v]) => o.attention(q!, k!, v!, att(0.6, 0, null, 2)) },
  "swiglu (gates saturated at ±30)": { shapes: [[3, 5], [3, 5]], scale: 3, f: (o, [g, u]) => o.swiglu(g!, u!), edit: ([g]) => g!.set([30, -30, 12, -12], 0) },
  "add, reshape": { shapes: [[3, 5], [3, 5]], f: (o, [a, b]) => o.reshape(o.add(a!, b!), [5, 3]) },
  "gatherCols (repeated columns) / scatterCols": { shapes: [[3, 6]], f: (o, [x]) => o.gatherCols(x!, Int32Array.of(5, 0, 2, 2, 1)) },
  "concatLast / splitLast": { shapes: [[2, 3, 2], [2, 3, 5]], f: (o, [a, b]) => o.concatLast(a!, b!) },
  "embedding (repeated ids add)": { shapes: [[5, 4]], f: (o, [t]) => o.embedding(t!, Int32Array.of(3, 1, 3, 0, 3)) },
  "crossEntropy backward (scale 0.5, V = 33)": (() => {
    const targets = Int32Array.of(2, 0, 32, 17);
    return { shapes: [[4, 33]], scale: 3, f: (_o, [x]) => x!, loss: { value: (out) => 0.5 * sum(R64.crossEntropy(out, targets)), seed: (b, out) => b.crossEntropyBackward(out, targets, 0.5) } } satisfies Case;
  })(),
  ...Object.fromEntries(
    [1, 2.5].map((temp) => {
      const teacher = seededRand(3, Float64Array)(3 * 7, 2).map(Math.fround);
      const c: Case = { shapes: [[3, 7]], scale: 2, f: (_o, [x]) => x!, loss: { value: (out) => 0.7 * sum(R64.klDivergence(out, R64.upload(teacher, [3, 7]), temp, 0.7).loss), seed: (b, out) => b.klDivergence(out, b.upload(teacher, [3, 7]), temp, 0.7).grad } };
      return [`klDivergence, temperature ${temp}`, c];
    }),
  ),
  "fan-out: shared inputs' gradients summed (linear dxInto, in-place sums, add handing one gradient to both)": {
    shapes: [[4, 5], [5, 5], [5, 5], [5, 5]],
    f: (o, [x, w1, w2, w3]) => {
      const y = o.linear(x!, w1!, null);
      const z = o.add(o.add(o.linear(x!, w2!, null), o.linear(x!, w3!, null)), x!);
      return o.add(o.add(y, o.swiglu(y, y)), z);
    },
  },
  "gradient slots of a training step (stale values overwritten, then added; a weight used twice, as a tied head)": {
    shapes: [[6, 5], [5], [7, 5]],
    slots: true,
    f: (o, [table, nw, w]) => {
      const ids = Int32Array.of(1, 4, 4, 0);
      const h = o.rmsnorm(o.embedding(table!, ids), nw!, 1e-5);
      return o.concatLast(o.add(o.linear(h, table!, null), o.linear(o.swiglu(h, h), table!, null)), o.linear(h, w!, null));
    },
  },
};

for (const { name, make, tol, skip } of backends)
  test(`${name}: every backward op and autograd op matches finite differences of the float64 forward`, { skip }, () => {
    const B = make();
    const bad: string[] = [];
    let seed = 100;
    for (const [label, c] of Object.entries(cases)) {
      const errs = gradErrors(B, c, seed++);
      errs.forEach((e, i) => {
        if (!(e <= tol)) bad.push(`${label}: input ${i} relative error ${e.toExponential(2)}`);
      });
    }
    assert.deepEqual(bad, []);
  });
