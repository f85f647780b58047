import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { SafetensorsFile } from "../../src/io/safetensors.js";
import { loadModel } from "../../src/model/llama.js";
import { KvCache } from "../../src/model/kvCache.js";
import { GOLDEN, MODELS, maxAbsDiff } from "../helpers.js";

function golden(name: string): { ids: Int32Array; logits: Float32Array } {
  const f = SafetensorsFile.open(path.join(GOLDEN, `${name}_logits.safetensors`));
  try {
    return { ids: Int32Array.from(f.readF32("ids")), logits: f.readF32("logits") };
  } finally {
    f.close();
  }
}

const cases: [string, string][] = [
  ["stories260K", path.join(MODELS, "stories260K")],
  ["stories260K-mha", path.join(MODELS, "stories260K-mha")],
  ["tiny-qwen2", path.join(GOLDEN, "tiny-qwen2")],
  ["tiny-llama3", path.join(GOLDEN, "tiny-llama3")],
  ["tiny-linear", path.join(GOLDEN, "tiny-linear")],
  ["tiny-mistral", path.join(GOLDEN, "tiny-mistral")],
];

for (const [name, dir] of cases) {
  test(`logits of ${name} match HF transformers within 1e-4`, () => {
    const g = golden(name);
    const { model } = loadModel(dir);
    const logits = model.forward(g.ids).toArray();
    const err = maxAbsDiff(logits, g.logits);
    assert.ok(err <= 1e-4, `max |Δ| = ${err}`);
  });
}

test("decoding token by token with the KV cache gives the full-sequence logits", () => {
  const g = golden("tiny-mistral");
  const { model, config } = loadModel(path.join(GOLDEN, "tiny-mistral"));
  const cache = new KvCache(model.backend, config.layers, config.kvHeads, config.headDim);
  const V = config.vocabSize;
  model.forward(g.ids.subarray(0, 5), cache);
  for (let t = 5; t < g.ids.length; t++) {
    const row = model.forward(g.ids.subarray(t, t + 1), cache).toArray();
    assert.ok(maxAbsDiff(row, g.logits.subarray(t * V, (t + 1) * V)) <= 1e-4, `step ${t}`);
  }
  assert.equal(cache.length, g.ids.length);
  assert.equal(cache.elements, 2 * config.layers * config.kvHeads * config.headDim * g.ids.length);
});
