// Whole-model gradients against central finite differences of the float64 loss (reference backend in
// float64). Each op's own check is in test/backends/backward.test.ts and cpuBackward.test.ts; these
// check the graphs built from them: the MLA block (partial RoPE, gatherCols, concatLast, biases), the
// EG-MLA gate (embedding → linear → SwiGLU on the latent), the deepseek_v3 block (latent RMSNorm,
// column splits), stacked sequences, and activation checkpointing's recompute (ResidualRecomputeOps),
// which test/model/checkpointing.test.ts compares only to the plain tape.
// Tolerance 1e-5 on ‖analytic − numerical‖/‖numerical‖ over the probed elements: with h = 1e-6 (relative)
// in float64 the central difference's truncation error is O(h²·f''') ≈ 1e-12 and its rounding error
// about ε·|loss|/h ≈ 1e-16·10/1e-6 = 1e-9 per element, far below 1e-5; a wrong term (a missing factor,
// a dropped path) gives O(1).
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { convert } from "../../src/convert/pipeline.js";
import { convertDeepseek } from "../../src/deepseek/export.js";
import { loadModel, type LlamaModel } from "../../src/model/llama.js";
import { paramNodes, trainableLeaves } from "../../src/model/params.js";
import type { MlaWeights } from "../../src/model/weights.js";
import { Ops, Tape } from "../../src/tensor/autograd.js";
import { finiteDifference, GOLDEN, MODELS, tmpDir } from "../helpers.js";

/**
 * Checks every trainable leaf of `model` (f64 reference) for the summed cross-entropy of `ids`
 * (`sequences` back to back, each predicting its next token), the analytic gradients from the tape
 * (with `checkpoint`: the recomputing layers). `zeroOk`: leaves whose true gradient is 0.
 */
function checkModel(label: string, model: LlamaModel, ids: Int32Array, o: { sequences?: number; checkpoint?: boolean; keepMid?: boolean; samples?: number; zeroOk?: (path: string) => boolean } = {}): string[] {
  const B = model.backend;
  const sequences = o.sequences ?? 1;
  const T = ids.length / sequences;
  // Each sequence's first T − 1 ids predict the next.
  const inputs = Int32Array.from({ length: sequences * (T - 1) }, (_, i) => ids[Math.floor(i / (T - 1)) * T + (i % (T - 1))]!);
  const targets = Int32Array.from({ length: sequences * (T - 1) }, (_, i) => ids[Math.floor(i / (T - 1)) * T + (i % (T - 1)) + 1]!);
  const fwd = { sequences, checkpoint: o.checkpoint, checkpointKeepsMid: o.keepMid };
  const loss = () => B.crossEntropy(model.forward(inputs, undefined, { sequences }), targets).reduce((a, x) => a + x, 0);
  const tape = new Tape(B);
  const ops = new Ops(B, tape);
  const P = paramNodes(ops, model.weights, () => true);
  const logits = model.graph(ops, P, inputs, undefined, fwd);
  tape.backward(logits, B.crossEntropyBackward(logits.value, targets, 1));
  const leaves = trainableLeaves(P);
  const bad: string[] = [];
  for (const { path: name, node } of leaves) {
    const g = node.grad!.toArray();
    const { rel, norm } = finiteDifference(node.value.toArray() as Float64Array, g, loss, 1e-6, o.samples ?? 6);
    // A leaf whose true gradient is 0 (see zeroOk): both ~0 (finite differences carry ~1e-7 noise).
    const zero = !!o.zeroOk?.(name) && Math.hypot(...g) < 1e-10 && norm < 1e-5;
    // Probes that all land where the gradient is ~1e-8 (rows of a tied embedding no input token uses, reached
    // only through the head) leave the relative error to the differences' noise, ε·|loss|/h ≈ 1e-8 per
    // probe: there an absolute ‖analytic − numerical‖ ≤ 1e-7 passes.
    if (!(rel <= 1e-5 || rel * norm <= 1e-7 || zero)) bad.push(`${label}: ${name} relative error ${rel.toExponential(2)} (‖numerical‖ ${norm.toExponential(2)})`);
  }
  return bad;
}

// The key bias of k_up adds q·b to every score of a query, which the softmax cancels: its true gradient is 0.
const kUpBias = (p: string) => p.endsWith("attn.kUpBias");
const ids9 = Int32Array.from([1, 400, 13, 77, 260, 5, 301, 99, 12]);
const ids2x6 = Int32Array.from([1, 400, 13, 77, 260, 5, 1, 301, 99, 12, 44, 8]);

async function tinyMla(attention?: "eg-mla"): Promise<LlamaModel> {
  const out = path.join(tmpDir(), attention ?? "mla");
  await convert(path.join(GOLDEN, "tiny-llama3"), { rank: 2, ropePairs: 2, ropeStrategy: "uniform", out, progress: null, ...(attention ? { attention, gateDim: 4 } : {}) });
  return loadModel(out, { backend: new ReferenceBackend("f64") }).model;
}

test("whole 2-layer MLA model (biases, GQA, partial RoPE): gradients match finite differences in float64", async () => {
  const model = await tinyMla();
  assert.equal(model.config.layers, 2);
  assert.equal(model.config.attention.kind, "mla");
  const leaves = trainableLeaves(paramNodes(new Ops(model.backend, new Tape(model.backend)), model.weights, () => true));
  assert.ok(leaves.some((l) => l.path.endsWith("attn.kvDown")) && leaves.some((l) => l.path.endsWith("attn.kUpBias")), "MLA leaves are trained");
  assert.deepEqual(checkModel("MLA", model, ids9, { zeroOk: kUpBias }), []);
});

test("MLA with 2 stacked sequences, and with activation checkpointing (kept mid-layer sums or not): gradients match finite differences", async () => {
  const model = await tinyMla();
  const bad = [
    ...checkModel("2 sequences", model, ids2x6, { sequences: 2, zeroOk: kUpBias }),
    ...checkModel("checkpointed, keepMid", model, ids2x6, { sequences: 2, checkpoint: true, keepMid: true, zeroOk: kUpBias }),
    ...checkModel("checkpointed, down only", model, ids9, { checkpoint: true, keepMid: false, zeroOk: kUpBias }),
  ];
  assert.deepEqual(bad, []);
});

test("EG-MLA gate (embedding → linear → SwiGLU on the latent): every weight's gradient, the gate's included, matches finite differences", async () => {
  const model = await tinyMla("eg-mla");
  // Off the converted point (projection 0, SiLU at its unit point), where the table's gradient is 0.
  model.weights.layers.forEach((l, i) => {
    const w = (l.attn as MlaWeights).gateProj!.toArray();
    for (let j = 0; j < w.length; j++) w[j] = 0.3 * Math.sin(17 * j + i);
  });
  model.weightsChanged();
  const leaves = trainableLeaves(paramNodes(new Ops(model.backend, new Tape(model.backend)), model.weights, () => true)).map((l) => l.path);
  for (const g of ["gateEmbed", "gateProj", "gateProjBias"]) assert.ok(leaves.includes(`layers.0.attn.${g}`), `${g} is trained`);
  assert.deepEqual(checkModel("EG-MLA", model, ids9, { zeroOk: kUpBias }), []);
});

test("deepseek_v3 form (latent RMSNorm, column splits of q and kv_a): gradients match finite differences", async () => {
  const out = path.join(tmpDir(), "deepseek");
  await convertDeepseek(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, balanceKv: false, out, progress: null, device: "cpu" });
  const model = loadModel(out, { backend: new ReferenceBackend("f64") }).model;
  assert.deepEqual(checkModel("deepseek_v3", model, Int32Array.from([1, 400, 13, 77, 260, 5, 301]), { samples: 3 }), []);
});
