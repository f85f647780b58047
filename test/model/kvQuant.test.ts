/**
 * Quantized decode caches (--kv-cache): the per-group round trip, the byte accounting, decode on a
 * quantized cache equal to evaluation with the same cache type (MHA, our MLA, deepseek_v3), and the
 * perplexity cost of int8 (≤ 0.5%) on stories260K and its MLA conversion.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { KV_GROUP, kvRowBytes, roundTripRows, checkKvCacheDtype } from "../../src/model/kvQuant.js";
import { kvBytesPerToken, kvElemsPerToken } from "../../src/model/config.js";
import { loadModel } from "../../src/model/llama.js";
import { heldBytesPerToken, heldRows } from "../../src/model/kvCache.js";
import type { Backend } from "../../src/tensor/backend.js";
import { perplexity, readText, tokenizeForEval } from "../../src/eval/perplexity.js";
import { convertDeepseek } from "../../src/deepseek/export.js";
import { MlaError } from "../../src/errors.js";
import { convertFixture } from "../convert/helpers.js";
import { FIXTURES, MODELS, maxAbsDiff, seededRand, tmpDir } from "../helpers.js";

const TEXT = path.join(FIXTURES, "text", "tinystories.txt");

test("round trip: int8/int4 within half a step of a bf16 absmax scale per group of 32; bf16 rounds; zeros stay zero; f32 is the identity", () => {
  const rand = seededRand(5, Float32Array);
  const n = 3 * 70; // rows of 70: groups of 32, 32, 6
  const x = rand(n);
  for (const [dtype, qmax] of [["int8", 127], ["int4", 7]] as const) {
    const y = roundTripRows(Float32Array.from(x), 70, dtype);
    for (let r = 0; r < 3; r++)
      for (let g = 0; g < 70; g += KV_GROUP) {
        const idx = Array.from({ length: Math.min(KV_GROUP, 70 - g) }, (_, i) => r * 70 + g + i);
        const amax = Math.max(...idx.map((i) => Math.abs(x[i]!)));
        for (const i of idx) {
          assert.ok(Math.abs(y[i]! - x[i]!) <= (amax / qmax) * 0.5 * 1.01 + 1e-7, `${dtype} element ${i}: ${x[i]} → ${y[i]}`);
          const steps = y[i]! / (amax / qmax);
          assert.ok(Math.abs(steps) <= qmax * 1.01, `${dtype}: at most ${qmax} steps`);
        }
      }
  }
  const b = roundTripRows(Float32Array.of(1 + 2 ** -10, 3.140625), 2, "bf16");
  assert.deepEqual([...b], [1, 3.140625]);
  assert.deepEqual([...roundTripRows(new Float32Array(40), 40, "int4")], new Array(40).fill(0));
  const same = Float32Array.of(0.1, 0.2);
  assert.equal(roundTripRows(same, 2, "f32"), same);
  assert.throws(() => checkKvCacheDtype("int2"), (e: unknown) => e instanceof MlaError && /int2/.test(e.message) && /hint: use one of f32, bf16, int8, int4/.test(e.message));
});

test("bytes per token: f32 4·n, bf16 2·n, int8 n + 2 per group, int4 n/2 + 2 per group, summed over the cached rows and layers", () => {
  assert.deepEqual(["f32", "bf16", "int8", "int4"].map((d) => kvRowBytes(64, d as never)), [256, 128, 68, 36]);
  const { config } = loadModel(path.join(MODELS, "stories260K")); // 5 layers, 4 KV heads of 8: rows of 32 and 32
  assert.equal(kvBytesPerToken(config, "bf16"), 2 * kvElemsPerToken(config));
  assert.equal(kvBytesPerToken(config, "int4"), 5 * 2 * (16 + 2));
});

test("held bytes: host caches hold float32 rows whatever the dtype (but a backend's own store: the native CPU backend's bf16); a device store holds its dtype's rows (int8/int4 padded to 16 bytes); heldBytes counts the same", () => {
  const { model, config } = loadModel(path.join(MODELS, "stories260K"));
  const n = kvElemsPerToken(config);
  for (const dtype of ["f32", "bf16", "int8", "int4"] as const) {
    const h = heldRows(model.backend, dtype);
    assert.deepEqual([h.type, h.rowBytes(32)], ["f32", 128], dtype);
    assert.equal(heldBytesPerToken(config, model.backend, dtype), 4 * n, dtype);
    const cache = model.newCache(dtype, { capacity: 7 });
    assert.equal(cache.heldBytes, 7 * heldBytesPerToken(config, model.backend, dtype), `${dtype}: a cache of 7 tokens' room holds what the rule says`);
    cache.dispose();
  }
  assert.equal(heldRows(model.backend, "f32").why, null);
  assert.match(heldRows(model.backend, "int8").why!, /backend holds int8 cache rows on the host, as float32$/);
  assert.match(heldRows(model.backend, "bf16").why!, /backend holds bf16 cache rows on the host, as float32$/);
  // A backend that keeps rows in its own memory (CUDA's createRowStore), without a GPU.
  const device = { name: "fake", createRowStore: () => null } as unknown as Backend;
  const held = (d: "f32" | "bf16" | "int8" | "int4") => ((h) => [h.type, h.rowBytes(32), h.rowBytes(2048), h.why])(heldRows(device, d));
  assert.deepEqual(held("bf16"), ["bf16", 64, 4096, null]);
  assert.deepEqual(held("f32"), ["f32", 128, 8192, null]);
  // Values padded to 16 bytes, then one bf16 scale per 32 values padded to 16: 2,048 int8 values take 2,048 + 128.
  assert.deepEqual(held("int8"), ["int8", 32 + 16, 2048 + 128, "a device store pads each row's int8 values and its scales to 16 bytes each"]);
  assert.deepEqual(held("int4").slice(0, 3), ["int4", 16 + 16, 1024 + 128]);
  assert.equal(heldBytesPerToken(config, device, "int4"), 5 * 2 * (16 + 16));
  assert.equal(heldBytesPerToken(config, device, "bf16"), kvBytesPerToken(config, "bf16"));
  // One that keeps only some dtypes in a store (the native CPU backend: bf16); the others as float32 host rows.
  const some = { name: "some", createRowStore: () => null, storesRowsOf: (d: string) => d === "bf16" } as unknown as Backend;
  assert.deepEqual(heldRows(some, "bf16").type, "bf16");
  assert.deepEqual([heldRows(some, "int8").type, heldRows(some, "int8").why], ["f32", "the some backend holds int8 cache rows on the host, as float32"]);
});

test("decode on an int8/int4 cache gives the logits of evaluating with the same cache type (MHA, MLA absorbed, deepseek_v3)", async () => {
  const mla = await convertFixture("stories260K", { rank: 4, ropePairs: 2, ropeStrategy: "uniform", device: "reference" });
  const ds = path.join(tmpDir(), "ds");
  await convertDeepseek(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, out: ds });
  const ids = Int32Array.of(1, 400, 300, 200, 17, 23, 42, 99, 5, 61);
  for (const spec of [path.join(MODELS, "stories260K"), mla, ds]) {
    const { model, config } = loadModel(spec);
    const V = config.vocabSize;
    for (const dtype of ["int8", "int4"] as const) {
      const full = model.forward(ids, undefined, { kvCache: dtype }).toArray();
      const cache = model.newCache(dtype);
      const prefix = 4;
      const rows = [model.forward(ids.subarray(0, prefix), cache).toArray()];
      for (let t = prefix; t < ids.length; t++) rows.push(model.forward(ids.subarray(t, t + 1), cache).toArray());
      const stepwise = new Float32Array(ids.length * V);
      let at = 0;
      for (const r of rows) (stepwise.set(r, at), (at += r.length));
      const e = maxAbsDiff(stepwise, full);
      assert.ok(e <= 2e-4, `${path.basename(spec)} ${dtype}: max |Δ logits| ${e}`);
      assert.equal(cache.bytes, ids.length * kvBytesPerToken(config, dtype));
      const exact = model.forward(ids).toArray();
      assert.ok(maxAbsDiff(exact, full) > 0, `${dtype} changes the logits`);
    }
  }
});

test("perplexity: an int8 cache costs ≤ 0.5% NLL on stories260K and its MLA conversion; int4 more; fine-tuning with a quantized cache is refused", async () => {
  const mla = await convertFixture("stories260K", { rank: 4, ropePairs: 2, ropeStrategy: "uniform", device: "reference" });
  for (const spec of [path.join(MODELS, "stories260K"), mla]) {
    const lm = loadModel(spec);
    const ids = tokenizeForEval(lm.tokenizer, readText(TEXT), 3000);
    const nll = async (kvCache?: "int8" | "int4") => (await perplexity(lm.model, ids, { ctx: 128, progress: null, kvCache })).nll;
    const [f32, int8, int4] = [await nll(), await nll("int8"), await nll("int4")];
    assert.ok(Math.abs(int8 - f32) / f32 <= 0.005, `${path.basename(spec)}: int8 ${int8} vs f32 ${f32}`);
    assert.ok(Math.abs(int4 - f32) >= Math.abs(int8 - f32), `${path.basename(spec)}: int4 ${int4} costs at least int8's ${int8}`);
  }
});

test("CLI: eval --kv-cache int8 reports the cache's bytes per token; inspect lists them per cache type", () => {
  const MAIN = path.join(FIXTURES, "..", "dist", "src", "cli", "main.js");
  const json = path.join(tmpDir(), "e.json");
  const r = spawnSync(process.execPath, [MAIN, "eval", "stories260K", "--text", TEXT, "--tokens", "500", "--ctx", "64", "--kv-cache", "int8", "--device", "cpu", "--json", json], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /KV cache int8: 340 bytes per token/);
  const e = JSON.parse(fs.readFileSync(json, "utf8"));
  assert.deepEqual(e.kv_cache, { dtype: "int8", bytes_per_token: 340 });
  // --json with no value: stdout holds the JSON alone (it pipes into jq), the summary goes to stderr.
  const piped = spawnSync(process.execPath, [MAIN, "eval", "stories260K", "--text", TEXT, "--tokens", "500", "--ctx", "64", "--kv-cache", "int8", "--device", "cpu", "--json"], { encoding: "utf8" });
  assert.equal(piped.status, 0, piped.stderr);
  assert.deepEqual(JSON.parse(piped.stdout).kv_cache, e.kv_cache);
  assert.match(piped.stderr, /KV cache int8: 340 bytes per token/);
  const i = spawnSync(process.execPath, [MAIN, "inspect", "stories260K", "--json"], { encoding: "utf8" });
  assert.equal(i.status, 0, i.stderr);
  assert.deepEqual(JSON.parse(i.stdout).kv_cache_bytes_per_token, { f32: 1280, bf16: 640, int8: 340, int4: 180 });
  const bad = spawnSync(process.execPath, [MAIN, "eval", "stories260K", "--text", TEXT, "--kv-cache", "int3"], { encoding: "utf8" });
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /int3/);
});

test("an unknown cache type or option name is refused from a script (it scored with every key zeroed); a group holding a NaN or ±Inf reads back as NaN (as a GPU store gives it), the others as they were", async () => {
  const lm = loadModel("stories260K", { weights: "f32" });
  const ids = Int32Array.from({ length: 40 }, (_, i) => 1 + ((i * 7) % 400));
  for (const kv of ["fp8", "INT8", 8])
    await assert.rejects(perplexity(lm.model, ids, { ctx: 32, kvCache: kv as never }), /--kv-cache .* is not a cache type[\s\S]*hint:|option kvCache is 8 \(a number\), not a string/);
  await assert.rejects(perplexity(lm.model, ids, { ctx: 32, kvcache: "int8" } as never), /perplexity\(\)[\s\S]*kvcache/);
  assert.throws(() => lm.model.forward(ids, undefined, { kvCache: "fp8" as never }), /--kv-cache fp8 is not a cache type/);
  assert.throws(() => roundTripRows(new Float32Array(4), 4, "int3" as never), /int3 is not a cache type/);
  for (const dtype of ["int8", "int4"] as const) {
    const x = Float32Array.from({ length: 3 * KV_GROUP }, (_, i) => (i === 3 ? NaN : i === KV_GROUP + 1 ? Infinity : 0.5));
    const r = roundTripRows(x.slice(), 3 * KV_GROUP, dtype);
    assert.ok(r.subarray(0, 2 * KV_GROUP).every(Number.isNaN), `${dtype}: the groups holding NaN and Inf read back as NaN`);
    const alone = roundTripRows(new Float32Array(KV_GROUP).fill(0.5), KV_GROUP, dtype);
    assert.deepEqual(r.subarray(2 * KV_GROUP), alone, `${dtype}: a finite group rounds as it does alone`);
  }
});
