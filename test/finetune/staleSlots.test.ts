// The training state does not zero its gradient slots before a step: each slot's first gradient of the
// step is written over the last step's values (Node.slotFlag). A step's gradients must equal a fresh
// state's, under accumulation too, and a slot no gradient reached must read as zeros at the update.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { loadModel } from "../../src/model/llama.js";
import { microStep, TrainState } from "../../src/finetune/trainState.js";

const opts = { scale: 1 / 16, ceWeight: 1, klWeight: 0, temperature: 1, teacher: null, lossChunk: 5 };
const batch = (seed: number) => {
  const inputs = Int32Array.from({ length: 16 }, (_, i) => 1 + ((i * 37 + seed * 101) % 500));
  return { inputs, targets: Int32Array.from(inputs, (_, i) => inputs[(i + 3) % 16]!), sequences: 2 };
};
const fresh = () => new TrainState(loadModel("stories260K", { backend: new ReferenceBackend("f32"), weights: "f32" }).model, () => true, "f32");

test("a step's gradients overwrite the last step's: equal to a fresh state's, with accumulation", () => {
  const used = fresh();
  used.beginStep();
  microStep(used, batch(1), opts);
  used.beginStep();
  microStep(used, batch(2), opts);
  microStep(used, batch(3), opts);
  const clean = fresh();
  clean.beginStep();
  microStep(clean, batch(2), opts);
  microStep(clean, batch(3), opts);
  assert.deepEqual(used.grads.toArray(), clean.grads.toArray());
});

test("with activation checkpointing too (the recompute's skipped products write their weights' slots)", () => {
  const ck = { ...opts, checkpoint: true };
  const used = fresh();
  used.beginStep();
  microStep(used, batch(1), ck);
  used.beginStep();
  microStep(used, batch(2), ck);
  const clean = fresh();
  clean.beginStep();
  microStep(clean, batch(2), opts);
  assert.deepEqual(used.grads.toArray(), clean.grads.toArray());
});

test("a slot no gradient reached in a step reads as zeros when the optimizer runs", () => {
  const s = fresh();
  s.beginStep();
  microStep(s, batch(1), opts);
  s.beginStep(); // a step whose loss reaches no weight
  const norm = s.update(1e-3, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0 }, 1);
  assert.equal(norm, 0);
  assert.ok(s.grads.toArray().every((x) => x === 0));
});
