/**
 * Parity suite: every op the native CPU library implements, against the reference backend, on
 * random inputs of several shapes (sizes that are not multiples of the 4×4 tile or the 8-wide
 * vectors included). Reports op, shape, max |Δ|, max relative error and NMSE; float32 tolerance
 * 1e-4 relative (to the largest reference value). The CUDA backend is not built in this version.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { referenceBackend as R } from "../../src/backends/reference/index.js";
import { loadNativeCpu, NativeCpuBackend } from "../../src/backends/native/cpu.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { seededRand } from "../helpers.js";

const lib = loadNativeCpu();
const skip = typeof lib === "string" && process.env["MHA2MLA_SKIP_NATIVE"] ? `native CPU library not built (MHA2MLA_SKIP_NATIVE): ${lib}` : false;
const rand = seededRand(5, Float32Array);

function compare(op: string, shape: string, got: Tensor | null, want: Tensor | null): void {
  assert.ok(got && want, `${op} ${shape}: missing output`);
  const a = got!.toArray();
  const b = want!.toArray();
  let maxAbs = 0;
  let scale = 0;
  let err2 = 0;
  let ref2 = 0;
  for (let i = 0; i < b.length; i++) {
    maxAbs = Math.max(maxAbs, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
    err2 += (a[i]! - b[i]!) ** 2;
    ref2 += b[i]! ** 2;
  }
  const rel = maxAbs / Math.max(scale, 1e-30);
  const nmse = err2 / Math.max(ref2, 1e-30);
  const line = `${op} ${shape}: max|Δ| ${maxAbs.toExponential(2)}, rel ${rel.toExponential(2)}, NMSE ${nmse.toExponential(2)}`;
  assert.ok(rel <= 1e-4 && Number.isFinite(nmse), line);
}

test("native CPU library is built and loads (CUDA: not built in this version, skipped)", { skip }, () => {
  assert.equal(typeof lib, "object", typeof lib === "string" ? lib : "");
});

test("linear forward and backward match the reference backend", { skip }, () => {
  const N = new NativeCpuBackend(lib as Exclude<typeof lib, string>);
  for (const [M, K, Nn] of [[1, 1, 1], [3, 5, 7], [17, 64, 33], [64, 100, 9], [130, 257, 65]] as const) {
    const x = rand(M * K), w = rand(Nn * K), b = rand(Nn), dy = rand(M * Nn);
    const shape = `[${M},${K}]·[${Nn},${K}]ᵀ`;
    compare("linear", shape, N.linear(N.upload(x, [M, K]), N.upload(w, [Nn, K]), N.upload(b, [Nn])), R.linear(R.upload(x, [M, K]), R.upload(w, [Nn, K]), R.upload(b, [Nn])));
    const need = { x: true, w: true, bias: true };
    const g = N.linearBackward(N.upload(x, [M, K]), N.upload(w, [Nn, K]), N.upload(dy, [M, Nn]), need);
    const r = R.linearBackward(R.upload(x, [M, K]), R.upload(w, [Nn, K]), R.upload(dy, [M, Nn]), need);
    compare("linear dx", shape, g.dx, r.dx);
    compare("linear dw", shape, g.dw, r.dw);
    compare("linear db", shape, g.db, r.db);
  }
});

test("attention forward and backward match the reference backend (GQA, cache offset, sliding window)", { skip }, () => {
  const N = new NativeCpuBackend(lib as Exclude<typeof lib, string>);
  for (const [T, S, H, Hkv, Dh, Dv, off, window] of [[1, 1, 1, 1, 1, 1, 0, null], [7, 7, 6, 2, 5, 5, 0, null], [3, 11, 4, 4, 8, 6, 8, null], [33, 33, 8, 2, 16, 16, 0, 9], [2, 40, 6, 3, 12, 12, 38, 16]] as const) {
    const q = rand(T * H * Dh), k = rand(S * Hkv * Dh), v = rand(S * Hkv * Dv), d = rand(T * H * Dv);
    const opts = { scale: 1 / Math.sqrt(Dh), queryOffset: off, window };
    const shape = `T${T} S${S} H${H}/${Hkv} Dh${Dh} Dv${Dv} off${off} win${window}`;
    const up = (B: typeof R) => [B.upload(q, [T, H, Dh]), B.upload(k, [S, Hkv, Dh]), B.upload(v, [S, Hkv, Dv])] as const;
    compare("attention", shape, N.attention(...up(N), opts), R.attention(...up(R), opts));
    const g = N.attentionBackward(...up(N), N.upload(d, [T, H, Dv]), opts);
    const r = R.attentionBackward(...up(R), R.upload(d, [T, H, Dv]), opts);
    compare("attention dq", shape, g.dq, r.dq);
    compare("attention dk", shape, g.dk, r.dk);
    compare("attention dv", shape, g.dv, r.dv);
  }
});

test("swiglu, rmsnorm and cross-entropy (forward and backward) match the reference backend", { skip }, () => {
  const N = new NativeCpuBackend(lib as Exclude<typeof lib, string>);
  for (const [T, D] of [[1, 3], [5, 7], [40, 64]] as const) {
    const x = rand(T * D, 3), w = rand(D), d = rand(T * D);
    compare("rmsnorm", `[${T},${D}]`, N.rmsnorm(N.upload(x, [T, D]), N.upload(w, [D]), 1e-5), R.rmsnorm(R.upload(x, [T, D]), R.upload(w, [D]), 1e-5));
    const a = N.rmsnormBackward(N.upload(x, [T, D]), N.upload(w, [D]), 1e-5, N.upload(d, [T, D]));
    const b = R.rmsnormBackward(R.upload(x, [T, D]), R.upload(w, [D]), 1e-5, R.upload(d, [T, D]));
    compare("rmsnorm dx", `[${T},${D}]`, a.dx, b.dx);
    compare("rmsnorm dw", `[${T},${D}]`, a.dw, b.dw);
  }
  for (const [T, V] of [[1, 3], [7, 33], [40, 512]] as const) {
    const g = rand(T * V, 4), u = rand(T * V), d = rand(T * V);
    compare("swiglu", `[${T},${V}]`, N.swiglu(N.upload(g, [T, V]), N.upload(u, [T, V])), R.swiglu(R.upload(g, [T, V]), R.upload(u, [T, V])));
    const a = N.swigluBackward(N.upload(g, [T, V]), N.upload(u, [T, V]), N.upload(d, [T, V]));
    const b = R.swigluBackward(R.upload(g, [T, V]), R.upload(u, [T, V]), R.upload(d, [T, V]));
    compare("swiglu dgate", `[${T},${V}]`, a.dgate, b.dgate);
    compare("swiglu dup", `[${T},${V}]`, a.dup, b.dup);
    const targets = Int32Array.from({ length: T }, (_, i) => (i * 7919) % V);
    const ln = N.crossEntropy(N.upload(g, [T, V]), targets);
    const lr = R.crossEntropy(R.upload(g, [T, V]), targets);
    compare("cross-entropy", `[${T},${V}]`, R.upload(Float32Array.from(ln), [T]), R.upload(Float32Array.from(lr), [T]));
    compare("cross-entropy grad", `[${T},${V}]`, N.crossEntropyBackward(N.upload(g, [T, V]), targets, 0.3), R.crossEntropyBackward(R.upload(g, [T, V]), targets, 0.3));
  }
  assert.throws(() => N.crossEntropy(N.upload(rand(6), [2, 3]), Int32Array.of(0, 3)), /target 3 is outside the vocabulary of 3/);
});

test("float64 Gram, matmul and symmetric eigendecomposition match the TypeScript route", { skip }, async () => {
  const { nativeLinalg } = await import("../../src/backends/native/cpu.js");
  const L = nativeLinalg()!;
  const r64 = seededRand(9, Float64Array);
  for (const [M, N] of [[1, 1], [7, 5], [33, 65], [130, 64]] as const) {
    const A = r64(M * N);
    const G = L.gram(A, M, N);
    let err = 0;
    for (let i = 0; i < N; i++)
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let r = 0; r < M; r++) s += A[r * N + i]! * A[r * N + j]!;
        err = Math.max(err, Math.abs(G[i * N + j]! - s));
      }
    assert.ok(err < 1e-12, `gram ${M}×${N}: ${err}`);
    const Z = L.matmul(A, G, M, N, N);
    let zerr = 0;
    for (let i = 0; i < M; i++)
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let t = 0; t < N; t++) s += A[i * N + t]! * G[t * N + j]!;
        zerr = Math.max(zerr, Math.abs(Z[i * N + j]! - s));
      }
    assert.ok(zerr < 1e-10, `matmul: ${zerr}`);
    const { values, vectors } = L.eigen(G, N);
    for (let e = 0; e < N; e++) {
      if (e > 0) assert.ok(values[e - 1]! >= values[e]!, "descending");
      let res = 0;
      for (let i = 0; i < N; i++) {
        let s = 0;
        for (let j = 0; j < N; j++) s += G[i * N + j]! * vectors[e * N + j]!;
        res = Math.max(res, Math.abs(s - values[e]! * vectors[e * N + i]!));
      }
      assert.ok(res < 1e-9 * Math.max(1, values[0]!), `eigenpair ${e} of ${N}: residual ${res}`);
    }
  }
});
