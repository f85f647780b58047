/**
 * A model whose layers keep different rope pairs and latent widths (`convert --kv-split per-layer`)
 * loads, evaluates and decodes: absorbed decode (one sequence and batched) gives the logits of the
 * full forward, the cache holds each layer's own widths, and the KV accounting adds them up.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { loadModel } from "../../src/model/llama.js";
import { kvBytesPerToken, kvElemsPerToken, kvRowsPerToken, MlaAttention, uniformSplit } from "../../src/model/config.js";
import { absorbForm } from "../../src/model/attention/mla.js";
import { inspectModel } from "../../src/eval/inspect.js";
import { perplexity, readText, tokenizeForEval } from "../../src/eval/perplexity.js";
import { MlaError } from "../../src/errors.js";
import { assertDecodeMatchesForward, FIXTURES, maxAbsDiff, tmpDir } from "../helpers.js";
import { PER_LAYER_BUDGET, perLayerFixture } from "../convert/helpers.js";

const PROMPT = Int32Array.of(1, 400, 300, 200, 9, 57, 22, 301);

test("a per-layer model loads with each layer's split and has the uniform conversion's KV bytes", async () => {
  const { config } = loadModel(await perLayerFixture());
  const a = config.attention as MlaAttention;
  assert.equal(a.kind, "mla");
  assert.equal(uniformSplit(a), null, `the fixture must differ by layer: ${JSON.stringify(a.splits)}`);
  const G = config.kvHeads;
  const budget = G * (2 * PER_LAYER_BUDGET.ropePairs + PER_LAYER_BUDGET.rank);
  a.splits.forEach((s, l) => {
    assert.equal(s.latentDim, s.rank * G, `layer ${l}: joint latent = rank · Hkv`);
    assert.deepEqual(kvRowsPerToken(config, l), [G * 2 * s.ropePairs, s.latentDim]);
    assert.equal(G * 2 * s.ropePairs + s.latentDim, budget, `layer ${l} spends the budget`);
    assert.equal(a.selection[l]!.every((p) => p.length === s.ropePairs), true, `layer ${l}: R pairs per KV head`);
  });
  assert.equal(kvElemsPerToken(config), budget * config.layers);
  assert.equal(kvBytesPerToken(config, "bf16"), 2 * budget * config.layers);
  const j = inspectModel(await perLayerFixture());
  assert.equal(j.kv_elems_per_token, budget * config.layers);
  assert.deepEqual(j.mla!.rope_pairs, a.splits.map((s) => s.ropePairs));
  assert.deepEqual(j.mla!.latent_dim, a.splits.map((s) => s.latentDim));
  assert.match(j.mla!.deepseek_export, /^no: the model's layers keep different RoPE pairs/);
});

test("a per-layer model evaluates, and its absorbed decode (alone and batched) equals the full forward at every step", async () => {
  const dir = await perLayerFixture();
  const { model, config, tokenizer } = loadModel(dir);
  const r = await perplexity(model, tokenizeForEval(tokenizer, readText(path.join(FIXTURES, "text", "tinystories_heldout.txt")), 1000), { ctx: 64, progress: null });
  assert.ok(r.nll > 0 && r.ppl < config.vocabSize, `nll ${r.nll}: better than chance`);
  const V = config.vocabSize;
  const full = model.forward(PROMPT).toArray();
  // One sequence: prefill 3 tokens, then one token per step through the absorbed path.
  const cache = assertDecodeMatchesForward(model, PROMPT, "per-layer decode");
  const a = config.attention as MlaAttention;
  assert.equal(cache.elements, a.splits.reduce((n, s) => n + config.kvHeads * 2 * s.ropePairs + s.latentDim, 0) * PROMPT.length, "each layer caches its own widths");
  // Two sequences of different lengths in one batched step.
  const [c1, c2] = [model.newCache(), model.newCache()];
  model.forward(PROMPT.subarray(0, 5), c1);
  model.forward(PROMPT.subarray(0, 2), c2);
  const both = model.decodeBatch(Int32Array.of(PROMPT[5]!, PROMPT[2]!), [c1, c2.clone()]).toArray();
  assert.ok(maxAbsDiff(both.subarray(0, V), full.subarray(5 * V, 6 * V)) < 1e-4);
  assert.ok(maxAbsDiff(both.subarray(V), full.subarray(2 * V, 3 * V)) < 1e-4);
});

test("a per-layer model whose weights do not match its config is refused, naming the tensor", async () => {
  const dir = path.join(tmpDir(), "mismatch");
  fs.cpSync(await perLayerFixture(), dir, { recursive: true });
  const cfgPath = path.join(dir, "config.json");
  const raw = JSON.parse(fs.readFileSync(cfgPath, "utf8"));
  const m = raw.mha2mla;
  // Swap two layers' splits (and selections): the totals still agree, the tensor shapes do not.
  const [i, j] = [0, m.rope_pairs.findIndex((r: number) => r !== m.rope_pairs[0])];
  for (const k of ["rope_pairs", "rank", "latent_dim", "selection"]) [m[k][i], m[k][j]] = [m[k][j], m[k][i]];
  fs.writeFileSync(cfgPath, JSON.stringify(raw));
  assert.throws(() => loadModel(dir), (e: unknown) => e instanceof MlaError && e.code === "BAD_CHECKPOINT" && /model\.layers\.0\.self_attn\.k_rope_proj\.weight" has shape/.test(e.message));
});

test("the absorbed form is chosen per layer from that layer's widths", async () => {
  const { config } = loadModel(await perLayerFixture());
  const a = config.attention as MlaAttention;
  const one = (l: number) => ({ ...config, attention: { ...a, splits: a.splits.map(() => a.splits[l]!) } });
  for (let l = 0; l < config.layers; l++) assert.equal(absorbForm(config, l), absorbForm(one(l), 0), `layer ${l}`);
});

test("MHA2MLA_ABSORB forces a form; a misspelt one is refused, not taken as the automatic choice", async () => {
  const { config } = loadModel(await perLayerFixture());
  const before = process.env["MHA2MLA_ABSORB"];
  try {
    for (const form of ["runtime", "premultiplied"] as const) {
      process.env["MHA2MLA_ABSORB"] = form;
      assert.equal(absorbForm(config, 0), form);
    }
    process.env["MHA2MLA_ABSORB"] = "premultiply";
    assert.throws(() => absorbForm(config, 0), (e: Error) => e instanceof MlaError && /MHA2MLA_ABSORB=premultiply is not an absorbed form/.test(e.message) && /use runtime or premultiplied/.test(e.message));
  } finally {
    if (before === undefined) delete process.env["MHA2MLA_ABSORB"];
    else process.env["MHA2MLA_ABSORB"] = before;
  }
});
