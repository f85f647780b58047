/**
 * Reference-backend ops against direct float64 formulas on random inputs (odd sizes on purpose).
 * Whole-model agreement with PyTorch is in test/model/llama.test.ts.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { referenceBackend as B } from "../../src/backends/reference/index.js";
import { maxAbsDiff, seededRand } from "../helpers.js";

const rand = seededRand(7, Float32Array);

test("linear = x·Wᵀ + b", () => {
  const [M, K, N] = [5, 13, 7];
  const x = rand(M * K), w = rand(N * K), b = rand(N);
  const y = B.linear(B.upload(x, [M, K]), B.upload(w, [N, K]), B.upload(b, [N])).toArray();
  const ref = new Float64Array(M * N);
  for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) { let s = b[n]!; for (let k = 0; k < K; k++) s += x[m * K + k]! * w[n * K + k]!; ref[m * N + n] = s; }
  assert.ok(maxAbsDiff(y, ref) < 1e-5);
});

test("headLinear: each head through its group's matrix (float64 check), zero-width inputs", () => {
  const [T, H, G, K, N] = [3, 6, 2, 5, 4];
  const x = rand(T * H * K), w = rand(G * N * K);
  const y = B.headLinear(B.upload(x, [T, H, K]), B.upload(w, [G, N, K]));
  assert.deepEqual(y.shape, [T, H, N]);
  const want = new Float64Array(T * H * N);
  for (let t = 0; t < T; t++)
    for (let h = 0; h < H; h++)
      for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) want[(t * H + h) * N + n] += x[(t * H + h) * K + k]! * w[((h / (H / G)) | 0) * N * K + n * K + k]!;
  assert.ok(maxAbsDiff(y.toArray(), want) < 1e-6);
  assert.deepEqual(Array.from(B.headLinear(B.upload(new Float32Array(0), [T, H, 0]), B.upload(new Float32Array(0), [G, N, 0])).toArray()), new Array(T * H * N).fill(0));
  assert.throws(() => B.headLinear(B.upload(x, [T, H, K]), B.upload(new Float32Array(4 * N * K), [4, N, K])), /multiple/);
});

test("rmsnorm", () => {
  const [T, D] = [3, 11];
  const x = rand(T * D), w = rand(D);
  const y = B.rmsnorm(B.upload(x, [T, D]), B.upload(w, [D]), 1e-5).toArray();
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let i = 0; i < D; i++) ss += x[t * D + i]! ** 2;
    const r = Math.sqrt(ss / D + 1e-5);
    for (let i = 0; i < D; i++) assert.ok(Math.abs(y[t * D + i]! - (x[t * D + i]! / r) * w[i]!) < 1e-6);
  }
});

test("rope rotates pair (i, i+Dh/2) by position × invFreq[i], preserving norms", () => {
  const [T, H, Dh] = [4, 3, 10];
  const x = rand(T * H * Dh);
  const inv = Float64Array.from({ length: Dh / 2 }, (_, i) => 1 / 10000 ** ((2 * i) / Dh));
  const pos = Int32Array.from([0, 1, 7, 300]);
  const y = B.rope(B.upload(x, [T, H, Dh]), pos, inv).toArray();
  for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) for (let i = 0; i < Dh / 2; i++) {
    const o = (t * H + h) * Dh;
    const a = pos[t]! * inv[i]!;
    const re = x[o + i]! * Math.cos(a) - x[o + i + Dh / 2]! * Math.sin(a);
    const im = x[o + i]! * Math.sin(a) + x[o + i + Dh / 2]! * Math.cos(a);
    assert.ok(Math.abs(y[o + i]! - re) < 2e-5 && Math.abs(y[o + i + Dh / 2]! - im) < 2e-5, `t${t} h${h} i${i}`);
  }
});

function naiveAttention(q: Float32Array, k: Float32Array, v: Float32Array, T: number, S: number, H: number, Hkv: number, Dh: number, off: number, window: number | null): Float64Array {
  const out = new Float64Array(T * H * Dh);
  for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) {
    const kh = Math.floor(h / (H / Hkv));
    const qp = t + off;
    const allowed = (s: number) => s <= qp && (window === null || qp - s < window);
    const sc: number[] = [];
    for (let s = 0; s < S; s++) {
      let d = 0;
      for (let i = 0; i < Dh; i++) d += q[(t * H + h) * Dh + i]! * k[(s * Hkv + kh) * Dh + i]!;
      sc.push(allowed(s) ? d / Math.sqrt(Dh) : -Infinity);
    }
    const m = Math.max(...sc);
    const p = sc.map((x) => Math.exp(x - m));
    const z = p.reduce((a, b) => a + b, 0);
    for (let i = 0; i < Dh; i++) out[(t * H + h) * Dh + i] = p.reduce((acc, pi, s) => acc + (pi / z) * v[(s * Hkv + kh) * Dh + i]!, 0);
  }
  return out;
}

for (const [name, T, S, off, window] of [["prefill", 6, 6, 0, null], ["decode with cache", 2, 9, 7, null], ["sliding window", 7, 7, 0, 3]] as const) {
  test(`attention (GQA 6/2, ${name}) equals a float64 softmax(QKᵀ/√d)V`, () => {
    const [H, Hkv, Dh] = [6, 2, 5];
    const q = rand(T * H * Dh), k = rand(S * Hkv * Dh), v = rand(S * Hkv * Dh);
    const y = B.attention(B.upload(q, [T, H, Dh]), B.upload(k, [S, Hkv, Dh]), B.upload(v, [S, Hkv, Dh]), { scale: 1 / Math.sqrt(Dh), queryOffset: off, window }).toArray();
    assert.ok(maxAbsDiff(y, naiveAttention(q, k, v, T, S, H, Hkv, Dh, off, window)) < 1e-6);
  });
}

test("swiglu, add, embedding, cross-entropy", () => {
  const g = rand(9, 4), u = rand(9);
  const s = B.swiglu(B.upload(g, [3, 3]), B.upload(u, [3, 3])).toArray();
  for (let i = 0; i < 9; i++) assert.ok(Math.abs(s[i]! - (g[i]! / (1 + Math.exp(-g[i]!))) * u[i]!) < 1e-6);
  assert.deepEqual(B.add(B.upload(g, [9]), B.upload(u, [9])).toArray(), Float32Array.from(g, (x, i) => x + u[i]!));
  const table = rand(4 * 3);
  assert.deepEqual(B.embedding(B.upload(table, [4, 3]), Int32Array.of(2, 0)).toArray(), Float32Array.from([...table.subarray(6, 9), ...table.subarray(0, 3)]));
  assert.throws(() => B.embedding(B.upload(table, [4, 3]), Int32Array.of(4)), /outside the vocabulary of 4/);
  const logits = rand(2 * 5, 3);
  const ce = B.crossEntropy(B.upload(logits, [2, 5]), Int32Array.of(1, 4));
  for (let t = 0; t < 2; t++) {
    const row = [...logits.subarray(t * 5, t * 5 + 5)];
    const lse = Math.log(row.reduce((a, x) => a + Math.exp(x), 0));
    assert.ok(Math.abs(ce[t]! - (lse - row[[1, 4][t]!]!)) < 1e-9);
  }
});

test("batched decode: each sequence against its own cache, spare rows ignored, a short cache named", () => {
  const [H, Hkv, Dh] = [4, 2, 6];
  const positions = Int32Array.from([2, 5]);
  const q = rand(2 * H * Dh);
  const k = [rand(4 * Hkv * Dh), rand(6 * Hkv * Dh)], v = [rand(4 * Hkv * Dh), rand(6 * Hkv * Dh)];
  const opts = { scale: 0.4, positions, window: null };
  const y = B.attentionDecodeBatch(B.upload(q, [2, H, Dh]), k.map((x, b) => B.upload(x, [b ? 6 : 4, Hkv, Dh])), v.map((x, b) => B.upload(x, [b ? 6 : 4, Hkv, Dh])), opts).toArray();
  for (let b = 0; b < 2; b++) {
    const S = positions[b]! + 1;
    const one = B.attention(B.upload(q.subarray(b * H * Dh, (b + 1) * H * Dh), [1, H, Dh]), B.upload(k[b]!.subarray(0, S * Hkv * Dh), [S, Hkv, Dh]), B.upload(v[b]!.subarray(0, S * Hkv * Dh), [S, Hkv, Dh]), { scale: 0.4, queryOffset: S - 1, window: null }).toArray();
    assert.ok(maxAbsDiff(y.subarray(b * H * Dh, (b + 1) * H * Dh), one) < 1e-7, `sequence ${b}`);
  }
  const short = () => B.attentionDecodeBatch(B.upload(q, [2, H, Dh]), [B.upload(k[0]!, [4, Hkv, Dh]), B.upload(k[0]!, [4, Hkv, Dh])], [B.upload(v[0]!, [4, Hkv, Dh]), B.upload(v[0]!, [4, Hkv, Dh])], opts);
  assert.throws(short, /k cache 1 is \[4,2,6\], expected \[≥ 6, 2,6\]/);
});
