// Whole-model gradients against central finite differences of the float64 loss (reference backend in
// float64). Each op's own check is in test/backends/backward.test.ts and cpuBackward.test.ts; these
// check the graphs built from them: the MLA block (partial RoPE, gatherCols, concatLast, biases), the
// EG-MLA gate (embedding → linear → SwiGLU on the latent), the deepseek_v3 block (latent RMSNorm,
// column splits), stacked sequences, and activation checkpointing's recompute (ResidualRecomputeOps),
// which test/model/checkpointing.test.ts compares only to the plain tape; then the float32 backends (the
// native CPU library, what CPU fine-tuning runs on) against those float64 gradients.
// Tolerance 1e-5 on ‖analytic − numerical‖/‖numerical‖ over the probed elements: with h = 1e-6 (relative)
// in float64 the central difference's truncation error is O(h²·f''') ≈ 1e-12 and its rounding error
// about ε·|loss|/h ≈ 1e-16·10/1e-6 = 1e-9 per element, far below 1e-5; a wrong term (a missing factor,
// a dropped path) gives O(1).
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { loadNativeCpu, NativeCpuBackend } from "../../src/backends/native/cpu.js";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import type { Backend } from "../../src/tensor/backend.js";
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
function checkModel(label: string, model: LlamaModel, ids: Int32Array, o: TapeOptions & { samples?: number; zeroOk?: (path: string) => boolean } = {}): string[] {
  const { leaves, loss } = tapeGradients(model, ids, o);
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

interface TapeOptions {
  sequences?: number;
  checkpoint?: boolean;
  keepMid?: boolean;
}

/**
 * The trainable leaves of `model` with their gradients from the tape (with `checkpoint`: the recomputing layers) of
 * the summed cross-entropy of `ids` (`sequences` back to back, each predicting its next token), and that loss as a
 * function of the leaves' current values (the plain forward).
 */
function tapeGradients(model: LlamaModel, ids: Int32Array, o: TapeOptions = {}): { leaves: ReturnType<typeof trainableLeaves>; loss: () => number } {
  const B = model.backend;
  const sequences = o.sequences ?? 1;
  const T = ids.length / sequences;
  // Each sequence's first T − 1 ids predict the next.
  const inputs = Int32Array.from({ length: sequences * (T - 1) }, (_, i) => ids[Math.floor(i / (T - 1)) * T + (i % (T - 1))]!);
  const targets = Int32Array.from({ length: sequences * (T - 1) }, (_, i) => ids[Math.floor(i / (T - 1)) * T + (i % (T - 1)) + 1]!);
  const fwd = { sequences, checkpoint: o.checkpoint, checkpointKeepsMid: o.keepMid };
  const tape = new Tape(B);
  const ops = new Ops(B, tape);
  const P = paramNodes(ops, model.weights, () => true);
  const logits = model.graph(ops, P, inputs, undefined, fwd);
  tape.backward(logits, B.crossEntropyBackward(logits.value, targets, 1));
  const loss = () => B.crossEntropy(model.forward(inputs, undefined, { sequences }), targets).reduce((a, x) => a + x, 0);
  return { leaves: trainableLeaves(P), loss };
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

/** An EG-MLA model moved off its converted point (gate projection 0, SiLU at its unit point), where the gate table's gradient is 0. */
function offConvertedPoint(model: LlamaModel): void {
  model.weights.layers.forEach((l, i) => {
    const w = (l.attn as MlaWeights).gateProj!.toArray();
    for (let j = 0; j < w.length; j++) w[j] = 0.3 * Math.sin(17 * j + i);
  });
  model.weightsChanged();
}

test("EG-MLA gate (embedding → linear → SwiGLU on the latent): every weight's gradient, the gate's included, matches finite differences", async () => {
  const model = await tinyMla("eg-mla");
  offConvertedPoint(model);
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

/** Every trainable leaf's tape gradient (tapeGradients) by path. */
function leafGradients(model: LlamaModel, ids: Int32Array, checkpoint: boolean): Map<string, Float64Array> {
  return new Map(tapeGradients(model, ids, { checkpoint }).leaves.map(({ path: p, node }) => [p, Float64Array.from(node.grad!.toArray())]));
}

// The float32 backends train on the CPU (the native library where it loads): their whole-model gradients are
// checked against the float64 ones above, which finite differences vouch for. Float32 forward and backward
// leave at most ~5e-6 relative error a leaf here (kRope's bias), 1e-4 allowed; a wrong term gives O(1).
const nativeCpu = loadNativeCpu();
const float32Backends: { name: string; make: () => Backend; skip: string | false }[] = [
  { name: "reference f32", make: () => new ReferenceBackend("f32"), skip: false },
  { name: "native CPU", make: () => new NativeCpuBackend(nativeCpu as Exclude<typeof nativeCpu, string>), skip: typeof nativeCpu === "string" ? `native CPU library not loaded: ${nativeCpu}` : false },
];
for (const f32 of float32Backends) {
  test(`${f32.name}: the whole MLA and EG-MLA models' gradients, plain and checkpointed, match float64's`, { skip: f32.skip }, async () => {
    const bad: string[] = [];
    for (const attention of [undefined, "eg-mla"] as const) {
      const dir = path.join(tmpDir(), attention ?? "mla");
      await convert(path.join(GOLDEN, "tiny-llama3"), { rank: 2, ropePairs: 2, ropeStrategy: "uniform", out: dir, progress: null, ...(attention ? { attention, gateDim: 4 } : {}) });
      const exact = loadModel(dir, { backend: new ReferenceBackend("f64") }).model;
      const model = loadModel(dir, { backend: f32.make() }).model;
      if (attention) for (const m of [exact, model]) offConvertedPoint(m);
      for (const checkpoint of [false, true]) {
        const want = leafGradients(exact, ids9, checkpoint);
        const got = leafGradients(model, ids9, checkpoint);
        assert.deepEqual([...got.keys()], [...want.keys()]);
        for (const [name, g] of got) {
          const w = want.get(name)!;
          const err = Math.hypot(...g.map((x, i) => x - w[i]!));
          const norm = Math.hypot(...w);
          // kUpBias's true gradient is 0 (see kUpBias): there both are rounding noise.
          if (!(err <= 1e-4 * norm || (kUpBias(name) && err <= 1e-5))) bad.push(`${attention ?? "mla"}${checkpoint ? " checkpointed" : ""}: ${name} ‖Δ‖ ${err.toExponential(2)} against ‖g‖ ${norm.toExponential(2)}`);
        }
      }
    }
    assert.deepEqual(bad, []);
  });
}
