import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { convert } from "../../src/convert/pipeline.js";
import { loadModel } from "../../src/model/llama.js";
import { paramNodes, trainableLeaves } from "../../src/model/params.js";
import { Ops, Tape } from "../../src/tensor/autograd.js";
import { finiteDifference, GOLDEN, tmpDir } from "../helpers.js";

test("whole 2-layer MLA model (biases, GQA, partial RoPE): gradients match finite differences in float64", async () => {
  const out = path.join(tmpDir(), "mla");
  await convert(path.join(GOLDEN, "tiny-llama3"), { rank: 2, ropePairs: 2, ropeStrategy: "uniform", out, progress: null });
  const B = new ReferenceBackend("f64");
  const { model, config } = loadModel(out, { backend: B });
  assert.equal(config.layers, 2);
  assert.equal(config.attention.kind, "mla");
  const ids = Int32Array.from([1, 400, 13, 77, 260, 5, 301, 99, 12]);
  const inputs = ids.subarray(0, -1);
  const targets = ids.subarray(1);
  const loss = () => B.crossEntropy(model.forward(inputs), targets).reduce((a, x) => a + x, 0);
  const tape = new Tape(B);
  const ops = new Ops(B, tape);
  const P = paramNodes(ops, model.weights, () => true);
  const logits = model.graph(ops, P, inputs);
  tape.backward(logits, B.crossEntropyBackward(logits.value, targets, 1));
  const leaves = trainableLeaves(P);
  assert.ok(leaves.some((l) => l.path.endsWith("attn.kvDown")) && leaves.some((l) => l.path.endsWith("attn.kUpBias")), "MLA leaves are trained");
  const h = 1e-6;
  for (const { path: name, node } of leaves) {
    const g = node.grad!.toArray();
    const { rel, norm } = finiteDifference(node.value.toArray() as Float64Array, g, loss, h);
    // The key bias of k_up adds q·b to every score of a query, which the softmax cancels: its true
    // gradient is 0, so there the check is that both are ~0 (finite differences carry ~1e-7 noise).
    const zero = Math.hypot(...g) < 1e-10 && norm < 1e-5;
    assert.ok(rel <= 1e-5 || zero, `${name}: relative error ${rel.toExponential(2)}`);
  }
});
