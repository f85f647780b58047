/**
 * Backward ops of the reference backend, in the same style as the forward ops (float64
 * accumulation). Each has a finite-difference test in test/backends/backward.test.ts (float64) and
 * test/backends/cpuBackward.test.ts (every CPU backend).
 */
import { attentionWindow, visibleKeys } from "../../tensor/backend.js";
import type { AttentionOptions } from "../../tensor/backend.js";
import { Tensor, expectShape } from "../../tensor/tensor.js";
import type { ReferenceBackend } from "./index.js";
import { checkColumns, checkIds, checkTargets, data, rows } from "./index.js";

function last(t: Tensor): number {
  return t.shape[t.shape.length - 1]!;
}

export function linearBackward(B: ReferenceBackend, x: Tensor, w: Tensor, dy: Tensor, need: { x: boolean; w: boolean; bias: boolean }) {
  const K = last(x);
  const M = rows(x);
  const N = w.shape[0]!;
  expectShape("linearBackward", "dy", dy, [...x.shape.slice(0, -1), N]);
  const X = data(x);
  const W = data(w);
  const G = data(dy);
  let dx: Tensor | null = null;
  let dw: Tensor | null = null;
  let db: Tensor | null = null;
  if (need.x) {
    const out = B.alloc(M * K);
    const acc = new Float64Array(K);
    for (let m = 0; m < M; m++) {
      acc.fill(0);
      for (let n = 0; n < N; n++) {
        const g = G[m * N + n]!;
        if (g === 0) continue;
        const wo = n * K;
        for (let k = 0; k < K; k++) acc[k] += g * W[wo + k]!;
      }
      for (let k = 0; k < K; k++) out[m * K + k] = acc[k]!;
    }
    dx = B.make(x.shape, out);
  }
  if (need.w) {
    const out = B.alloc(N * K);
    const acc = new Float64Array(K);
    for (let n = 0; n < N; n++) {
      acc.fill(0);
      for (let m = 0; m < M; m++) {
        const g = G[m * N + n]!;
        if (g === 0) continue;
        const xo = m * K;
        for (let k = 0; k < K; k++) acc[k] += g * X[xo + k]!;
      }
      for (let k = 0; k < K; k++) out[n * K + k] = acc[k]!;
    }
    dw = B.make([N, K], out);
  }
  if (need.bias) {
    const out = new Float64Array(N);
    for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) out[n] += G[m * N + n]!;
    db = B.make([N], B.clone(out));
  }
  return { dx, dw, db };
}

export function rmsnormBackward(B: ReferenceBackend, x: Tensor, w: Tensor, eps: number, dy: Tensor) {
  const D = last(x);
  const X = data(x);
  const W = data(w);
  const G = data(dy);
  const dx = B.alloc(X.length);
  const dw = new Float64Array(D);
  const R = rows(x);
  for (let r = 0; r < R; r++) {
    const o = r * D;
    let ss = 0;
    for (let i = 0; i < D; i++) ss += X[o + i]! * X[o + i]!;
    const inv = 1 / Math.sqrt(ss / D + eps);
    let dot = 0;
    for (let i = 0; i < D; i++) {
      dot += G[o + i]! * W[i]! * X[o + i]!;
      dw[i] += G[o + i]! * X[o + i]! * inv;
    }
    const c = (dot * inv * inv * inv) / D;
    for (let i = 0; i < D; i++) dx[o + i] = G[o + i]! * W[i]! * inv - X[o + i]! * c;
  }
  return { dx: B.make(x.shape, dx), dw: B.make([D], B.clone(dw)) };
}

export function attentionBackward(B: ReferenceBackend, q: Tensor, k: Tensor, v: Tensor, dOut: Tensor, opts: AttentionOptions) {
  const [T, H, Dh] = q.shape as [number, number, number];
  const [S, Hkv] = k.shape as [number, number];
  const Dv = last(v);
  expectShape("attentionBackward", "dOut", dOut, [T, H, Dv]);
  attentionWindow("attentionBackward", opts.window);
  const group = H / Hkv;
  const Q = data(q);
  const K = data(k);
  const V = data(v);
  const dO = data(dOut);
  const dQ = new Float64Array(Q.length);
  const dK = new Float64Array(K.length);
  const dV = new Float64Array(V.length);
  const p = new Float64Array(S);
  const dp = new Float64Array(S);
  for (let t = 0; t < T; t++) {
    const [lo, hi] = visibleKeys(t, S, opts);
    for (let h = 0; h < H; h++) {
      const kh = Math.floor(h / group);
      const qo = (t * H + h) * Dh;
      const oo = (t * H + h) * Dv;
      let max = -Infinity;
      for (let s = lo; s <= hi; s++) {
        const ko = (s * Hkv + kh) * Dh;
        let dot = 0;
        for (let d = 0; d < Dh; d++) dot += Q[qo + d]! * K[ko + d]!;
        p[s] = dot * opts.scale;
        if (p[s]! > max) max = p[s]!;
      }
      let z = 0;
      for (let s = lo; s <= hi; s++) z += p[s] = Math.exp(p[s]! - max);
      let sumPdp = 0;
      for (let s = lo; s <= hi; s++) {
        p[s] = p[s]! / z;
        const vo = (s * Hkv + kh) * Dv;
        let d = 0;
        for (let e = 0; e < Dv; e++) {
          d += dO[oo + e]! * V[vo + e]!;
          dV[vo + e] += p[s]! * dO[oo + e]!;
        }
        dp[s] = d;
        sumPdp += p[s]! * d;
      }
      for (let s = lo; s <= hi; s++) {
        const ds = p[s]! * (dp[s]! - sumPdp) * opts.scale;
        const ko = (s * Hkv + kh) * Dh;
        for (let d = 0; d < Dh; d++) {
          dQ[qo + d] += ds * K[ko + d]!;
          dK[ko + d] += ds * Q[qo + d]!;
        }
      }
    }
  }
  return { dq: B.make(q.shape, B.clone(dQ)), dk: B.make(k.shape, B.clone(dK)), dv: B.make(v.shape, B.clone(dV)) };
}

export function swigluBackward(B: ReferenceBackend, gate: Tensor, up: Tensor, dy: Tensor) {
  const G = data(gate);
  const U = data(up);
  const D = data(dy);
  const dg = B.alloc(G.length);
  const du = B.alloc(G.length);
  for (let i = 0; i < G.length; i++) {
    const g = G[i]!;
    const sig = 1 / (1 + Math.exp(-g));
    du[i] = D[i]! * g * sig;
    dg[i] = D[i]! * U[i]! * sig * (1 + g * (1 - sig));
  }
  return { dgate: B.make(gate.shape, dg), dup: B.make(up.shape, du) };
}

export function embeddingBackward(B: ReferenceBackend, ids: Int32Array, dy: Tensor, vocab: number) {
  const D = last(dy);
  expectShape("embeddingBackward", "dy", dy, [ids.length, D]);
  checkIds("embeddingBackward", ids, vocab);
  const G = data(dy);
  const out = new Float64Array(vocab * D);
  for (let t = 0; t < ids.length; t++) for (let d = 0; d < D; d++) out[ids[t]! * D + d] += G[t * D + d]!;
  return B.make([vocab, D], B.clone(out));
}

/** Softmax of row `o` of X (length V) divided by `temp`, into out (float64). */
function softmaxRow(X: ArrayLike<number>, o: number, V: number, temp: number, out: Float64Array): void {
  let max = -Infinity;
  for (let i = 0; i < V; i++) if (X[o + i]! / temp > max) max = X[o + i]! / temp;
  let z = 0;
  for (let i = 0; i < V; i++) z += out[i] = Math.exp(X[o + i]! / temp - max);
  for (let i = 0; i < V; i++) out[i] = out[i]! / z;
}

export function crossEntropyBackward(B: ReferenceBackend, logits: Tensor, targets: Int32Array, scale: number) {
  const V = last(logits);
  const L = data(logits);
  const T = rows(logits);
  checkTargets("crossEntropyBackward", targets, T, V);
  const out = B.alloc(L.length);
  const p = new Float64Array(V);
  for (let t = 0; t < T; t++) {
    softmaxRow(L, t * V, V, 1, p);
    p[targets[t]!] -= 1;
    for (let i = 0; i < V; i++) out[t * V + i] = p[i]! * scale;
  }
  return B.make(logits.shape, out);
}

export function klDivergence(B: ReferenceBackend, student: Tensor, teacher: Tensor, temperature: number, scale: number) {
  expectShape("klDivergence", "teacher", teacher, student.shape);
  const V = last(student);
  const S = data(student);
  const Tt = data(teacher);
  const R = rows(student);
  const loss = new Float64Array(R);
  const grad = B.alloc(S.length);
  const ps = new Float64Array(V);
  const pt = new Float64Array(V);
  const t2 = temperature * temperature;
  for (let r = 0; r < R; r++) {
    softmaxRow(S, r * V, V, temperature, ps);
    softmaxRow(Tt, r * V, V, temperature, pt);
    let kl = 0;
    for (let i = 0; i < V; i++) {
      if (pt[i]! > 0) kl += pt[i]! * (Math.log(pt[i]!) - Math.log(Math.max(ps[i]!, 1e-300)));
      grad[r * V + i] = scale * temperature * (ps[i]! - pt[i]!);
    }
    loss[r] = t2 * kl;
  }
  return { loss, grad: B.make(student.shape, grad) };
}

export function scatterCols(B: ReferenceBackend, dy: Tensor, idx: Int32Array, n: number) {
  const K = last(dy);
  const M = rows(dy);
  checkColumns("scatterCols", idx, n);
  const G = data(dy);
  const out = B.alloc(M * n);
  for (let m = 0; m < M; m++) for (let k = 0; k < K; k++) out[m * n + idx[k]!] += G[m * K + k]!;
  return B.make([...dy.shape.slice(0, -1), n], out);
}

export function splitLast(B: ReferenceBackend, x: Tensor, a: number): [Tensor, Tensor] {
  const N = last(x);
  const R = rows(x);
  const X = data(x);
  const A = B.alloc(R * a);
  const Bb = B.alloc(R * (N - a));
  for (let r = 0; r < R; r++) {
    A.set(X.subarray(r * N, r * N + a), r * a);
    Bb.set(X.subarray(r * N + a, (r + 1) * N), r * (N - a));
  }
  return [B.make([...x.shape.slice(0, -1), a], A), B.make([...x.shape.slice(0, -1), N - a], Bb)];
}
