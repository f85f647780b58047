/**
 * Every forward op of the Backend interface on each CPU backend (the TypeScript reference in float32
 * and float64, the native CPU library) against the float64 loops of ./float64Ops.ts: odd sizes that
 * leave remainders in the vectorized and tiled loops, both native attention kernels (≤ 8 query rows:
 * decode_attention.cpp; more: the prefill kernel, with and without a compile-time head dim), and edge
 * values (rows that see no key, zero rows, −∞ logits, saturating SwiGLU gates, long positions).
 * Backward ops are checked against finite differences in cpuBackward.test.ts; docs/testing.md has
 * the table of which test covers which op.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { cpuBackends } from "./cpuBackends.js";
import { addCovariance, addPairNorms } from "../../src/ropeSelect/calibrate.js";
import { linearMany, type AttentionOptions } from "../../src/tensor/backend.js";
import { attentionOf } from "../../src/tensor/sequences.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { maxRelDiff, seededRand } from "../helpers.js";
import * as F from "./float64Ops.js";

/** Each CPU backend and the relative error (to the largest reference magnitude) its storage allows. */
const backends = cpuBackends({ f32: 2e-6, f64: 1e-12, native: 5e-6 });

/** Float32 values (every backend sees the same inputs, and float64 formulas see them exactly). */
const rand = seededRand(23, Float32Array);

for (const { name, make, tol, skip } of backends) {
  const opts = { skip };
  const close = (label: string, got: Tensor | ArrayLike<number>, want: ArrayLike<number>, t = tol) => {
    const g = "toArray" in got ? got.toArray() : got;
    assert.equal(g.length, want.length, `${label}: ${g.length} values, expected ${want.length}`);
    for (let i = 0; i < g.length; i++) assert.ok(Number.isFinite(g[i]!) === Number.isFinite(want[i]!), `${label}: [${i}] = ${g[i]}, expected ${want[i]}`);
    const e = maxRelDiff(g, want);
    assert.ok(e <= t, `${label}: relative error ${e.toExponential(2)} > ${t}`);
  };

  test(`${name}: linear (with and without bias, 3-D x, linearMany) and headLinear equal float64 sums`, opts, () => {
    const B = make();
    // K off the 8/16-lane vectors and M, N off the 4×4 tiles; K = 0 leaves the bias.
    for (const [M, K, N] of [[1, 1, 1], [3, 5, 7], [5, 17, 9], [13, 33, 6], [4, 16, 4], [6, 0, 3], [2, 100, 130]] as const) {
      const x = rand(M * K), w = rand(N * K), b = rand(N);
      const tag = `[${M},${K}]·[${N},${K}]ᵀ`;
      close(`linear ${tag}`, B.linear(B.upload(x, [M, K]), B.upload(w, [N, K])), F.linear(x, w, null, M, K, N));
      close(`linear+bias ${tag}`, B.linear(B.upload(x, [M, K]), B.upload(w, [N, K]), B.upload(b, [N])), F.linear(x, w, b, M, K, N));
      if (M % 2 === 0) close(`linear 3-D ${tag}`, B.linear(B.upload(x, [2, M / 2, K]), B.upload(w, [N, K])), F.linear(x, w, null, M, K, N));
      const w2 = rand(3 * K);
      const [y1, y2] = linearMany(B, B.upload(x, [M, K]), [B.upload(w, [N, K]), B.upload(w2, [3, K])], [B.upload(b, [N])]);
      close(`linearMany ${tag} (biased)`, y1!, F.linear(x, w, b, M, K, N));
      close(`linearMany ${tag} (no bias)`, y2!, F.linear(x, w2, null, M, K, 3));
    }
    for (const [T, H, G, K, N] of [[3, 6, 2, 5, 4], [1, 4, 1, 17, 9], [5, 3, 3, 8, 1], [2, 8, 4, 33, 12]] as const) {
      const x = rand(T * H * K), w = rand(G * N * K);
      close(`headLinear T${T} H${H}/${G} K${K} N${N}`, B.headLinear(B.upload(x, [T, H, K]), B.upload(w, [G, N, K])), F.headLinear(x, w, T, H, G, K, N));
    }
  });

  test(`${name}: rmsnorm (a zero row, a row of large values, D = 1), add and scale`, opts, () => {
    const B = make();
    for (const [T, D] of [[3, 11], [4, 1], [5, 33], [2, 1000]] as const) {
      const x = rand(T * D, 3), w = rand(D);
      x.fill(0, D, 2 * D); // row 1: all zeros (rms = √eps, output zeros)
      if (T > 2) for (let i = 2 * D; i < 3 * D; i++) x[i] = x[i]! * 1e3;
      close(`rmsnorm [${T},${D}]`, B.rmsnorm(B.upload(x, [T, D]), B.upload(w, [D]), 1e-5), F.rmsnorm(x, w, 1e-5, T, D));
      const o = rand(T * D);
      close(`add [${T},${D}]`, B.add(B.upload(x, [T, D]), B.upload(o, [T, D])), Float64Array.from(x, (v, i) => v + o[i]!));
      close(`scale [${T},${D}]`, B.scale(B.upload(x, [T, D]), -0.37), Float64Array.from(x, (v) => v * -0.37));
    }
  });

  test(`${name}: rope and ropeBackward (full, partial, per-head frequencies, no rotary dims, long and negative positions)`, opts, () => {
    const B = make();
    for (const [T, H, Dh, rd, perHead, p0] of [[3, 2, 8, 8, false, 0], [5, 3, 10, 10, false, 2], [7, 4, 16, 8, false, 3], [6, 4, 12, 4, true, 0], [3, 2, 6, 0, false, 0], [4, 2, 64, 64, false, 30000], [3, 1, 6, 6, true, -5]] as const) {
      const x = rand(T * H * Dh);
      const positions = Int32Array.from({ length: T }, (_, i) => p0 + i * 3);
      const invFreq = Float64Array.from({ length: (perHead ? H : 1) * (rd / 2) }, (_, i) => 10000 ** (-(2 * (i % (rd / 2))) / rd) * (1 + 0.1 * Math.floor(i / (rd / 2))));
      const tag = `[${T},${H},${Dh}] rd${rd}${perHead ? " per-head" : ""} p0 ${p0}`;
      close(`rope ${tag}`, B.rope(B.upload(x, [T, H, Dh]), positions, invFreq, rd), F.rope(x, positions, invFreq, T, H, Dh, rd));
      // The backward turns by the opposite angle.
      close(`ropeBackward ${tag}`, B.ropeBackward(B.upload(x, [T, H, Dh]), positions, invFreq, rd), F.rope(x, positions.map((p) => -p), invFreq, T, H, Dh, rd));
    }
  });

  test(`${name}: attention (GQA, Dv ≠ Dh, cache offset, window, rows that see no key, both native kernels) equals a float64 softmax; bf16 is ignored; batch through attentionOf`, opts, () => {
    const B = make();
    // [T, S, H, Hkv, Dh, Dv, off, window]: T ≤ 8 takes the native decode kernel, more the prefill
    // kernel (Dh = Dv ∈ {8,16,32,64,128} compiled per head dim, others the generic loop); off < 0 leaves
    // the first rows without a visible key (zeros).
    for (const [T, S, H, Hkv, Dh, Dv, off, win] of [[1, 1, 1, 1, 1, 1, 0, null], [6, 6, 6, 2, 5, 5, 0, null], [2, 9, 6, 2, 5, 3, 7, null], [7, 7, 6, 3, 4, 4, 0, 3], [11, 11, 4, 2, 8, 8, 0, null], [13, 20, 4, 1, 16, 16, 7, 5], [10, 10, 2, 2, 7, 9, 0, 4], [12, 12, 4, 2, 32, 32, -3, null], [3, 5, 2, 1, 6, 6, -1, null], [9, 9, 2, 1, 64, 64, 0, null], [1, 300, 4, 2, 64, 64, 299, null]] as const) {
      const q = rand(T * H * Dh), k = rand(S * Hkv * Dh), v = rand(S * Hkv * Dv);
      const o: AttentionOptions = { scale: 1 / Math.sqrt(Dh), queryOffset: off, window: win };
      const tag = `T${T} S${S} H${H}/${Hkv} Dh${Dh} Dv${Dv} off${off} win${win}`;
      const want = F.attention(q, k, v, { T, S, H, Hkv, Dh, Dv }, o);
      const run = (oo: AttentionOptions) => B.attention(B.upload(q, [T, H, Dh]), B.upload(k, [S, Hkv, Dh]), B.upload(v, [S, Hkv, Dv]), oo);
      close(`attention ${tag}`, run(o), want);
      assert.deepEqual(run({ ...o, bf16: true }).toArray(), run(o).toArray(), `${tag}: bf16 is for backends with bf16 products; the CPU ignores it`);
    }
    // Two sequences stacked along the rows, each attending only to its own keys.
    const [nb, T, H, Hkv, Dh] = [2, 5, 4, 2, 6];
    const q = rand(nb * T * H * Dh), k = rand(nb * T * Hkv * Dh), v = rand(nb * T * Hkv * Dh);
    const o = { scale: 0.4, queryOffset: 0, window: null, batch: nb };
    const got = attentionOf(B, B.upload(q, [nb * T, H, Dh]), B.upload(k, [nb * T, Hkv, Dh]), B.upload(v, [nb * T, Hkv, Dh]), o).toArray();
    const n = T * H * Dh, m = T * Hkv * Dh;
    for (let s = 0; s < nb; s++)
      close(`attention batch ${s}`, got.subarray(s * n, (s + 1) * n), F.attention(q.subarray(s * n, (s + 1) * n), k.subarray(s * m, (s + 1) * m), v.subarray(s * m, (s + 1) * m), { T, S: T, H, Hkv, Dh, Dv: Dh }, o));
  });

  test(`${name}: latentAttention (prefill and decode rows, window, no rope dims) equals a float64 softmax over [qr·kr + qc·c]`, opts, () => {
    const B = make();
    for (const [T, S, H, Hkv, Dr, L, off, win] of [[1, 1, 1, 1, 2, 3, 0, null], [5, 5, 4, 2, 4, 6, 0, null], [2, 9, 8, 4, 2, 17, 7, null], [3, 30, 6, 6, 2, 12, 27, 10], [10, 10, 3, 1, 0, 9, 0, null], [4, 6, 2, 1, 4, 5, -2, null], [1, 700, 4, 2, 8, 33, 699, null]] as const) {
      const qr = rand(T * H * Dr), kr = rand(S * Hkv * Dr), qc = rand(T * H * L), c = rand(S * L);
      const o = { scale: 0.3, queryOffset: off, window: win };
      close(`latentAttention T${T} S${S} H${H}/${Hkv} Dr${Dr} L${L} off${off} win${win}`, B.latentAttention(B.upload(qr, [T, H, Dr]), B.upload(kr, [S, Hkv, Dr]), B.upload(qc, [T, H, L]), B.upload(c, [S, L]), o), F.latentAttention(qr, kr, qc, c, { T, S, H, Hkv, Dr, L }, o));
    }
  });

  test(`${name}: attentionDecodeBatch and latentAttentionDecodeBatch (ragged caches with spare rows, window) equal float64 attention per sequence`, opts, () => {
    const B = make();
    for (const [nb, H, Hkv, Dh, Dv, Dr, L, win] of [[1, 4, 2, 8, 8, 2, 6, null], [3, 6, 3, 5, 7, 4, 11, null], [4, 4, 1, 16, 16, 0, 9, 5]] as const) {
      const positions = Int32Array.from({ length: nb }, (_, b) => 2 + 7 * b);
      const rowsOf = Array.from(positions, (p, b) => p + 1 + (b % 2) * 3);
      const q = rand(nb * H * Dh), qr = rand(nb * H * Dr), qc = rand(nb * H * L);
      const k = rowsOf.map((S) => rand(S * Hkv * Dh)), v = rowsOf.map((S) => rand(S * Hkv * Dv)), kr = rowsOf.map((S) => rand(S * Hkv * Dr)), c = rowsOf.map((S) => rand(S * L));
      const o = { scale: 0.3, positions, window: win };
      const y = B.attentionDecodeBatch(B.upload(q, [nb, H, Dh]), k.map((x, b) => B.upload(x, [rowsOf[b]!, Hkv, Dh])), v.map((x, b) => B.upload(x, [rowsOf[b]!, Hkv, Dv])), o).toArray();
      const yl = B.latentAttentionDecodeBatch(B.upload(qr, [nb, H, Dr]), kr.map((x, b) => B.upload(x, [rowsOf[b]!, Hkv, Dr])), B.upload(qc, [nb, H, L]), c.map((x, b) => B.upload(x, [rowsOf[b]!, L])), o).toArray();
      for (let b = 0; b < nb; b++) {
        const S = positions[b]! + 1;
        const ob = { scale: 0.3, queryOffset: S - 1, window: win };
        close(`attentionDecodeBatch B${nb} seq ${b}`, y.subarray(b * H * Dv, (b + 1) * H * Dv), F.attention(q.subarray(b * H * Dh, (b + 1) * H * Dh), k[b]!, v[b]!, { T: 1, S, H, Hkv, Dh, Dv }, ob));
        close(`latentAttentionDecodeBatch B${nb} seq ${b}`, yl.subarray(b * H * L, (b + 1) * H * L), F.latentAttention(qr.subarray(b * H * Dr, (b + 1) * H * Dr), kr[b]!, qc.subarray(b * H * L, (b + 1) * H * L), c[b]!, { T: 1, S, H, Hkv, Dr, L }, ob));
      }
    }
  });

  test(`${name}: swiglu (gates far into both tails), embedding, gatherCols, scatterCols, concatLast, splitLast`, opts, () => {
    const B = make();
    for (const [T, F_] of [[1, 3], [7, 33], [3, 17]] as const) {
      const g = rand(T * F_, 4), u = rand(T * F_);
      g.set([-100, -30, 0, 30, 100].slice(0, g.length));
      close(`swiglu [${T},${F_}]`, B.swiglu(B.upload(g, [T, F_]), B.upload(u, [T, F_])), F.swiglu(g, u));
    }
    for (const [V, D, ids] of [[3, 1, [0]], [11, 7, [3, 3, 0, 10, 3]], [300, 33, Array.from({ length: 50 }, (_, i) => (i * 37) % 300)]] as const) {
      const table = rand(V * D), id = Int32Array.from(ids), dy = rand(ids.length * D);
      close(`embedding V${V} D${D}`, B.embedding(B.upload(table, [V, D]), id), F.embedding(table, id, D));
      close(`embeddingBackward V${V} D${D} (repeated ids add)`, B.embeddingBackward(id, B.upload(dy, [ids.length, D]), V), F.embeddingGrad(id, dy, V, D));
    }
    for (const [M, A, Bn] of [[1, 1, 1], [4, 3, 5], [9, 16, 7]] as const) {
      const a = rand(M * A), b = rand(M * Bn);
      const cat = B.concatLast(B.upload(a, [M, A]), B.upload(b, [M, Bn]));
      close(`concatLast [${M},${A}]+[${M},${Bn}]`, cat, F.concatLast(a, b, M, A, Bn));
      const [s1, s2] = B.splitLast(cat, A);
      close("splitLast (left)", s1, a);
      close("splitLast (right)", s2, b);
      for (const idx of [Int32Array.from({ length: A }, (_, i) => A - 1 - i), Int32Array.of(0, A - 1, 0), Int32Array.from({ length: Math.min(A, 3) }, (_, i) => (i * 2) % A)]) {
        close(`gatherCols [${M},${A}] at ${idx}`, B.gatherCols(B.upload(a, [M, A]), idx), F.gatherCols(a, idx, M, A));
        const dy = rand(M * idx.length);
        close(`scatterCols [${M},${idx.length}] → ${A} at ${idx}`, B.scatterCols(B.upload(dy, [M, idx.length]), idx, A), F.scatterCols(dy, idx, M, A));
      }
    }
  });

  test(`${name}: crossEntropy, its backward and klDivergence equal float64 softmaxes (−∞ logits, large offsets, odd V)`, opts, () => {
    const B = make();
    for (const [T, V, shift] of [[1, 1, 0], [3, 7, 0], [4, 33, 1e4], [2, 1000, -50]] as const) {
      const logits = rand(T * V, 5).map((x) => x + shift);
      const targets = Int32Array.from({ length: T }, (_, t) => (t * 7919) % V);
      // Masked vocabulary entries (not the targets): zero probability, zero gradient.
      if (V > 3) for (let t = 0; t < T; t++) logits[t * V + ((targets[t]! + 1) % V)] = -Infinity;
      const tag = `[${T},${V}] shift ${shift}`;
      const L = () => B.upload(logits, [T, V]);
      // Losses are float64 on every backend; at a shift of 1e4 a float32 logit keeps ~1e-3 absolute.
      const lossTol = shift ? 1e-6 : tol;
      close(`crossEntropy ${tag}`, B.crossEntropy(L(), targets), F.crossEntropy(logits, targets, V), lossTol);
      close(`crossEntropyBackward ${tag}`, B.crossEntropyBackward(L(), targets, 0.3), F.crossEntropyGrad(logits, targets, V, 0.3));
      // The teacher masks what the student masks, and one entry more (the student's loss stays finite).
      const teacher = rand(T * V, 3).map((x, i) => (logits[i] === -Infinity ? -Infinity : x + shift));
      if (V > 3) teacher[0] = -Infinity;
      for (const temp of [1, 2.5]) {
        const r = B.klDivergence(L(), B.upload(teacher, [T, V]), temp, 0.7);
        const want = F.klDivergence(logits, teacher, V, temp, 0.7);
        close(`klDivergence loss ${tag} T=${temp}`, r.loss, want.loss, lossTol);
        close(`klDivergence grad ${tag} T=${temp}`, r.grad, want.grad);
      }
    }
  });

  test(`${name}: bad indices and windows are named (a target or token id outside the vocabulary, a column outside the row, a window that is not a count of keys)`, opts, () => {
    const B = make();
    const L = B.upload(rand(6), [2, 3]);
    for (const bad of [3, -1]) {
      assert.throws(() => B.crossEntropy(L, Int32Array.of(0, bad)), new RegExp(`target ${bad} is outside the vocabulary of 3`));
      assert.throws(() => B.crossEntropyBackward(L, Int32Array.of(bad, 0), 1), new RegExp(`target ${bad} is outside the vocabulary of 3`));
      assert.throws(() => B.embeddingBackward(Int32Array.of(0, bad), L, 3), new RegExp(`token id ${bad} at position 1 is outside the vocabulary of 3`));
      assert.throws(() => B.gatherCols(L, Int32Array.of(bad)), new RegExp(`column ${bad} is outside a row of 3`));
      assert.throws(() => B.scatterCols(L, Int32Array.of(0, 1, bad), 3), new RegExp(`column ${bad} is outside a row of 3`));
    }
    assert.throws(() => B.crossEntropy(L, Int32Array.of(0)), /1 targets for 2 rows/);
    // A window of 0 keys masked every key on the reference backend and none on the native one.
    const q = B.upload(rand(2 * 2 * 4), [2, 2, 4]), k = B.upload(rand(3 * 4), [3, 1, 4]), c = B.upload(rand(3 * 5), [3, 5]);
    for (const window of [0, -1, 2.5, NaN]) {
      const o = { scale: 0.5, queryOffset: 1, window };
      const named = new RegExp(`a sliding window of ${window} keys`);
      assert.throws(() => B.attention(q, k, k, o), named);
      assert.throws(() => B.attentionBackward(q, k, k, q, o), named);
      assert.throws(() => B.latentAttention(q, k, B.upload(rand(2 * 2 * 5), [2, 2, 5]), c, o), named);
      assert.throws(() => B.attentionDecodeBatch(q, [k, k], [k, k], { scale: 0.5, positions: Int32Array.of(1, 2), window }), named);
    }
  });

  test(`${name}: training kernels (zeros, view, copyInto, addInto, fillZero, sumSquares, AdamW with a gradient scale) equal float64 loops; bf16 refused`, opts, () => {
    const B = make();
    const k = B.training!;
    for (const n of [1, 7, 70_001]) {
      const flat = k.zeros(n + 5, "flat");
      assert.deepEqual(flat.shape, [n + 5]);
      assert.ok(flat.toArray().every((x) => x === 0));
      const src = rand(n);
      // A view at an odd offset shares the flat buffer (the native loops must honour the offset).
      k.copyInto(flat, 3, B.upload(src, [n]));
      const view = k.view(flat, 3, [n]);
      close(`copyInto/view n=${n}`, view, src, 0);
      const add = rand(n);
      k.addInto(view, B.upload(add, [n]));
      close(`addInto n=${n}`, flat.toArray().subarray(3, 3 + n), Float64Array.from(src, (x, i) => x + add[i]!));
      const ss = Float64Array.from(view.toArray()).reduce((a, x) => a + x * x, 0);
      assert.ok(Math.abs(k.sumSquares(view) - ss) <= 1e-12 * ss, `sumSquares n=${n}`);
      // Two AdamW steps on views of one flat state each, against float64 arithmetic on the same values.
      const h = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
      const [p0, g0] = [rand(n), rand(n, 2)];
      const state = [p0, g0, new Float32Array(n), new Float32Array(n)].map((a) => {
        const f = k.zeros(n + 2, "state");
        k.copyInto(f, 1, B.upload(a, [n]));
        return k.view(f, 1, [n]);
      }) as [Tensor, Tensor, Tensor, Tensor];
      const ref = { p: Float64Array.from(p0), m: new Float64Array(n), v: new Float64Array(n) };
      for (const step of [1, 2]) {
        const [c1, c2, lr, gs] = [1 - h.beta1 ** step, 1 - h.beta2 ** step, 1e-2, 0.25];
        k.adamw(...state, lr, h, c1, c2, gs, null);
        for (let j = 0; j < n; j++) {
          const g = g0[j]! * gs;
          ref.m[j] = h.beta1 * ref.m[j]! + (1 - h.beta1) * g;
          ref.v[j] = h.beta2 * ref.v[j]! + (1 - h.beta2) * g * g;
          ref.p[j] = ref.p[j]! - lr * (ref.m[j]! / c1 / (Math.sqrt(ref.v[j]! / c2) + h.eps) + h.weightDecay * ref.p[j]!);
        }
      }
      const t32 = B.name === "reference-f64" ? 1e-12 : 1e-5;
      close(`adamw p n=${n}`, state[0], ref.p, t32);
      close(`adamw m n=${n}`, state[2], ref.m, t32);
      close(`adamw v n=${n}`, state[3], ref.v, t32);
      close(`adamw leaves the gradient as it was n=${n}`, state[1], g0, 0);
      k.fillZero(view);
      assert.ok(flat.toArray().subarray(3, 3 + n).every((x) => x === 0) && flat.toArray()[2] === 0 && flat.toArray()[n + 3] === 0, "fillZero");
    }
    assert.throws(() => k.zeros(4, "shadow weights", "bf16"), /shadow weights: the .* backend keeps no bf16 tensors/);
    assert.throws(() => k.cast(B.upload(rand(2), [2]), B.upload(rand(2), [2])), /keeps no bf16 tensors/);
    const t = B.upload(rand(2), [2]);
    assert.throws(() => k.adamw(t, t, t, t, 1e-3, { beta1: 0.9, beta2: 0.9, eps: 1e-8, weightDecay: 0 }, 1, 1, 1, t), /keeps no bf16 tensors/);
    assert.throws(() => k.addInto(k.zeros(3, "a"), k.zeros(4, "b")), /addInto: \[4\] into \[3\]/);
  });
}

test("calibration reductions: the TypeScript loops and the native kernels equal float64 sums (pair norms, covariance upper triangle)", () => {
  const native = backends.find((b) => b.name === "native CPU")!;
  const N = native.skip ? null : native.make();
  for (const [T, heads, Dh] of [[1, 1, 2], [13, 3, 10], [5, 2, 34]] as const) {
    const y = rand(T * heads * Dh), D = heads * Dh, half = Dh / 2;
    const pairs = new Float64Array(heads * half).fill(0.5);
    for (let h = 0; h < heads; h++)
      for (let i = 0; i < half; i++) {
        let s = 0;
        for (let t = 0; t < T; t++) s += Math.hypot(y[(t * heads + h) * Dh + i]!, y[(t * heads + h) * Dh + i + half]!);
        pairs[h * half + i] += s / T;
      }
    const cov = new Float64Array(D * D);
    for (let i = 0; i < D; i++) for (let j = i; j < D; j++) for (let t = 0; t < T; t++) cov[i * D + j] += y[t * D + i]! * y[t * D + j]!;
    const routes: [string, (acc: Float64Array) => void, (acc: Float64Array) => void][] = [["TypeScript", (a) => addPairNorms(y, T, heads, Dh, a), (a) => addCovariance(y, T, D, a)]];
    if (N) routes.push(["native", (a) => N.calibration!.pairNorms(N.upload(y, [T, heads, Dh]), T, heads, Dh, a), (a) => N.calibration!.covariance!(y, T, D, a)]);
    for (const [route, pn, cv] of routes) {
      const a = new Float64Array(heads * half).fill(0.5), c = new Float64Array(D * D);
      pn(a);
      cv(c);
      assert.ok(maxRelDiff(a, pairs) <= 1e-12, `${route} pair norms [${T},${heads},${Dh}]`);
      for (let i = 0; i < D; i++) for (let j = i; j < D; j++) assert.ok(Math.abs(c[i * D + j]! - cov[i * D + j]!) <= 1e-12, `${route} covariance [${i},${j}]`);
    }
  }
});
