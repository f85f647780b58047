/**
 * Finite-difference checks of every backward op, in float64: loss = Σ out ⊙ R for a fixed random R,
 * analytic gradients from the tape vs central differences; relative error ‖a − n‖/‖n‖ ≤ 1e-5.
 * The whole-model check (a 2-layer MLA model) is in test/finetune/gradcheck.test.ts.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { Node, Ops, Tape } from "../../src/tensor/autograd.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { seededRand } from "../helpers.js";

const B = new ReferenceBackend("f64");
const rand = seededRand(11, Float64Array);

/** Checks d(Σ f(inputs) ⊙ R)/d inputs. `f` builds the output node from input nodes with `ops`. */
function gradCheck(name: string, shapes: number[][], f: (ops: Ops, xs: Node[]) => Node, opts: { scale?: number; loss?: (ops: Ops, out: Node) => { value: number; seed: Tensor } } = {}): void {
  const inputs = shapes.map((s) => rand(s.reduce((a, b) => a * b, 1), opts.scale ?? 1));
  const lossOf = (vals: Float64Array[], withTape: boolean) => {
    const tape = withTape ? new Tape(B) : null;
    const ops = new Ops(B, tape);
    const nodes = vals.map((v, i) => ops.param(B.upload(v, shapes[i]!), true));
    const out = f(ops, nodes);
    const R = rand(out.value.size).map((_, i) => Math.sin(i * 1.3 + 0.7));
    let value: number;
    let seedT: Tensor;
    if (opts.loss) ({ value, seed: seedT } = opts.loss(ops, out));
    else {
      const Y = out.value.toArray();
      value = 0;
      for (let i = 0; i < Y.length; i++) value += Y[i]! * R[i]!;
      seedT = B.upload(R, out.value.shape);
    }
    if (tape) tape.backward(out, seedT);
    return { value, grads: nodes.map((n) => n.grad?.toArray() ?? null) };
  };
  const analytic = lossOf(inputs, true).grads;
  const h = 1e-6;
  inputs.forEach((x, i) => {
    const picks = x.length <= 64 ? [...x.keys()] : Array.from({ length: 64 }, (_, j) => Math.floor((j * 7919) % x.length));
    let num2 = 0;
    let diff2 = 0;
    for (const j of picks) {
      const orig = x[j]!;
      x[j] = orig + h;
      const up = lossOf(inputs, false).value;
      x[j] = orig - h;
      const down = lossOf(inputs, false).value;
      x[j] = orig;
      const n = (up - down) / (2 * h);
      const a = analytic[i]?.[j] ?? 0;
      num2 += n * n;
      diff2 += (a - n) ** 2;
    }
    const rel = Math.sqrt(diff2) / Math.max(Math.sqrt(num2), 1e-12);
    assert.ok(rel <= 1e-5, `${name}: input ${i} relative error ${rel.toExponential(2)}`);
  });
}

test("linear (with bias) backward", () => gradCheck("linear", [[5, 7], [6, 7], [6]], (o, [x, w, b]) => o.linear(x!, w!, b!)));
test("rmsnorm backward", () => gradCheck("rmsnorm", [[4, 9], [9]], (o, [x, w]) => o.rmsnorm(x!, w!, 1e-5)));
test("rope backward (full, and partial with per-head frequencies)", () => {
  const pos = Int32Array.of(0, 3, 17);
  gradCheck("rope", [[3, 2, 6]], (o, [x]) => o.rope(x!, pos, Float64Array.of(1, 0.1, 0.01)));
  gradCheck("rope partial", [[3, 2, 6]], (o, [x]) => o.rope(x!, pos, Float64Array.of(1, 0.3, 0.05, 0.02), 4));
});
test("attention backward (GQA, causal; cache offset; sliding window)", () => {
  gradCheck("attention", [[5, 4, 3], [5, 2, 3], [5, 2, 3]], (o, [q, k, v]) => o.attention(q!, k!, v!, { scale: 0.6, queryOffset: 0, window: null }));
  gradCheck("attention offset", [[2, 4, 3], [6, 2, 3], [6, 2, 4]], (o, [q, k, v]) => o.attention(q!, k!, v!, { scale: 0.6, queryOffset: 4, window: null }));
  gradCheck("attention window", [[6, 2, 3], [6, 1, 3], [6, 1, 3]], (o, [q, k, v]) => o.attention(q!, k!, v!, { scale: 0.6, queryOffset: 0, window: 3 }));
});
test("swiglu, add, gatherCols, concatLast, reshape backward", () => {
  gradCheck("swiglu", [[3, 5], [3, 5]], (o, [g, u]) => o.swiglu(g!, u!), { scale: 3 });
  gradCheck("add", [[3, 5], [3, 5]], (o, [a, b]) => o.add(a!, b!));
  gradCheck("gatherCols", [[3, 6]], (o, [x]) => o.gatherCols(x!, Int32Array.of(5, 0, 2, 2, 1)));
  gradCheck("concatLast", [[2, 3, 2], [2, 3, 4]], (o, [a, b]) => o.concatLast(a!, b!));
  gradCheck("reshape", [[2, 6]], (o, [x]) => o.reshape(x!, [3, 4]));
});
test("fan-out: gradients of shared inputs are summed, in place only where a node owns its gradient", () => {
  // x feeds three products and a sum (linearBackward's dxInto, then in-place sums); y reaches the output
  // through an add (which hands one gradient tensor to both its inputs) and through both swiglu inputs.
  gradCheck("fan-out", [[4, 5], [5, 5], [5, 5], [5, 5]], (o, [x, w1, w2, w3]) => {
    const y = o.linear(x!, w1!, null);
    const z = o.add(o.add(o.linear(x!, w2!, null), o.linear(x!, w3!, null)), x!);
    return o.add(o.add(y, o.swiglu(y, y)), z);
  });
});
test("embedding backward (repeated ids accumulate)", () => gradCheck("embedding", [[5, 4]], (o, [t]) => o.embedding(t!, Int32Array.of(3, 1, 3, 0))));
test("cross-entropy and distillation KL backward", () => {
  const targets = Int32Array.of(2, 0, 4);
  gradCheck("cross-entropy", [[3, 6]], (_o, [x]) => x!, {
    scale: 2,
    loss: (_ops, out) => ({ value: B.crossEntropy(out.value, targets).reduce((a, b) => a + b, 0) * 0.5, seed: B.crossEntropyBackward(out.value, targets, 0.5) }),
  });
  const teacher = B.upload(rand(18, 2), [3, 6]);
  for (const temp of [1, 2.5])
    gradCheck(`KL T=${temp}`, [[3, 6]], (_o, [x]) => x!, {
      scale: 2,
      loss: (_ops, out) => {
        const r = B.klDivergence(out.value, teacher, temp, 0.7);
        return { value: r.loss.reduce((a, b) => a + b, 0) * 0.7, seed: r.grad };
      },
    });
});
