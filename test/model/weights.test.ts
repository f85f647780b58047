import assert from "node:assert/strict";
import { test } from "node:test";
import { normalizeHfConfig } from "../../src/io/hfConfig.js";
import { expectedTensors } from "../../src/model/weights.js";
import { ARCHS } from "../../src/synth/archs.js";

test("expected tensor lists have unique names for every known architecture, with and without biases", () => {
  for (const [name, raw] of Object.entries(ARCHS))
    for (const extra of [{}, { attention_bias: true, mlp_bias: true }]) {
      const c = normalizeHfConfig({ ...raw, ...extra, num_hidden_layers: 2 }, name);
      const names = expectedTensors(c).map((t) => t.name);
      assert.equal(new Set(names).size, names.length, `${name} ${JSON.stringify(extra)}`);
      assert.equal(names.includes("lm_head.weight"), !c.tieEmbeddings);
    }
});
