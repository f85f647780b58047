// A micro-batch of several sequences in one graph (ForwardOptions.sequences) equals running each
// sequence alone: logits and weight gradients, MHA/GQA and MLA, on the reference backend.
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadModel } from "../../src/model/llama.js";
import { paramNodes, trainableLeaves } from "../../src/model/params.js";
import { Ops, Tape } from "../../src/tensor/autograd.js";
import { referenceBackend } from "../../src/backends/reference/index.js";

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
  return d;
}

test("two sequences in one graph equal each alone (logits and gradients)", () => {
  const b = referenceBackend;
  const { model } = loadModel("stories260K", { backend: b, weights: "f32" });
  const seqs = [Int32Array.from([1, 5, 9, 200, 17, 3]), Int32Array.from([1, 42, 8, 8, 100, 7])];
  const run = (ids: Int32Array, sequences: number) => {
    const tape = new Tape(b);
    const ops = new Ops(b, tape);
    const P = paramNodes(ops, model.weights, () => true);
    const logits = model.graph(ops, P, ids, undefined, { sequences });
    const V = logits.value.shape[1]!;
    tape.backward(logits, b.upload(new Float32Array(ids.length * V).fill(0.01), [ids.length, V]));
    const grads = trainableLeaves(P).map((l) => l.node.grad!.toArray());
    return { logits: logits.value.toArray(), grads };
  };
  const joint = run(Int32Array.from([...seqs[0]!, ...seqs[1]!]), 2);
  const alone = seqs.map((s) => run(s, 1));
  const n = alone[0]!.logits.length;
  assert.ok(maxDiff(joint.logits.subarray(0, n), alone[0]!.logits) < 1e-5);
  assert.ok(maxDiff(joint.logits.subarray(n), alone[1]!.logits) < 1e-5);
  joint.grads.forEach((g, i) => {
    const sum = alone[0]!.grads[i]!.map((x, j) => x + alone[1]!.grads[i]![j]!);
    assert.ok(maxDiff(g, sum) < 1e-4, `gradient ${i}`);
  });
});
