/**
 * Batched decode (LlamaModel.decodeBatch) equals decoding each sequence on its own, for MHA/GQA and
 * for absorbed MLA, with sequences of different lengths; cloned caches decode like their originals.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { loadModel } from "../../src/model/llama.js";
import { convertFixture } from "../convert/helpers.js";
import { absorbedCheaper } from "../../src/model/attention/mla.js";
import { MODELS, maxAbsDiff } from "../helpers.js";
import { MlaError } from "../../src/errors.js";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import type { Tensor } from "../../src/tensor/tensor.js";

const prompts = [Int32Array.of(1, 400, 300, 200), Int32Array.of(1, 55), Int32Array.of(1, 9, 8, 7, 6, 5, 4, 3, 2, 10, 11)];

for (const kind of ["gqa", "mla"] as const) {
  test(`decodeBatch equals per-sequence decode (${kind}, sequences of lengths ${prompts.map((p) => p.length)})`, async () => {
    const spec = kind === "gqa" ? path.join(MODELS, "stories260K") : await convertFixture("stories260K", { rank: 4, ropePairs: 2, ropeStrategy: "uniform", device: "reference" });
    const { model, config } = loadModel(spec);
    const V = config.vocabSize;
    const solo = prompts.map((p) => {
      const c = model.newCache();
      model.forward(p, c);
      return c;
    });
    const batch = solo.map((c) => c.clone());
    let next = Int32Array.of(17, 23, 42);
    for (let step = 0; step < 5; step++) {
      const got = model.decodeBatch(next, batch).toArray();
      assert.equal(got.length, prompts.length * V);
      const rows = solo.map((c, i) => model.forward(next.subarray(i, i + 1), c, { absorb: true }).toArray());
      rows.forEach((want, i) => {
        const e = maxAbsDiff(got.subarray(i * V, (i + 1) * V), want);
        assert.ok(e <= 1e-4, `step ${step}, sequence ${i}: max |Δ logits| ${e}`);
      });
      assert.deepEqual(batch.map((c) => c.length), solo.map((c) => c.length));
      next = Int32Array.from(rows, (r, i) => (r.indexOf(Math.max(...r)) + i) % V);
    }
  });
}

test("decodeBatch rejects a cache passed twice and a token count that does not match", () => {
  const { model } = loadModel(path.join(MODELS, "stories260K"));
  const c = model.newCache();
  assert.throws(() => model.decodeBatch(Int32Array.of(1, 2), [c, c]), (e: unknown) => e instanceof MlaError && /same cache appears twice/.test(e.message));
  assert.throws(() => model.decodeBatch(Int32Array.of(1, 2), [c]), (e: unknown) => e instanceof MlaError && /2 tokens for 1 caches/.test(e.message));
});

test("a cloned cache is independent of its original", () => {
  const { model } = loadModel(path.join(MODELS, "stories260K"));
  const a = model.newCache();
  model.forward(Int32Array.of(1, 5, 6), a);
  const b = a.clone();
  const la = model.forward(Int32Array.of(7), a).toArray();
  model.forward(Int32Array.of(100), a); // moves a on; b must not see it
  const lb = model.forward(Int32Array.of(7), b).toArray();
  assert.ok(maxAbsDiff(la, lb) === 0);
  assert.equal(a.length, 5);
  assert.equal(b.length, 4);
});

test("MLA without rope pairs (R = 0: zero-wide rope keys) decodes, alone and batched", async () => {
  const { model, config } = loadModel(await convertFixture("stories260K", { rank: 4, ropePairs: 0, ropeStrategy: "uniform", device: "reference" }));
  const V = config.vocabSize;
  const p = Int32Array.of(1, 400, 300, 200, 9);
  const full = model.forward(p).toArray();
  const a = model.newCache(), b = model.newCache();
  model.forward(p.subarray(0, 4), a);
  model.forward(p.subarray(0, 2), b);
  assert.ok(maxAbsDiff(model.forward(p.subarray(4), a.clone(), { absorb: true }).toArray(), full.subarray(4 * V)) < 1e-4);
  const got = model.decodeBatch(Int32Array.of(p[4]!, p[2]!), [a, b]).toArray();
  assert.ok(maxAbsDiff(got.subarray(0, V), full.subarray(4 * V)) < 1e-4);
  assert.ok(maxAbsDiff(got.subarray(V), full.subarray(2 * V, 3 * V)) < 1e-4);
  assert.equal(a.length, 5);
});

test("cloning a cache frees the temporary tensors it copies the rows through (none left for the collector)", () => {
  // Counts the tensors the cache's copy makes and frees: on the GPU each was a float32 copy of a whole
  // bf16 cache part, and a benchmark cloning one prefilled cache 127 times ran out of memory.
  class Counting extends ReferenceBackend {
    live = 0;
    override upload(data: Float32Array | Float64Array, shape: readonly number[]): Tensor {
      this.live++;
      return super.upload(data, shape);
    }
    override free(): void {
      this.live--;
    }
  }
  const backend = new Counting();
  const { model } = loadModel(path.join(MODELS, "stories260K"), { backend });
  const a = model.newCache();
  model.forward(Int32Array.of(1, 5, 6), a);
  const before = backend.live;
  a.clone();
  assert.equal(backend.live, before);
});

test("a cache made with a capacity holds it up front, decodes like a growing one, and its clones keep the capacity; a bad capacity is refused", () => {
  const { model } = loadModel(path.join(MODELS, "stories260K"));
  const grown = model.newCache();
  const sized = model.newCache("f32", { capacity: 40 });
  const p = Int32Array.of(1, 5, 6, 7, 9);
  const a = model.forward(p, grown).toArray(), b = model.forward(p, sized).toArray();
  assert.equal(maxAbsDiff(a, b), 0);
  for (const t of [11, 12, 13]) assert.equal(maxAbsDiff(model.forward(Int32Array.of(t), grown).toArray(), model.forward(Int32Array.of(t), sized).toArray()), 0);
  assert.equal(sized.capacity, 40);
  assert.equal(sized.clone().capacity, 40, "a clone keeps the capacity");
  // float64 rows (the f64 reference backend) land in the reserved room without reallocating it.
  const f64 = loadModel(path.join(MODELS, "stories260K"), { backend: new ReferenceBackend("f64") }).model;
  const c64 = f64.newCache("f32", { capacity: 40 });
  f64.forward(p, c64);
  assert.equal(c64.clone().clone().capacity, 40);
  assert.equal(maxAbsDiff(model.forward(Int32Array.of(4), sized.clone()).toArray(), model.forward(Int32Array.of(4), grown.clone()).toArray()), 0);
  assert.throws(() => model.newCache("f32", { capacity: -1 }), (e: unknown) => e instanceof MlaError && /capacity/.test(e.message) && /hint: pass the longest sequence/.test(e.message));
});

test("a device row store: an exact reserve holds that many rows without moving; growth leaves up to 1024 spare rows (a prefill is followed by decode steps that do not move it)", async () => {
  const { DeviceRowStore } = await import("../../src/backends/native/cuda.js");
  // A stand-in for the CUDA backend's memory calls, counting allocations.
  let allocations = 0;
  const fake = {
    empty: (shape: number[]) => {
      allocations++;
      return { shape, size: shape.reduce((x, y) => x * y, 1) };
    },
    copyElements: () => {},
    free: () => {},
  };
  const exact = new DeviceRowStore(fake as never, [4], "f32");
  exact.reserve(100, true);
  assert.equal(exact.capacity, 100);
  for (let i = 0; i < 100; i++) exact.reserve(1), exact.commit(1);
  assert.equal(allocations, 1, "no move within the capacity");
  const grown = new DeviceRowStore(fake as never, [4], "f32");
  grown.reserve(16384);
  grown.commit(16384);
  assert.equal(grown.capacity, 16384 + 1024);
  const before = allocations;
  for (let i = 0; i < 1024; i++) grown.reserve(1), grown.commit(1);
  assert.equal(allocations, before, "1024 decode steps after a long prefill without a move");
  grown.reserve(1);
  assert.equal(grown.capacity, 17409 + 1024);
  const small = new DeviceRowStore(fake as never, [4], "f32");
  small.reserve(5);
  assert.equal(small.capacity, 21, "short caches get at least 16 spare rows");
  small.commit(5);
  small.reserve(30);
  assert.equal(small.capacity, 70, "below 1024 rows, growth doubles what is needed");
});

test("a device row store copies another's rows device to device in their stored dtype (a bf16 clone makes no float32 copy) and keeps its capacity", async () => {
  const { DeviceRowStore } = await import("../../src/backends/native/cuda.js");
  const made: { dtype: number; size: number }[] = [];
  const copies: number[] = [];
  const fake = {
    empty: (shape: number[], _what: string, dtype = 0) => {
      const t = { shape, size: shape.reduce((x, y) => x * y, 1), dtype };
      made.push(t);
      return t;
    },
    copyElements: (_d: unknown, _do: number, _s: unknown, _so: number, n: number) => copies.push(n),
    free: () => {},
    training: { cast: () => {} },
    viewOf: () => ({ dispose: () => {} }),
  };
  const src = new DeviceRowStore(fake as never, [2, 8], "bf16");
  src.reserve(300, true);
  src.commit(120);
  made.length = 0;
  const dst = new DeviceRowStore(fake as never, [2, 8], "bf16");
  dst.copyRowsFrom(src);
  assert.equal(dst.rows, 120);
  assert.equal(dst.capacity, 300);
  assert.deepEqual(made.map((t) => t.size), [300 * 16], "one allocation, the capacity's");
  assert.deepEqual(copies, [120 * 16], "one copy of the rows");
  assert.throws(() => dst.copyRowsFrom(src), /already holds 120 rows/);
});

test("a prompt's later chunk on a filled MLA cache takes the plain form where it costs less, and both forms give the whole prompt's logits", async () => {
  const { model, config } = loadModel(await convertFixture("stories260K", { rank: 4, ropePairs: 1, ropeStrategy: "uniform", device: "reference" }));
  const V = config.vocabSize;
  const p = Int32Array.of(1, 400, 300, 200, 9, 57, 22, 301, 5, 77);
  const full = model.forward(p).toArray();
  for (const absorb of [undefined, true, false]) {
    const cache = model.newCache();
    model.forward(p.subarray(0, 4), cache);
    const rest = model.forward(p.subarray(4), cache, absorb === undefined ? {} : { absorb }).toArray();
    assert.ok(maxAbsDiff(rest, full.subarray(4 * V)) < 1e-4, `absorb ${absorb}`);
    assert.equal(cache.length, p.length);
  }
  // At the llama2-7b shape with the paper's split (H = Hkv = 32, Dh 128, R 8, L 2048), with the GPU's
  // weight on the absorbed loop: one query, or a few on a long cache, attend in the latent; a prompt
  // chunk on a short cache up-projects it. Unweighted (the CPU), absorbed wins more.
  const shape = { ...config, heads: 32, kvHeads: 32, headDim: 128 };
  assert.equal(absorbedCheaper(shape, 2048, 8, 1, 16384, 8), true);
  assert.equal(absorbedCheaper(shape, 2048, 8, 7, 16384, 8), true);
  assert.equal(absorbedCheaper(shape, 2048, 8, 512, 1024, 8), false);
  assert.equal(absorbedCheaper(shape, 2048, 8, 124, 1024, 8), false);
  assert.equal(absorbedCheaper(shape, 2048, 8, 64, 1024), true);
  assert.equal(absorbedCheaper(shape, 2048, 8, 512, 1024), false);
});

test("weightsChanged() frees the absorbed MLA matrices it drops, never the weights they view", async () => {
  const spec = await convertFixture("stories260K", { rank: 4, ropePairs: 2, ropeStrategy: "uniform", device: "reference" });
  const { model } = loadModel(spec);
  const decodeOnce = () => {
    const c = model.newCache();
    model.forward(prompts[0]!, c);
    return model.forward(Int32Array.of(17), c, { absorb: true }).toArray();
  };
  const before = decodeOnce();
  const weights = new Set<unknown>();
  for (const layer of model.weights.layers) for (const t of Object.values(layer.attn)) if (t && typeof t === "object" && "storage" in t) weights.add((t as Tensor).storage);
  const freed: unknown[] = [];
  const free = model.backend.free.bind(model.backend);
  model.backend.free = (t: Tensor) => {
    freed.push(t.storage);
    free(t);
  };
  try {
    model.weightsChanged();
  } finally {
    model.backend.free = free;
  }
  // Per layer of the run-time form: the rope query rows and the nope query rows, and the transposed kUp (the reference backend has no headLinearKN).
  assert.ok(freed.length >= 3 * model.config.layers, `${freed.length} tensors freed`);
  assert.ok(!freed.some((s) => weights.has(s)), "a weight's storage was freed");
  assert.ok(maxAbsDiff(decodeOnce(), before) === 0, "the rebuilt matrices decode as before");
});

/** The reference backend with a headLinearKN (w [G, K, N]) that counts its calls: the transpose through headLinear, so the same bits. */
class KMajorBackend extends ReferenceBackend {
  calls = 0;
  headLinearKN(x: Tensor, w: Tensor): Tensor {
    this.calls++;
    const [G, K, N] = w.shape as [number, number, number];
    const a = w.toArray(), t = new Float32Array(a.length);
    for (let g = 0; g < G; g++) for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) t[(g * N + n) * K + k] = a[(g * K + k) * N + n]!;
    const wt = this.upload(t, [G, N, K]);
    const y = this.headLinear(x, wt);
    wt.dispose();
    return y;
  }
}

test("on a backend with headLinearKN the run-time absorption reads k_up_proj as stored (no transposed copy, none freed with the weights) and decodes as through the transpose", async () => {
  const spec = await convertFixture("stories260K", { rank: 4, ropePairs: 2, ropeStrategy: "uniform", device: "reference" });
  const plain = loadModel(spec).model;
  const backend = new KMajorBackend();
  const { model } = loadModel(spec, { backend });
  const decode = (m: typeof model) => {
    const caches = prompts.map((p) => {
      const c = m.newCache();
      m.forward(p, c);
      return c;
    });
    return [m.decodeBatch(Int32Array.of(17, 23, 42), caches).toArray(), m.forward(Int32Array.of(5), caches[0]!, { absorb: true }).toArray()];
  };
  const want = decode(plain);
  const got = decode(model);
  assert.ok(backend.calls >= 2 * model.config.layers, `${backend.calls} headLinearKN calls`);
  got.forEach((g, i) => assert.equal(maxAbsDiff(g, want[i]!), 0, `output ${i}`));
  // What headLinearKN read is k_up_proj's own storage: no transposed copy was made.
  const readKUp = new Set<unknown>();
  const kn = backend.headLinearKN.bind(backend);
  backend.headLinearKN = (x: Tensor, w: Tensor) => (readKUp.add(w.storage), kn(x, w));
  decode(model);
  backend.headLinearKN = kn;
  assert.deepEqual([...readKUp], model.weights.layers.map((l) => (l.attn as { kUp: Tensor }).kUp.storage));
  const weights = new Set<unknown>();
  for (const layer of model.weights.layers) for (const t of Object.values(layer.attn)) if (t && typeof t === "object" && "storage" in t) weights.add((t as Tensor).storage);
  const free = model.backend.free.bind(model.backend);
  const freed: unknown[] = [];
  model.backend.free = (t: Tensor) => {
    freed.push(t.storage);
    free(t);
  };
  model.weightsChanged();
  model.backend.free = free;
  assert.ok(freed.length > 0, "the absorbed matrices were freed");
  assert.ok(!freed.some((s) => weights.has(s)), "a weight's storage was freed");
});
