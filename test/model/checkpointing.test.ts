// Activation checkpointing (ForwardOptions.checkpoint) recomputes each layer in the backward: the
// logits and every weight gradient equal the plain tape's, for MHA (GQA), MLA with biases, EG-MLA and
// the deepseek_v3 form, with and without the kept mid-layer sums. The memory check refuses what
// cannot fit and names the flags that would.
import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { convert } from "../../src/convert/pipeline.js";
import { loadModel, LlamaModel } from "../../src/model/llama.js";
import { paramNodes, trainableLeaves } from "../../src/model/params.js";
import { Ops, Tape } from "../../src/tensor/autograd.js";
import { activationBytes, checkFits, fitsDevice, stateBytes, trainableCount } from "../../src/finetune/trainState.js";
import { MlaError } from "../../src/errors.js";
import { convertDeepseek } from "../../src/deepseek/export.js";
import { GOLDEN, maxRelDiff, MODELS, tmpDir } from "../helpers.js";

function gradients(model: LlamaModel, ids: Int32Array, sequences: number, checkpoint: boolean, train: (p: string) => boolean, checkpointKeepsMid?: boolean) {
  const b = model.backend;
  const tape = new Tape(b);
  const ops = new Ops(b, tape);
  const P = paramNodes(ops, model.weights, train);
  const logits = model.graph(ops, P, ids.subarray(0, -sequences), undefined, { sequences, checkpoint, checkpointKeepsMid });
  const T = logits.value.shape[0]!;
  const targets = Int32Array.from({ length: T }, (_, i) => ids[(i * 7 + 3) % ids.length]!);
  tape.backward(logits, b.crossEntropyBackward(logits.value, targets, 1));
  return { logits: logits.value.toArray(), grads: trainableLeaves(P).map((l) => ({ path: l.path, g: l.node.grad!.toArray() })) };
}

async function models(): Promise<{ name: string; model: LlamaModel }[]> {
  const b = new ReferenceBackend("f64");
  const out = path.join(tmpDir(), "mla");
  await convert(path.join(GOLDEN, "tiny-llama3"), { rank: 2, ropePairs: 2, ropeStrategy: "uniform", out, progress: null });
  const eg = path.join(tmpDir(), "eg-mla");
  await convert(path.join(GOLDEN, "tiny-llama3"), { rank: 2, ropePairs: 2, ropeStrategy: "uniform", attention: "eg-mla", gateDim: 4, out: eg, progress: null });
  const ds = path.join(tmpDir(), "deepseek");
  await convertDeepseek(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, balanceKv: false, out: ds, progress: null, device: "cpu" });
  return [
    { name: "stories260K (GQA)", model: loadModel("stories260K", { backend: b, weights: "f32" }).model },
    { name: "tiny-llama3 MLA (biases)", model: loadModel(out, { backend: b, weights: "f32" }).model },
    { name: "tiny-llama3 EG-MLA", model: loadModel(eg, { backend: b, weights: "f32" }).model },
    { name: "stories260K deepseek_v3", model: loadModel(ds, { backend: b, weights: "f32" }).model },
  ];
}

test("checkpointed layers give the plain tape's logits and gradients (all weights, attention only)", async () => {
  const ids = Int32Array.from([1, 400, 13, 77, 260, 5, 301, 99, 12, 1, 8, 44, 120, 6, 31, 2, 90, 11]);
  for (const { name, model } of await models()) {
    for (const train of [() => true, (p: string) => p.includes(".attn.")]) {
      const plain = gradients(model, ids, 2, false, train);
      // With the mid-layer sums kept (o_proj and down skipped in the recompute) and without (down only).
      for (const keepMid of [true, false]) {
        const ckpt = gradients(model, ids, 2, true, train, keepMid);
        assert.ok(maxRelDiff(ckpt.logits, plain.logits) < 1e-12, `${name}: logits`);
        assert.equal(ckpt.grads.length, plain.grads.length);
        plain.grads.forEach((p, i) => {
          assert.equal(ckpt.grads[i]!.path, p.path);
          assert.ok(maxRelDiff(ckpt.grads[i]!.g, p.g) < 1e-12, `${name}, keepMid ${keepMid}: ${p.path} differs by ${maxRelDiff(ckpt.grads[i]!.g, p.g)}`);
        });
      }
    }
  }
});

test("the recompute skips the products that only feed a kept residual sum (o_proj, down): two per layer, one without the mid-layer sums", () => {
  const b = new ReferenceBackend("f64");
  const { model } = loadModel("stories260K", { backend: b, weights: "f32" });
  const ids = Int32Array.from([1, 400, 13, 77, 260, 5, 301, 99, 12]);
  let products = 0;
  const linear = b.linear.bind(b);
  b.linear = (...args: Parameters<typeof b.linear>) => (products++, linear(...args));
  gradients(model, ids, 1, false, () => true);
  const plain = products;
  products = 0;
  gradients(model, ids, 1, true, () => true);
  const layers = model.config.layers;
  // Each layer's 7 products run twice (first pass and recompute) but for o_proj and down; the head once.
  assert.equal(plain, 7 * layers + 1);
  assert.equal(products, plain + 5 * layers);
  // Without the mid-layer sums only down is skipped.
  products = 0;
  gradients(model, ids, 1, true, () => true, false);
  assert.equal(products, plain + 6 * layers);
});

test("the memory check refuses before allocating and names the flags that fit", () => {
  const b = new ReferenceBackend("f32");
  const { model } = loadModel("stories260K", { backend: b, weights: "f32" });
  const tokens = 4096;
  const plain = activationBytes(model, tokens, false);
  const ckpt = activationBytes(model, tokens, true);
  assert.ok(ckpt < plain, "checkpointing needs less");
  const lean = activationBytes(model, tokens, true, false, "f32", false);
  assert.ok(lean < ckpt, "without the mid-layer sums, less again");
  const withFree = (free: number) => Object.assign(b, { memory: () => ({ free, total: 2 * free, peak: 0 }) });
  // Room for the state and the checkpointed activations, not for the full tape.
  withFree((plain + ckpt) / 2 + 16 * 300_000);
  assert.throws(
    () => checkFits(model, { train: "all", checkpoint: false }, "f32", tokens),
    (e: unknown) => e instanceof MlaError && e.code === "OUT_OF_MEMORY" && /--train all/.test(e.message) && /--checkpoint-activations needs about/.test(e.message),
  );
  checkFits(model, { train: "all", checkpoint: true }, "f32", tokens);
  // Room for the lean plan only: the trainer drops the mid-layer sums (fitsDevice) before refusing.
  const n = trainableCount(model, () => true);
  withFree(stateBytes(n, "f32") - 4 * n + (ckpt + lean) / 2);
  assert.equal(fitsDevice(model, { train: "all", checkpoint: true }, "f32", tokens), false);
  assert.equal(fitsDevice(model, { train: "all", checkpoint: true, keepMid: false }, "f32", tokens), true);
  withFree(1000);
  assert.throws(
    () => checkFits(model, { train: "all", checkpoint: true }, "f32", tokens),
    (e: unknown) => e instanceof MlaError && /smaller --batch or --seq/.test(e.message),
  );
});
