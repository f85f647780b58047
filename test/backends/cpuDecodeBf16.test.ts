/**
 * The native CPU decode attention over bf16 cache rows (native/cpu/decode_bf16.cpp, read through
 * NativeCpuBackend's *DecodeBatch from a bf16 row store): bit for bit the float32 kernel's result on
 * the rows widened to float32 (what the CPU cache held before), and within float tolerance of the
 * reference backend, over odd shapes, windows, both of the kernel's thread splits, and a prefill-sized
 * query block (the MHA entry's widened route).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { loadNativeCpu, NativeCpuBackend } from "../../src/backends/native/cpu.js";
import { HostBf16RowStore, widenBf16 } from "../../src/backends/native/hostRowStore.js";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { MlaError } from "../../src/errors.js";
import { maxAbsDiff } from "../helpers.js";

const lib = loadNativeCpu();
const skip = typeof lib === "string" ? `native CPU library not loaded: ${lib}` : false;
const cpu = () => new NativeCpuBackend(lib as Exclude<typeof lib, string>);

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32) * 2 - 1;
}

/** n random values and their bf16 bits (the values a bf16 cache holds). */
function bf16Rows(n: number, r: () => number): Uint16Array {
  const f = Float32Array.from({ length: n }, r);
  return Uint16Array.from(new Uint32Array(f.buffer), (u) => u >>> 16);
}

const sameBits = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

// [T, S, H, Hkv, Dh, Dv]: a lone key; a split over threads (one KV head: fewer tasks than threads);
// GQA; odd head dims; T > 8 (the prefill kernel on widened rows).
const MHA: [number, number, number, number, number, number][] = [[1, 1, 4, 2, 8, 8], [1, 2000, 4, 1, 64, 64], [1, 700, 8, 2, 16, 24], [3, 300, 6, 6, 32, 32], [1, 70, 3, 3, 5, 7], [12, 200, 4, 2, 32, 32]];

test("mla_cpu_attention_bf16_kv equals mla_cpu_attention on the widened rows, bit for bit", { skip }, () => {
  const L = lib as Exclude<typeof lib, string>;
  const r = rng(7);
  for (const [T, S, H, Hkv, Dh, Dv] of MHA)
    for (const window of [0, 50]) {
      const q = Float32Array.from({ length: T * H * Dh }, r);
      const [k, v] = [bf16Rows(S * Hkv * Dh, r), bf16Rows(S * Hkv * Dv, r)];
      const [want, got] = [new Float32Array(T * H * Dv), new Float32Array(T * H * Dv)];
      assert.equal(L.attention(q, widenBf16(k), widenBf16(v), want, T, S, H, Hkv, Dh, Dv, 0.125, S - T, window), 0);
      assert.equal(L.attentionBf16(q, k, v, got, T, S, H, Hkv, Dh, Dv, 0.125, S - T, window), 0);
      assert.ok(sameBits(got, want), `T ${T} S ${S} H ${H} Hkv ${Hkv} Dh ${Dh} Dv ${Dv} window ${window}: max |Δ| ${maxAbsDiff(got, want)}`);
    }
});

test("mla_cpu_latent_attention_bf16 equals mla_cpu_latent_attention on the widened rows, bit for bit", { skip }, () => {
  const L_ = lib as Exclude<typeof lib, string>;
  const r = rng(11);
  // [T, S, H, Hkv, Dr, L]: mha26m-like (480-wide latent), no rope pairs, no latent, a split over threads.
  for (const [T, S, H, Hkv, Dr, L] of [[1, 1, 4, 2, 4, 8], [1, 900, 12, 4, 16, 480], [2, 513, 4, 1, 0, 33], [1, 64, 4, 2, 2, 0], [1, 3000, 6, 6, 8, 96]] as const)
    for (const window of [0, 100]) {
      const [qr, qc] = [Float32Array.from({ length: T * H * Dr }, r), Float32Array.from({ length: T * H * L }, r)];
      const [kr, c] = [bf16Rows(S * Hkv * Dr, r), bf16Rows(S * L, r)];
      const [want, got] = [new Float32Array(T * H * L), new Float32Array(T * H * L)];
      assert.equal(L_.latentAttention(qr, widenBf16(kr), qc, widenBf16(c), want, T, S, H, Hkv, Dr, L, 0.1, S - T, window), 0);
      assert.equal(L_.latentAttentionBf16(qr, kr, qc, c, got, T, S, H, Hkv, Dr, L, 0.1, S - T, window), 0);
      assert.ok(sameBits(got, want), `T ${T} S ${S} H ${H} Hkv ${Hkv} Dr ${Dr} L ${L} window ${window}: max |Δ| ${maxAbsDiff(got, want)}`);
    }
});

test("the batched decode over bf16 row stores matches the reference backend on the widened rows", { skip }, () => {
  const b = cpu();
  const ref = new ReferenceBackend();
  const r = rng(3);
  const [H, Hkv, Dh, Dr, L] = [6, 2, 16, 4, 40];
  const positions = Int32Array.of(0, 37, 300);
  // One store per sequence and part, with spare rows past each position (as a cache's own buffer).
  const fill = (shape: number[], rows: number) => {
    const s = new HostBf16RowStore(b, shape);
    s.append(b.upload(Float32Array.from({ length: rows * shape.reduce((x, y) => x * y, 1) }, r), [rows, ...shape]));
    s.reserve(5);
    return s;
  };
  const ks = [...positions].map((p) => fill([Hkv, Dh], p + 1));
  const vs = [...positions].map((p) => fill([Hkv, Dh], p + 1));
  const q = b.upload(Float32Array.from({ length: positions.length * H * Dh }, r), [positions.length, H, Dh]);
  const opts = { scale: 0.25, positions, window: 100 };
  const got = b.attentionDecodeBatch(q, ks.map((s) => s.storage), vs.map((s) => s.storage), opts).toArray();
  const want = ref.attentionDecodeBatch(ref.upload(q.toArray(), q.shape), ks.map((s) => ref.upload(s.view([Hkv, Dh]).toArray(), [s.rows, Hkv, Dh])), vs.map((s) => ref.upload(s.view([Hkv, Dh]).toArray(), [s.rows, Hkv, Dh])), opts).toArray();
  assert.ok(maxAbsDiff(got, want) < 1e-5, `attention: max |Δ| ${maxAbsDiff(got, want)}`);

  const krs = [...positions].map((p) => fill([Hkv, Dr], p + 1));
  const cs = [...positions].map((p) => fill([L], p + 1));
  const qr = b.upload(Float32Array.from({ length: positions.length * H * Dr }, r), [positions.length, H, Dr]);
  const qc = b.upload(Float32Array.from({ length: positions.length * H * L }, r), [positions.length, H, L]);
  const lgot = b.latentAttentionDecodeBatch(qr, krs.map((s) => s.storage), qc, cs.map((s) => s.storage), opts).toArray();
  const lwant = ref.latentAttentionDecodeBatch(ref.upload(qr.toArray(), qr.shape), krs.map((s) => ref.upload(s.view([Hkv, Dr]).toArray(), [s.rows, Hkv, Dr])), ref.upload(qc.toArray(), qc.shape), cs.map((s) => ref.upload(s.view([L]).toArray(), [s.rows, L])), opts).toArray();
  assert.ok(maxAbsDiff(lgot, lwant) < 1e-5, `latent attention: max |Δ| ${maxAbsDiff(lgot, lwant)}`);
});

test("a bf16 row store rounds as kvQuant's round trip, widens exactly, and refuses rows of another shape", { skip }, () => {
  const b = cpu();
  const s = new HostBf16RowStore(b, [2, 3]);
  const x = Float32Array.of(1, 1 + 2 ** -8, 1 + 3 * 2 ** -9, -0, Infinity, NaN, 3.14159, -1e-40, 65504, 1e38, -2.5, 7);
  s.append(b.upload(x, [2, 2, 3]));
  const back = s.view([2, 3]).toArray();
  // Round to nearest even at bf16's 8 significant bits: 1 + 2^-8 is a tie (→ 1), 1 + 3·2^-9 rounds up.
  assert.deepEqual([back[0], back[1], back[2]], [1, 1, 1 + 2 ** -7]);
  assert.ok(Object.is(back[3], -0) && back[4] === Infinity && Number.isNaN(back[5]));
  assert.equal(s.heldBytes, 16 * 6 * 2, "room for 16 rows of 6 bf16 values");
  assert.throws(() => s.append(b.upload(new Float32Array(5), [1, 5])), (e: unknown) => e instanceof MlaError && /cannot append \[1,5\]/.test(e.message));
  assert.throws(() => b.createRowStore([4], "int8"), (e: unknown) => e instanceof MlaError && /no int8 row store/.test(e.message));
});
