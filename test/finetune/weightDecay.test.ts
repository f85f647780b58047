// AdamW's weight decay falls on matrices only: RMSNorm gains and biases (1-D weights) keep theirs, as in
// HF's Trainer (decay would pull a norm's gains toward 0, not 1). A step with zero gradients moves
// nothing but the decay, so each matrix comes out scaled by 1 − lr·wd and each 1-D weight unchanged.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { selectBackend } from "../../src/backends/select.js";
import { loadModel } from "../../src/model/llama.js";
import { decayRuns, TrainState } from "../../src/finetune/trainState.js";
import { silentLogger } from "../../src/util/log.js";

for (const [name, make] of [["reference", () => new ReferenceBackend("f32")], ["cpu", () => selectBackend("cpu", silentLogger)]] as const) {
  test(`weight decay scales matrices by 1 − lr·wd and leaves norm gains alone (${name} backend)`, () => {
    const s = new TrainState(loadModel("stories260K", { backend: make(), weights: "f32" }).model, () => true, "f32");
    const before = s.params.toArray().slice();
    s.beginStep(); // no micro-step: every slot reads as zeros
    s.update(0.1, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 2 }, 1);
    const after = s.params.toArray();
    let matrices = 0, vectors = 0;
    for (const slot of s.slots) {
      const want = slot.shape.length >= 2 ? 0.8 : 1;
      for (let i = slot.offset; i < slot.offset + slot.size; i++) assert.ok(Math.abs(after[i]! - want * before[i]!) <= 1e-6 * Math.abs(before[i]!), `${slot.path}[${i - slot.offset}]: ${after[i]} for ${want} × ${before[i]}`);
      if (slot.shape.length >= 2) matrices++;
      else vectors++;
    }
    assert.ok(matrices > 0 && vectors > 0, "the model has both kinds of weight");
  });
}

test("decay runs merge neighbouring slots of the same kind", () => {
  const slot = (offset: number, shape: number[]) => ({ path: "", offset, shape, size: shape.reduce((a, b) => a * b, 1) });
  assert.deepEqual(decayRuns([slot(0, [4]), slot(4, [2, 3]), slot(10, [3, 1]), slot(13, [5]), slot(18, [2])]), [
    { offset: 0, size: 4, decay: false },
    { offset: 4, size: 9, decay: true },
    { offset: 13, size: 7, decay: false },
  ]);
});
