import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { SafetensorsFile } from "../../src/io/safetensors.js";
import { loadModel, LlamaModel } from "../../src/model/llama.js";
import type { MhaWeights } from "../../src/model/weights.js";
import type { FloatArray } from "../../src/tensor/tensor.js";
import { headDimOrder, MlaAttention } from "../../src/model/config.js";
import { calibrate, calibrationWindows } from "../../src/ropeSelect/calibrate.js";
import { twoNormScores, topPairs, fixedPairs } from "../../src/ropeSelect/strategies.js";
import { perplexity, readText, tokenizeForEval } from "../../src/eval/perplexity.js";
import { inspectModel } from "../../src/eval/inspect.js";
import { convert } from "../../src/convert/pipeline.js";
import { maxRank } from "../../src/convert/factor.js";
import { synth } from "../../src/synth/synth.js";
import { assertDecodeMatchesForward, fastCpu, FIXTURES, GOLDEN, MODELS, ROOT, maxAbsDiff, tmpDir } from "../helpers.js";
import { conversionGolden, convertFixture } from "./helpers.js";

function goldenPrompt(model: string): Int32Array {
  const f = SafetensorsFile.open(path.join(GOLDEN, `${model}_logits.safetensors`));
  const ids = Int32Array.from(f.readF32("ids"));
  f.close();
  return ids;
}

/** The original model's logits with RoPE removed on every pair outside `selection` (q follows its KV group). */
function partialRopeLogits(m: LlamaModel, ids: Int32Array, selection: number[][][]): FloatArray {
  const b = m.backend;
  const c = m.config;
  const T = ids.length;
  const positions = Int32Array.from({ length: T }, (_, i) => i);
  const group = c.heads / c.kvHeads;
  const keepRope = (x: FloatArray, heads: number, sel: number[][], headOf: (h: number) => number) => {
    const rot = b.rope(b.upload(Float32Array.from(x), [T, heads, c.headDim]), positions, m.invFreq).toArray();
    const out = Float32Array.from(x);
    for (let t = 0; t < T; t++)
      for (let h = 0; h < heads; h++)
        for (const d of headDimOrder(c.headDim, sel[headOf(h)]!).rope) out[(t * heads + h) * c.headDim + d] = rot[(t * heads + h) * c.headDim + d]!;
    return out;
  };
  let h = b.embedding(m.weights.embed, ids);
  m.weights.layers.forEach((lw, li) => {
    const w = lw.attn as MhaWeights;
    const x = b.rmsnorm(h, lw.inputNorm, c.rmsEps);
    const q = keepRope(b.linear(x, w.q).toArray(), c.heads, selection[li]!, (hh) => Math.floor(hh / group));
    const k = keepRope(b.linear(x, w.k).toArray(), c.kvHeads, selection[li]!, (g) => g);
    const v = b.linear(x, w.v).reshape([T, c.kvHeads, c.headDim]);
    const o = b.attention(b.upload(q, [T, c.heads, c.headDim]), b.upload(k, [T, c.kvHeads, c.headDim]), v, { scale: 1 / Math.sqrt(c.headDim), queryOffset: 0, window: null });
    h = b.add(h, b.linear(o.reshape([T, c.heads * c.headDim]), w.o));
    const y = b.rmsnorm(h, lw.postNorm, c.rmsEps);
    h = b.add(h, b.linear(b.swiglu(b.linear(y, lw.gate), b.linear(y, lw.up)), lw.down));
  });
  return b.linear(b.rmsnorm(h, m.weights.finalNorm, c.rmsEps), m.weights.lmHead).toArray();
}

for (const model of ["stories260K", "stories260K-mha"]) {
  test(`${model}: all RoPE pairs and full rank reproduce the original logits within 1e-4`, async () => {
    const ids = goldenPrompt(model);
    const original = loadModel(path.join(MODELS, model)).model.forward(ids).toArray();
    const out = await convertFixture(model, { rank: 8, ropePairs: 4, ropeStrategy: "high" });
    assert.ok(maxAbsDiff(loadModel(out).model.forward(ids).toArray(), original) <= 1e-4);
  });

  test(`${model}: R < Dh/2 without truncation equals the original with RoPE removed on the dropped pairs`, async () => {
    const ids = goldenPrompt(model);
    const orig = loadModel(path.join(MODELS, model)).model;
    for (const [strategy, R] of [["high", 1], ["uniform", 2], ["low", 3]] as const) {
      const rank = maxRank("joint", orig.config.kvHeads, 8, R, 64); // rank·Hkv = min(rows, D): nothing truncated
      const out = await convertFixture(model, { rank, ropePairs: R, ropeStrategy: strategy });
      const conv = loadModel(out);
      assert.deepEqual(conv.config.attention.kind === "mla" && conv.config.attention.selection[0]![0], fixedPairs(strategy, R, 8));
      const err = maxAbsDiff(conv.model.forward(ids).toArray(), partialRopeLogits(orig, ids, (conv.config.attention as { selection: number[][][] }).selection));
      assert.ok(err <= 1e-4, `${strategy} R=${R}: max |Δ| ${err}`);
    }
  });

  test(`${model}: 2-norm statistics and selection match PyTorch within 1e-4 relative`, async () => {
    const g = conversionGolden.models[model]!.two_norm;
    const lm = loadModel(path.join(MODELS, model));
    const cal = conversionGolden.calib;
    const windows = calibrationWindows(lm.tokenizer, readText(path.join(ROOT, cal.file)), cal.samples, cal.len, 1);
    const stats = await calibrate(lm.model, windows, { covariance: false, progress: null });
    const c = lm.config;
    const half = c.headDim / 2;
    const rel = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(b), 1e-12);
    for (let l = 0; l < c.layers; l++) {
      stats.qNorm[l]!.forEach((x, i) => assert.ok(rel(x, g.q_norm[l]![Math.floor(i / half)]![i % half]!) < 1e-4, `q l${l} i${i}`));
      stats.kNorm[l]!.forEach((x, i) => assert.ok(rel(x, g.k_norm[l]![Math.floor(i / half)]![i % half]!) < 1e-4, `k l${l} i${i}`));
      const s = twoNormScores(stats.qNorm[l]!, stats.kNorm[l]!, c.heads, c.kvHeads, half);
      s.forEach((x, i) => assert.ok(rel(x, g.scores[l]![Math.floor(i / half)]![i % half]!) < 1e-4, `score l${l} i${i}`));
      for (let kv = 0; kv < c.kvHeads; kv++)
        for (const R of [1, 2, 3]) {
          const torchTop = [...g.scores[l]![kv]!.keys()].sort((a, b) => g.scores[l]![kv]![b]! - g.scores[l]![kv]![a]! || a - b).slice(0, R).sort((a, b) => a - b);
          assert.deepEqual(topPairs(s.subarray(kv * half, (kv + 1) * half), R), torchTop);
        }
    }
  });

  // Scored on fastCpu(): 12k tokens of stories260K in ~1 s against ~9 s on the reference backend.
  test(`${model}: converted perplexity matches the PyTorch conversion within 0.5% (6 settings)`, async () => {
    const g = conversionGolden.models[model]!;
    const cal = conversionGolden.calib;
    const evalFile = path.join(ROOT, conversionGolden.eval.file);
    for (const s of g.settings) {
      const out = await convertFixture(model, { rank: s.rank, ropePairs: s.rope_pairs, ropeStrategy: s.strategy, svd: "joint", svdInit: "weights", ...(s.strategy === "2-norm" ? { calib: path.join(ROOT, cal.file), calibSamples: cal.samples, calibLen: cal.len } : {}) });
      const lm = loadModel(out, fastCpu());
      assert.deepEqual((lm.config.attention as { selection: number[][][] }).selection, s.selection, `${s.strategy} selection`);
      const r = await perplexity(lm.model, tokenizeForEval(lm.tokenizer, readText(evalFile)), { ctx: conversionGolden.eval.ctx, progress: null });
      const diff = Math.abs(r.ppl - s.ppl) / s.ppl;
      assert.ok(diff < 0.005, `${s.strategy} R=${s.rope_pairs} rank=${s.rank}: ppl ${r.ppl} vs PyTorch ${s.ppl}`);
    }
  });
}

test("KV accounting: inspect gives Hkv·(2R + rank)·layers; split doubles the latent", async () => {
  const out = await convertFixture("stories260K", { rank: 3, ropePairs: 2, ropeStrategy: "uniform" });
  const j = inspectModel(out);
  assert.equal(j.kv_elems_per_token, 4 * (2 * 2 + 3) * 5);
  assert.equal(j.kv_bytes_per_token, 4 * (2 * 2 + 3) * 5 * 4);
  assert.equal(j.attention, "mla");
  const conf = JSON.parse(fs.readFileSync(path.join(out, "mla_conversion.json"), "utf8"));
  assert.equal(conf.retained_energy.length, 5);
  assert.ok(conf.retained_energy.every((e: number) => e > 0 && e <= 1));
  const split = await convertFixture("stories260K", { rank: 2, ropePairs: 1, ropeStrategy: "high", svd: "split" });
  assert.equal(inspectModel(split).kv_elems_per_token, (4 * 2 + 2 * 2 * 4) * 5);
});

test("llama2-7b shape with R = 8, rank 64: the KV cache shrinks by 68.75%", async () => {
  const dir = path.join(tmpDir(), "l7");
  await synth({ arch: "llama2-7b", layers: 1, out: dir, progress: null, maxShardBytes: 2 ** 30 });
  const r = await convert(dir, { rank: 64, ropePairs: 8, ropeStrategy: "uniform", dryRun: true, progress: null });
  assert.equal(r.plan.kvChangePercent, -68.75);
  assert.equal(r.plan.before.elems_per_token, 2 * 32 * 128);
  assert.equal(r.plan.after.elems_per_token, 32 * (16 + 64));
  assert.equal(r.plan.after.bytes_per_token, 32 * (16 + 64) * 2);
  fs.rmSync(dir, { recursive: true });
});

test("absorbed decode equals the non-absorbed forward at every step of a 64-token greedy generation", async () => {
  const out = await convertFixture("stories260K", { rank: 4, ropePairs: 2, ropeStrategy: "uniform" });
  const { model, config, tokenizer } = loadModel(out);
  const a = (config.attention as MlaAttention).splits[0]!;
  const ids = tokenizer.encode("Once upon a time", { addSpecialTokens: true });
  const cache = model.newCache();
  let logits = model.forward(Int32Array.from(ids), cache);
  const V = config.vocabSize;
  for (let step = 0; step < 64; step++) {
    const row = logits.toArray().subarray(logits.size - V);
    const full = model.forward(Int32Array.from(ids)).toArray();
    const err = maxAbsDiff(row, full.subarray(full.length - V));
    assert.ok(err <= 1e-4, `step ${step}: max |Δ| ${err}`);
    let next = 0;
    for (let i = 1; i < V; i++) if (row[i]! > row[next]!) next = i;
    ids.push(next);
    logits = model.forward(Int32Array.of(next), cache, { absorb: true });
  }
  assert.equal(cache.length, ids.length);
  assert.equal(cache.elements, (config.kvHeads * 2 * a.ropePairs + a.latentDim) * config.layers * ids.length, "cache holds only rope keys + latent");
  assert.ok(cache.elements < 2 * config.kvHeads * config.headDim * config.layers * ids.length);
});

test("activation-aware SVD gives a lower converted perplexity than weight SVD at the same rank", async () => {
  const calib = path.join(FIXTURES, "text", "tinystories_25k.txt");
  const text = readText(path.join(FIXTURES, "text", "tinystories_heldout.txt"));
  for (const model of ["stories260K", "stories260K-mha"]) {
    const nll = async (svdInit: "weights" | "activations") => {
      // The weight SVD with the high strategy reads no text (a --calib nothing reads is refused).
      const lm = loadModel(await convertFixture(model, { rank: 2, ropePairs: 1, ropeStrategy: "high", svdInit, ...(svdInit === "activations" ? { calib } : {}) }), fastCpu());
      return (await perplexity(lm.model, tokenizeForEval(lm.tokenizer, text), { ctx: 256, progress: null })).nll;
    };
    const [w, act] = [await nll("weights"), await nll("activations")];
    assert.ok(act < w, `${model}: activations ${act} vs weights ${w}`);
  }
});

test("the converted checkpoint copies every non-attention tensor byte for byte", async () => {
  const out = await convertFixture("stories260K", { rank: 2, ropePairs: 1, ropeStrategy: "high" });
  const src = Checkpoint.open(path.join(MODELS, "stories260K"));
  const dst = Checkpoint.open(out);
  for (const n of src.names()) {
    if (/\.(k|v)_proj\./.test(n)) assert.equal(dst.has(n), false, n);
    else assert.deepEqual(dst.readBytes(n), src.readBytes(n), n);
  }
  src.close();
  dst.close();
  for (const f of ["tokenizer.json", "tokenizer_config.json", "config.json", "mla_conversion.json"]) assert.ok(fs.existsSync(path.join(out, f)), f);
});

for (const fixture of ["tiny-qwen2", "tiny-llama3", "tiny-mistral"]) {
  test(`${fixture} (biases, rope scaling, sliding window): exact at full rank; absorbed decode equals the plain forward`, async () => {
    const dir = path.join(GOLDEN, fixture);
    const ids = goldenPrompt(fixture);
    const orig = loadModel(dir);
    const half = orig.config.headDim / 2;
    const full = path.join(tmpDir(), "full");
    await convert(dir, { rank: maxRank("joint", orig.config.kvHeads, orig.config.headDim, half, orig.config.hiddenSize), ropePairs: half, ropeStrategy: "high", out: full, progress: null });
    const err = maxAbsDiff(loadModel(full).model.forward(ids).toArray(), orig.model.forward(ids).toArray());
    assert.ok(err <= 1e-4, `full conversion: max |Δ| ${err}`);
    const low = path.join(tmpDir(), "low");
    await convert(dir, { rank: 2, ropePairs: 2, ropeStrategy: "uniform", out: low, progress: null });
    // Both absorbed forms (run time and pre-multiplied), each on a freshly loaded model.
    for (const form of ["runtime", "premultiplied"]) {
      process.env["MHA2MLA_ABSORB"] = form;
      try {
        assertDecodeMatchesForward(loadModel(low).model, ids, `${form} absorption`);
      } finally {
        delete process.env["MHA2MLA_ABSORB"];
      }
    }
  });
}
