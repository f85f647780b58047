/**
 * The backend parity suite: every op of the Backend interface (forward and backward) on a candidate
 * backend against the TypeScript reference backend, on random inputs of several shapes (including
 * sizes that are not multiples of tile or vector widths). Used by the native CPU test in CI and by
 * the CUDA test on the GPU machine. Each comparison gives one report line: op, shape, max |Δ|,
 * max relative error (to the largest reference magnitude) and NMSE.
 */
import { referenceBackend as R } from "../../src/backends/reference/index.js";
import type { AttentionOptions, Backend } from "../../src/tensor/backend.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { seededRand } from "../helpers.js";

export interface ParityLine {
  op: string;
  shape: string;
  maxAbs: number;
  rel: number;
  nmse: number;
  ok: boolean;
}

type Arr = Float32Array;
/** One case: runs the op on a backend with inputs uploaded there; returns the named outputs. */
type Run = (B: Backend, up: (a: Arr, shape: number[]) => Tensor) => Record<string, Tensor | Float64Array | null>;

export function runParity(candidate: Backend, relTol: number): ParityLine[] {
  const rand = seededRand(5, Float32Array);
  const lines: ParityLine[] = [];
  const check = (op: string, shape: string, run: Run) => {
    const on = (B: Backend) => run(B, (a, s) => B.upload(a, s));
    const got = on(candidate);
    const want = on(R);
    for (const [name, w] of Object.entries(want)) {
      const g = got[name];
      const label = name === "y" ? op : `${op} ${name}`;
      if (!w || !g) {
        lines.push({ op: label, shape, maxAbs: NaN, rel: NaN, nmse: NaN, ok: !w && !g });
        continue;
      }
      const a = g instanceof Float64Array ? g : g.toArray();
      const b = w instanceof Float64Array ? w : w.toArray();
      let maxAbs = 0, scale = 0, err2 = 0, ref2 = 0;
      let finite = a.length === b.length;
      for (let i = 0; i < b.length; i++) {
        const d = Math.abs(a[i]! - b[i]!);
        if (!Number.isFinite(d)) finite = false;
        maxAbs = Math.max(maxAbs, d);
        scale = Math.max(scale, Math.abs(b[i]!));
        err2 += d * d;
        ref2 += b[i]! ** 2;
      }
      const rel = maxAbs / Math.max(scale, 1e-30);
      const nmse = err2 / Math.max(ref2, 1e-30);
      lines.push({ op: label, shape, maxAbs, rel, nmse, ok: finite && rel <= relTol });
    }
  };

  for (const [M, K, N] of [[1, 1, 1], [3, 5, 7], [17, 64, 33], [64, 100, 9], [130, 257, 65]] as const) {
    const x = rand(M * K), w = rand(N * K), b = rand(N), dy = rand(M * N);
    check("linear", `[${M},${K}]·[${N},${K}]ᵀ`, (B, up) => {
      const [X, W, Bi, D] = [up(x, [M, K]), up(w, [N, K]), up(b, [N]), up(dy, [M, N])];
      const g = B.linearBackward(X, W, D, { x: true, w: true, bias: true });
      return { y: B.linear(X, W, Bi), nobias: B.linear(X, W), dx: g.dx, dw: g.dw, db: g.db };
    });
  }
  for (const [T, D] of [[1, 3], [5, 7], [40, 64], [3, 1000]] as const) {
    const x = rand(T * D, 3), w = rand(D), d = rand(T * D), o = rand(T * D);
    check("rmsnorm", `[${T},${D}]`, (B, up) => {
      const g = B.rmsnormBackward(up(x, [T, D]), up(w, [D]), 1e-5, up(d, [T, D]));
      return { y: B.rmsnorm(up(x, [T, D]), up(w, [D]), 1e-5), dx: g.dx, dw: g.dw };
    });
    check("add/scale", `[${T},${D}]`, (B, up) => ({ add: B.add(up(x, [T, D]), up(o, [T, D])), scale: B.scale(up(x, [T, D]), -0.37) }));
  }
  // RoPE: full, partial rotary dims, per-head index sets (MLA), large positions (float32 angle rounding),
  // no rotary dims (an MLA with zero rope pairs: the identity) and an empty rope key.
  for (const [T, H, Dh, rd, perHead, p0] of [[3, 2, 8, 0, false, 0], [3, 2, 0, 0, false, 0], [1, 1, 2, 2, false, 0], [5, 3, 8, 8, false, 0], [7, 4, 16, 8, false, 3], [6, 4, 12, 4, true, 0], [4, 2, 64, 64, false, 30000]] as const) {
    const x = rand(T * H * Dh);
    const positions = Int32Array.from({ length: T }, (_, i) => p0 + i * 3);
    const invFreq = Float64Array.from({ length: (perHead ? H : 1) * (rd / 2) }, (_, i) => 10000 ** (-(2 * (i % (rd / 2))) / rd) * (1 + (i >= rd / 2 ? 0.1 : 0)));
    check("rope", `[${T},${H},${Dh}] rd${rd}${perHead ? " per-head" : ""} p0 ${p0}`, (B, up) => ({
      y: B.rope(up(x, [T, H, Dh]), positions, invFreq, rd),
      backward: B.ropeBackward(up(x, [T, H, Dh]), positions, invFreq, rd),
    }));
  }
  for (const [T, H, Dh, Dv, Hkv, S, off, win] of [[1, 1, 1, 1, 1, 1, 0, null], [7, 6, 5, 5, 2, 7, 0, null], [3, 4, 8, 6, 4, 11, 8, null], [33, 8, 16, 16, 2, 33, 0, 9], [2, 6, 12, 12, 3, 40, 38, 16], [1, 8, 64, 64, 4, 300, 299, null], [1, 8, 64, 64, 1, 1500, 1499, null], [1, 6, 12, 10, 3, 50, 49, 16], [1, 4, 8, 8, 2, 20, 9, null], [70, 4, 128, 128, 2, 100, 30, null], [40, 2, 200, 150, 1, 45, 5, 37]] as const) {
    const q = rand(T * H * Dh), k = rand(S * Hkv * Dh), v = rand(S * Hkv * Dv), d = rand(T * H * Dv);
    const opts: AttentionOptions = { scale: 1 / Math.sqrt(Dh), queryOffset: off, window: win };
    check("attention", `T${T} S${S} H${H}/${Hkv} Dh${Dh} Dv${Dv} off${off} win${win}`, (B, up) => {
      const Q = up(q, [T, H, Dh]), Kt = up(k, [S, Hkv, Dh]), Vt = up(v, [S, Hkv, Dv]);
      const g = B.attentionBackward(Q, Kt, Vt, up(d, [T, H, Dv]), opts);
      return { y: B.attention(Q, Kt, Vt, opts), dq: g.dq, dk: g.dk, dv: g.dv };
    });
  }
  for (const [T, S, H, Hkv, Dr, L, off, win] of [[1, 1, 1, 1, 2, 3, 0, null], [5, 5, 4, 2, 4, 6, 0, null], [2, 9, 8, 4, 2, 16, 7, null], [1, 40, 8, 4, 4, 16, 39, null], [1, 33, 6, 2, 2, 70, 20, null], [3, 30, 6, 6, 2, 12, 27, 10], [1, 1100, 6, 1, 16, 384, 1099, null], [2, 600, 6, 2, 8, 64, 598, 300], [12, 300, 4, 2, 4, 40, 288, null]] as const) {
    const qr = rand(T * H * Dr), kr = rand(S * Hkv * Dr), qc = rand(T * H * L), c = rand(S * L);
    const opts: AttentionOptions = { scale: 0.3, queryOffset: off, window: win };
    check("latentAttention", `T${T} S${S} H${H}/${Hkv} Dr${Dr} L${L} win${win}`, (B, up) => ({ y: B.latentAttention(up(qr, [T, H, Dr]), up(kr, [S, Hkv, Dr]), up(qc, [T, H, L]), up(c, [S, L]), opts) }));
  }
  // Batched decode: ragged caches (some with spare rows past the query's position), GQA, a window.
  for (const [B, H, Hkv, Dh, Dv, Dr, L, win] of [[1, 4, 2, 8, 8, 2, 6, null], [3, 6, 3, 12, 10, 4, 20, null], [5, 8, 2, 16, 16, 0, 33, 5]] as const) {
    const positions = Int32Array.from({ length: B }, (_, b) => 2 + 7 * b);
    const rows = Array.from(positions, (p, b) => p + 1 + (b % 2) * 3);
    const q = rand(B * H * Dh), k = rows.map((S) => rand(S * Hkv * Dh)), v = rows.map((S) => rand(S * Hkv * Dv));
    const qr = rand(B * H * Dr), qc = rand(B * H * L), kr = rows.map((S) => rand(S * Hkv * Dr)), c = rows.map((S) => rand(S * L));
    const opts = { scale: 0.3, positions, window: win };
    check("attentionDecodeBatch", `B${B} H${H}/${Hkv} Dh${Dh} Dv${Dv} win${win}`, (Bk, up) => ({
      y: Bk.attentionDecodeBatch(up(q, [B, H, Dh]), k.map((x, b) => up(x, [rows[b]!, Hkv, Dh])), v.map((x, b) => up(x, [rows[b]!, Hkv, Dv])), opts),
    }));
    check("latentAttentionDecodeBatch", `B${B} H${H}/${Hkv} Dr${Dr} L${L} win${win}`, (Bk, up) => ({
      y: Bk.latentAttentionDecodeBatch(up(qr, [B, H, Dr]), kr.map((x, b) => up(x, [rows[b]!, Hkv, Dr])), up(qc, [B, H, L]), c.map((x, b) => up(x, [rows[b]!, L])), opts),
    }));
  }
  for (const [T, H, G, K, N] of [[1, 4, 4, 3, 5], [6, 9, 3, 56, 96], [2, 8, 1, 16, 8]] as const) {
    const x = rand(T * H * K), w = rand(G * N * K);
    check("headLinear", `T${T} H${H}/${G} K${K} N${N}`, (B, up) => ({ y: B.headLinear(up(x, [T, H, K]), up(w, [G, N, K])) }));
  }
  for (const [T, F] of [[1, 3], [7, 33], [40, 512]] as const) {
    const g = rand(T * F, 4), u = rand(T * F), d = rand(T * F);
    check("swiglu", `[${T},${F}]`, (B, up) => {
      const r = B.swigluBackward(up(g, [T, F]), up(u, [T, F]), up(d, [T, F]));
      return { y: B.swiglu(up(g, [T, F]), up(u, [T, F])), dgate: r.dgate, dup: r.dup };
    });
    const targets = Int32Array.from({ length: T }, (_, i) => (i * 7919) % F);
    check("cross-entropy", `[${T},${F}]`, (B, up) => ({ y: B.crossEntropy(up(g, [T, F]), targets), grad: B.crossEntropyBackward(up(g, [T, F]), targets, 0.3) }));
    check("kl-divergence", `[${T},${F}] T=2`, (B, up) => {
      const r = B.klDivergence(up(g, [T, F]), up(u, [T, F]), 2, 0.5);
      return { loss: r.loss, grad: r.grad };
    });
  }
  for (const [V, D, ids] of [[3, 1, [0]], [11, 7, [3, 3, 0, 10, 3]], [300, 64, Array.from({ length: 50 }, (_, i) => (i * 37) % 300)]] as const) {
    const table = rand(V * D), id = Int32Array.from(ids), d = rand(ids.length * D);
    check("embedding", `V${V} D${D} T${ids.length}`, (B, up) => ({ y: B.embedding(up(table, [V, D]), id), backward: B.embeddingBackward(id, up(d, [ids.length, D]), V) }));
  }
  for (const [M, A, Bn] of [[1, 1, 1], [4, 3, 5], [9, 16, 7]] as const) {
    const a = rand(M * A), b = rand(M * Bn), c3 = rand(M * 3), idx = Int32Array.from({ length: Math.min(A, 3) }, (_, i) => (i * 2) % A);
    check("concat/split/gather/scatter", `[${M},${A}]+[${M},${Bn}]`, (B, up) => {
      const cat = B.concatLast(up(a, [M, A]), up(b, [M, Bn]));
      const [s1, s2] = B.splitLast(cat, A);
      // scatterCols has three routes: a permutation, distinct indices, repeated indices (summed).
      const reversed = Int32Array.from({ length: A }, (_, i) => A - 1 - i), repeated = Int32Array.of(0, A - 1, 0);
      const scatterPerm = B.scatterCols(up(a, [M, A]), reversed, A), scatterRepeated = B.scatterCols(up(c3, [M, 3]), repeated, A);
      return { concat: cat, split0: s1, split1: s2, gather: B.gatherCols(up(a, [M, A]), idx), scatter: B.scatterCols(B.gatherCols(up(a, [M, A]), idx), idx, A), scatterPerm, scatterRepeated };
    });
  }
  return lines;
}

export function formatParity(lines: ParityLine[]): string {
  return lines.map((l) => `${l.ok ? "ok  " : "FAIL"} ${l.op.padEnd(26)} ${l.shape.padEnd(40)} max|Δ| ${l.maxAbs.toExponential(2)}  rel ${l.rel.toExponential(2)}  NMSE ${l.nmse.toExponential(2)}`).join("\n");
}
