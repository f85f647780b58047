/**
 * A bf16 decode cache on the native CPU backend holds its rows as bf16 (half the bytes of the float32
 * rows it held before) and decodes bit for bit as before: compared with the same backend made to hold
 * them as float32 (FloatRowsCpu: no row store, kvCache.ts's RowBuffer after its bf16 round trip), for
 * MHA/GQA and absorbed MLA, through decodeBatch, clone/truncate, and generate.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { loadNativeCpu, NativeCpuBackend } from "../../src/backends/native/cpu.js";
import { loadModel, type LlamaModel } from "../../src/model/llama.js";
import { heldBytesPerToken, heldRows, type DecodeCache } from "../../src/model/kvCache.js";
import { generateBatch } from "../../src/model/generate.js";
import { convertFixture } from "../convert/helpers.js";
import { MODELS } from "../helpers.js";

const lib = loadNativeCpu();
const skip = typeof lib === "string" ? `native CPU library not loaded: ${lib}` : false;
type Lib = Exclude<typeof lib, string>;

/** The native CPU backend as it was before: every cache's rows on the host as float32. */
class FloatRowsCpu extends NativeCpuBackend {
  override storesRowsOf(): boolean {
    return false;
  }
}

const sameBits = (a: Float32Array | Float64Array, b: Float32Array | Float64Array) => a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

/** Calls of the bf16 kernels (the decode must read the stored rows, not a widened copy of them). */
const bf16Calls = { attention: 0, latent: 0 };

async function models(kind: "gqa" | "mla"): Promise<[LlamaModel, LlamaModel]> {
  const spec = kind === "gqa" ? path.join(MODELS, "stories260K") : await convertFixture("stories260K", { rank: 4, ropePairs: 2, ropeStrategy: "uniform", device: "reference" });
  const L = lib as Lib;
  const counted: Lib = { ...L, attentionBf16: (...a) => (bf16Calls.attention++, L.attentionBf16(...a)), latentAttentionBf16: (...a) => (bf16Calls.latent++, L.latentAttentionBf16(...a)) };
  return [loadModel(spec, { backend: new NativeCpuBackend(counted) }).model, loadModel(spec, { backend: new FloatRowsCpu(L) }).model];
}

/** Greedy steps of decodeBatch over `caches` from `next`; every step's logits. */
function decode(model: LlamaModel, caches: DecodeCache[], next: Int32Array, steps: number): Float32Array[] {
  const out: Float32Array[] = [];
  const V = model.config.vocabSize;
  for (let s = 0; s < steps; s++) {
    const logits = Float32Array.from(model.decodeBatch(next, caches).toArray());
    out.push(logits);
    next = Int32Array.from(caches, (_, i) => {
      const row = logits.subarray(i * V, (i + 1) * V);
      return row.indexOf(Math.max(...row));
    });
  }
  return out;
}

const prompts = [Int32Array.of(1, 400, 300, 200, 17, 99, 5), Int32Array.of(1, 55)];

for (const kind of ["gqa", "mla"] as const) {
  test(`cpu bf16 cache (${kind}): rows held as bf16, decode bit for bit as float32-held rows, clone and truncate too`, { skip }, async () => {
    const [bf, fl] = await models(kind);
    const make = (m: LlamaModel) =>
      prompts.map((p) => {
        const c = m.newCache("bf16", { capacity: 40 });
        m.prefill(p, c);
        return c;
      });
    const [a, b] = [make(bf), make(fl)];
    // Half the bytes, as heldRows says (the float32-held backend says why it is wider).
    a.forEach((c, i) => assert.equal(c.heldBytes * 2, b[i]!.heldBytes));
    assert.equal(heldBytesPerToken(bf.config, bf.backend, "bf16") * 2, heldBytesPerToken(fl.config, fl.backend, "bf16"));
    assert.equal(heldRows(bf.backend, "bf16").why, null);
    assert.match(heldRows(bf.backend, "int8").why ?? "", /holds int8 cache rows on the host, as float32/);
    assert.equal(a[0]!.heldBytes, a[0]!.capacity * heldBytesPerToken(bf.config, bf.backend, "bf16"));

    // Clones of a prefix (a prefix cache's copy) and the truncated originals, decoded together.
    const batch = (caches: DecodeCache[]) => [...caches, caches[0]!.clone({ tokens: 4, capacity: 30 })];
    const [ca, cb] = [batch(a), batch(b)];
    const next = Int32Array.of(17, 23, 42);
    const calls = { ...bf16Calls };
    const same = (steps: number, what: string) => {
      const [x, y] = [decode(bf, ca, next, steps), decode(fl, cb, next, steps)];
      x.forEach((l, s) => assert.ok(sameBits(l, y[s]!), `${what}, step ${s}: the logits differ`));
    };
    same(6, "prefilled caches and a clone of a prefix");
    const read = kind === "gqa" ? bf16Calls.attention - calls.attention : bf16Calls.latent - calls.latent;
    assert.equal(read, 6 * bf.config.layers * ca.length, "one bf16 kernel call per step, layer and sequence");
    for (const c of [...ca, ...cb]) c.truncate(3);
    same(3, "after truncate");
    assert.deepEqual(ca.map((c) => c.length), cb.map((c) => c.length));
    // The clone kept its own rows: the original moved on without it.
    assert.equal(ca[2]!.length, 6);
    for (const c of [...ca, ...cb]) c.dispose();
    assert.equal(ca[0]!.heldBytes, 0);
  });
}

test("generate with a bf16 cache on the cpu: the same tokens as float32-held rows", { skip }, async () => {
  const [bf, fl] = await models("mla");
  const opts = { maxTokens: 12, kvCache: "bf16" as const, stopAtEos: false };
  const [x, y] = [generateBatch(bf, [[1, 400, 300], [1, 9, 8, 7]], opts), generateBatch(fl, [[1, 400, 300], [1, 9, 8, 7]], opts)];
  assert.deepEqual(x.sequences.map((s) => s.ids), y.sequences.map((s) => s.ids));
  assert.deepEqual(x.sequences.map((s) => s.cacheBytes), y.sequences.map((s) => s.cacheBytes));
});
