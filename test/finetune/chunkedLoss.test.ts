// The training loss over row chunks of the LM head (no [N, V] logits) gives the loss and the
// gradients of the whole-logits cross-entropy (float32, to 1e-5): tied head (stories260K) and untied (tiny-llama3).
import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { loadModel } from "../../src/model/llama.js";
import { paramNodes, trainableLeaves } from "../../src/model/params.js";
import { Ops, Tape } from "../../src/tensor/autograd.js";
import { microStep, TrainState } from "../../src/finetune/trainState.js";
import { finiteDifference, GOLDEN, MODELS } from "../helpers.js";

for (const name of [path.join(MODELS, "stories260K"), path.join(GOLDEN, "tiny-llama3")]) {
  test(`chunked head loss equals the whole-logits loss and gradients (${path.basename(name)})`, () => {
    const b = new ReferenceBackend("f32");
    const inputs = Int32Array.from([1, 40, 13, 77, 26, 5, 31, 99, 12, 1, 8, 44, 120, 6, 31, 2]);
    const targets = Int32Array.from(inputs, (_, i) => inputs[(i + 3) % inputs.length]!);
    const scale = 1 / inputs.length;
    // Whole logits, plain tape.
    const ref = loadModel(name, { backend: b, weights: "f32" }).model;
    const tape = new Tape(b);
    const P = paramNodes(new Ops(b, tape), ref.weights, () => true);
    const logits = ref.graph(new Ops(b, tape), P, inputs, undefined, { sequences: 2 });
    tape.backward(logits, b.crossEntropyBackward(logits.value, targets, scale));
    const lossRef = b.crossEntropy(logits.value, targets).reduce((a, x) => a + x, 0);
    const want = new Map(trainableLeaves(P).map((l) => [l.path, l.node.grad!.toArray()]));
    // Chunks of 5 rows (uneven) through the training state.
    const model = loadModel(name, { backend: b, weights: "f32" }).model;
    const state = new TrainState(model, () => true, "f32");
    state.beginStep();
    const loss = microStep(state, { inputs, targets, sequences: 2 }, { scale, ceWeight: 1, klWeight: 0, temperature: 1, teacher: null, lossChunk: 5 });
    assert.ok(Math.abs(loss - lossRef) < 1e-6 * Math.abs(lossRef), `loss ${loss} vs ${lossRef}`);
    const grads = state.grads.toArray();
    for (const s of state.slots) {
      const w = want.get(s.path)!;
      let d = 0;
      let m = 0;
      for (let i = 0; i < s.size; i++) {
        d = Math.max(d, Math.abs(grads[s.offset + i]! - w[i]!));
        m = Math.max(m, Math.abs(w[i]!));
      }
      assert.ok(d <= 1e-5 * Math.max(m, 1e-30) + 1e-12, `${s.path}: max |Δ| ${d} (max |g| ${m})`);
    }
  });
}

// microStep's own loss and the gradients it writes into the slots, against central finite differences
// of that loss in float64 (reference backend in float64): the chunked head loss weighted by ceWeight,
// and cross-entropy plus distillation KL (temperature 2) from a teacher, summed over 2 sequences. The
// slots hold scale · d(loss)/dθ. Tolerance 1e-5 relative: float64 with h = 1e-6 leaves ~1e-9 of
// rounding and ~1e-12 of truncation error, while a wrong weight, scale or temperature factor is O(0.1).
test("microStep's slot gradients equal finite differences of its loss (chunked cross-entropy; cross-entropy + distillation KL)", () => {
  const b = new ReferenceBackend("f64");
  const teacher = loadModel(path.join(GOLDEN, "tiny-mistral"), { backend: b }).model;
  const inputs = Int32Array.from([1, 40, 13, 77, 26, 1, 99, 12, 8, 44]);
  const targets = Int32Array.from(inputs, (_, i) => inputs[(i + 5) % inputs.length]!);
  const scale = 0.25;
  const bad: string[] = [];
  for (const [label, o] of [
    ["chunked CE", { scale, ceWeight: 0.6, klWeight: 0, temperature: 1, teacher: null, lossChunk: 5 }],
    ["CE + KL", { scale, ceWeight: 0.6, klWeight: 0.4, temperature: 2, teacher }],
  ] as const) {
    const state = new TrainState(loadModel(path.join(GOLDEN, "tiny-llama3"), { backend: b }).model, () => true, "f32");
    const loss = () => microStep(state, { inputs, targets, sequences: 2 }, o);
    state.beginStep();
    loss();
    const grads = Float64Array.from(state.grads.toArray(), (g) => g / scale);
    const params = state.params.toArray() as Float64Array;
    for (const s of state.slots) {
      const { rel } = finiteDifference(params.subarray(s.offset, s.offset + s.size), grads.subarray(s.offset, s.offset + s.size), loss, 1e-6, 2);
      if (!(rel <= 1e-5)) bad.push(`${label}: ${s.path} relative error ${rel.toExponential(2)}`);
    }
  }
  assert.deepEqual(bad, []);
});
