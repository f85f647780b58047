/**
 * LlamaModel.dispose frees every tensor the model loaded (a tied LM head once), drops the absorbed MLA
 * projections, is idempotent, and refuses later use with a clear error.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { loadModel } from "../../src/model/llama.js";
import { MlaBlock } from "../../src/model/attention/mla.js";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { MlaError } from "../../src/errors.js";
import { convertFixture } from "../convert/helpers.js";
import { trackLive } from "../convert/liveTensors.js";
import { MODELS } from "../helpers.js";

for (const kind of ["gqa", "mla"] as const) {
  test(`dispose frees a ${kind} model's weights and refuses later use`, async () => {
    const spec = kind === "gqa" ? path.join(MODELS, "stories260K") : await convertFixture("stories260K", { rank: 4, ropePairs: 2, ropeStrategy: "uniform", device: "reference" });
    let loading = true;
    const { backend, live } = trackLive(new ReferenceBackend(), { counted: () => true, inside: () => !loading });
    const { model } = loadModel(spec, { backend });
    loading = false;
    const loaded = live.size;
    assert.ok(loaded > 0);
    // An absorbed decode step builds the MLA projections dispose must drop.
    const cache = model.newCache();
    model.forward(Int32Array.of(1, 400, 300), cache);
    model.forward(Int32Array.of(7), cache, { absorb: true });
    const invalidated: number[] = [];
    const original = MlaBlock.prototype.invalidate;
    MlaBlock.prototype.invalidate = function (this: MlaBlock) {
      invalidated.push(1);
      original.call(this);
    };
    try {
      model.dispose();
      model.dispose();
    } finally {
      MlaBlock.prototype.invalidate = original;
    }
    assert.equal(live.size, 0, `${live.size} of the ${loaded} loaded tensors still live`);
    assert.equal(invalidated.length, kind === "mla" ? model.config.layers : 0);
    for (const use of [() => model.forward(Int32Array.of(1, 2)), () => model.tokenLosses(Int32Array.of(1, 2), Int32Array.of(2, 3)), () => model.embedTokens(Int32Array.of(1))])
      assert.throws(use, (e: unknown) => e instanceof MlaError && /disposed/.test(e.message) && /hint: .*loadModel/.test(e.message));
  });
}

test("finetune disposes its student, teacher and training state when it ends, also when a callback throws", async () => {
  const { finetune } = await import("../../src/finetune/trainer.js");
  const { TrainState } = await import("../../src/finetune/trainState.js");
  const { LlamaModel } = await import("../../src/model/llama.js");
  const { FIXTURES, tmpDir } = await import("../helpers.js");
  const calls = { model: 0, state: 0 };
  const [md, sd] = [LlamaModel.prototype.dispose, TrainState.prototype.dispose];
  LlamaModel.prototype.dispose = function (this: InstanceType<typeof LlamaModel>) {
    calls.model++;
    md.call(this);
  };
  TrainState.prototype.dispose = function (this: InstanceType<typeof TrainState>) {
    calls.state++;
    sd.call(this);
  };
  try {
    const model = path.join(MODELS, "stories260K");
    const o = { data: [path.join(FIXTURES, "text", "tinystories.txt")], tokens: 2 * 4 * 32, seq: 32, batch: 4, distill: model, progress: null, valFraction: 0, device: "cpu" as const };
    await finetune(model, { ...o, out: path.join(tmpDir(), "a") });
    assert.deepEqual(calls, { model: 2, state: 1 });
    await assert.rejects(finetune(model, { ...o, out: path.join(tmpDir(), "b"), onStep: () => { throw new Error("stop here"); } }), /stop here/);
    assert.deepEqual(calls, { model: 4, state: 2 });
  } finally {
    [LlamaModel.prototype.dispose, TrainState.prototype.dispose] = [md, sd];
  }
});
