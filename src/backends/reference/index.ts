/**
 * The TypeScript reference backend: float32 storage (or float64, for finite-difference tests),
 * float64 accumulation. It is the oracle the native backends are tested against, so every op is
 * written for clarity first; the inner loops are kept contiguous and 4-way unrolled because it also
 * serves as the default backend for small models. Backward ops live in ./backward.ts.
 */
import { MlaError } from "../../errors.js";
import { attentionWindow, headLinearDims, latentAttentionDims, visibleKeys } from "../../tensor/backend.js";
import type { AttentionOptions, Backend, DecodeBatchOptions, TrainingKernels } from "../../tensor/backend.js";
import { attentionDecodeByRows, latentAttentionDecodeByRows } from "../../tensor/rows.js";
import { hostTraining, HostOptimizerLoops } from "./training.js";
import * as bw from "./backward.js";
import { FloatArray, Tensor, expectShape } from "../../tensor/tensor.js";
export type { FloatArray };


export function data(t: Tensor): FloatArray {
  return t.storage as FloatArray;
}

function last(t: Tensor): number {
  return t.shape[t.shape.length - 1]!;
}

/** Rows of t: the product of all but the last axis (size / last is NaN when the last axis is 0). */
export function rows(t: Tensor): number {
  let n = 1;
  for (let i = 0; i < t.shape.length - 1; i++) n *= t.shape[i]!;
  return n;
}

/** Refuses a target outside [0, V) (read unchecked, −1 read the previous row's last logit). */
export function checkTargets(op: string, targets: Int32Array, T: number, V: number): void {
  if (targets.length !== T) throw new MlaError("BAD_ARGUMENT", `${op}: ${targets.length} targets for ${T} rows`, "one target per row");
  for (const t of targets) if (!(t >= 0 && t < V)) throw new MlaError("BAD_ARGUMENT", `${op}: target ${t} is outside the vocabulary of ${V}`, "the tokenizer and the model do not match");
}

/** Refuses token ids outside [0, V) (an embedding's backward dropped such a row's gradient silently). */
export function checkIds(op: string, ids: Int32Array, V: number): void {
  ids.forEach((id, t) => {
    if (!(id >= 0 && id < V)) throw new MlaError("BAD_ARGUMENT", `${op}: token id ${id} at position ${t} is outside the vocabulary of ${V}`, "the tokenizer and the model do not match");
  });
}

/** Refuses column indices outside [0, N) (gatherCols read undefined, scatterCols dropped the column). */
export function checkColumns(op: string, idx: Int32Array, N: number): void {
  for (const j of idx) if (!(j >= 0 && j < N)) throw new MlaError("BAD_ARGUMENT", `${op}: column ${j} is outside a row of ${N}`, "this is a bug in the caller (a RoPE index set that does not fit the head dim)");
}

export class ReferenceBackend implements Backend {
  readonly name: string;
  readonly dtype: "f32" | "f64";
  readonly training: TrainingKernels = hostTraining(this, () => this.optimizerLoops());

  constructor(dtype: "f32" | "f64" = "f32") {
    this.dtype = dtype;
    this.name = dtype === "f32" ? "reference" : "reference-f64";
  }

  /** A zeroed array of this backend's storage type. */
  alloc(n: number): FloatArray {
    return this.dtype === "f32" ? new Float32Array(n) : new Float64Array(n);
  }

  clone(x: ArrayLike<number>): FloatArray {
    return this.dtype === "f32" ? Float32Array.from(x) : Float64Array.from(x);
  }

  upload(values: FloatArray, shape: readonly number[]): Tensor {
    const mine = this.dtype === "f32" ? values instanceof Float32Array : values instanceof Float64Array;
    const t = new Tensor(this, shape, mine ? values : this.clone(values), this.dtype);
    if (t.size !== values.length) throw new MlaError("BAD_ARGUMENT", `upload: ${values.length} values for shape [${shape}]`, "shape and data length must agree");
    return t;
  }

  download(t: Tensor): FloatArray {
    return data(t);
  }

  /** Native optimizer loops over host arrays, where a subclass has them (null: TypeScript). */
  optimizerLoops(): HostOptimizerLoops | null {
    return null;
  }

  free(): void {}

  make(shape: readonly number[], values?: FloatArray): Tensor {
    let n = 1;
    for (const d of shape) n *= d;
    return new Tensor(this, shape, values ?? this.alloc(n), this.dtype);
  }

  linear(x: Tensor, w: Tensor, bias?: Tensor | null): Tensor {
    const K = last(x);
    const M = rows(x);
    const N = w.shape[0]!;
    expectShape("linear", "w", w, [N, K]);
    if (bias) expectShape("linear", "bias", bias, [N]);
    const X = data(x);
    const W = data(w);
    const B = bias ? data(bias) : null;
    const Y = this.alloc(M * N);
    const K4 = K - (K % 4);
    for (let m = 0; m < M; m++) {
      const xo = m * K;
      for (let n = 0; n < N; n++) {
        const wo = n * K;
        let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        let k = 0;
        for (; k < K4; k += 4) {
          s0 += X[xo + k]! * W[wo + k]!;
          s1 += X[xo + k + 1]! * W[wo + k + 1]!;
          s2 += X[xo + k + 2]! * W[wo + k + 2]!;
          s3 += X[xo + k + 3]! * W[wo + k + 3]!;
        }
        for (; k < K; k++) s0 += X[xo + k]! * W[wo + k]!;
        Y[m * N + n] = s0 + s1 + s2 + s3 + (B ? B[n]! : 0);
      }
    }
    return this.make([...x.shape.slice(0, -1), N], Y);
  }

  rmsnorm(x: Tensor, w: Tensor, eps: number): Tensor {
    const D = last(x);
    expectShape("rmsnorm", "w", w, [D]);
    const X = data(x);
    const W = data(w);
    const Y = this.alloc(X.length);
    const R = rows(x);
    for (let r = 0; r < R; r++) {
      let ss = 0;
      for (let i = 0; i < D; i++) ss += X[r * D + i]! * X[r * D + i]!;
      const inv = 1 / Math.sqrt(ss / D + eps);
      for (let i = 0; i < D; i++) Y[r * D + i] = X[r * D + i]! * inv * W[i]!;
    }
    return this.make(x.shape, Y);
  }

  rope(x: Tensor, positions: Int32Array, invFreq: Float64Array, rotaryDims?: number): Tensor {
    const [T, H, Dh] = x.shape as [number, number, number];
    const rd = rotaryDims ?? Dh;
    const half = rd / 2;
    const perHead = H > 1 && invFreq.length === H * half;
    if (rd % 2 !== 0 || rd > Dh || (invFreq.length !== half && invFreq.length !== H * half))
      throw new MlaError("BAD_ARGUMENT", `rope: ${invFreq.length} frequencies for x [${x.shape}] with ${rd} rotary dims`, "pass rotaryDims/2 frequencies, or H × rotaryDims/2");
    expectShape("rope", "x", x, [positions.length, null, null]);
    const X = data(x);
    const Y = this.clone(X);
    const nSets = perHead ? H : 1;
    const cos = new Float64Array(nSets * half);
    const sin = new Float64Array(nSets * half);
    for (let t = 0; t < T; t++) {
      for (let j = 0; j < nSets * half; j++) {
        // HF computes the angle in float32; rounding it the same way keeps long positions in step.
        const a = Math.fround(positions[t]! * Math.fround(invFreq[j]!));
        cos[j] = Math.cos(a);
        sin[j] = Math.sin(a);
      }
      for (let h = 0; h < H; h++) {
        const o = (t * H + h) * Dh;
        const f = perHead ? h * half : 0;
        for (let i = 0; i < half; i++) {
          const a = X[o + i]!;
          const b = X[o + i + half]!;
          Y[o + i] = a * cos[f + i]! - b * sin[f + i]!;
          Y[o + i + half] = b * cos[f + i]! + a * sin[f + i]!;
        }
      }
    }
    return this.make(x.shape, Y);
  }

  concatLast(a: Tensor, b: Tensor): Tensor {
    const A = last(a);
    const Bn = last(b);
    const R = rows(a);
    if (a.shape.length !== b.shape.length || a.shape.slice(0, -1).some((d, i) => d !== b.shape[i]))
      throw new MlaError("BAD_ARGUMENT", `concatLast: [${a.shape}] and [${b.shape}] differ before the last axis`, "this is a bug in the caller");
    const X = data(a);
    const Z = data(b);
    const Y = this.alloc(R * (A + Bn));
    for (let r = 0; r < R; r++) {
      Y.set(X.subarray(r * A, (r + 1) * A), r * (A + Bn));
      Y.set(Z.subarray(r * Bn, (r + 1) * Bn), r * (A + Bn) + A);
    }
    return this.make([...a.shape.slice(0, -1), A + Bn], Y);
  }

  attentionDecodeBatch(q: Tensor, k: readonly Tensor[], v: readonly Tensor[], opts: DecodeBatchOptions): Tensor {
    return attentionDecodeByRows(this, q, k, v, opts);
  }

  latentAttentionDecodeBatch(qr: Tensor, kr: readonly Tensor[], qc: Tensor, c: readonly Tensor[], opts: DecodeBatchOptions): Tensor {
    return latentAttentionDecodeByRows(this, qr, kr, qc, c, opts);
  }

  latentAttention(qr: Tensor, kr: Tensor, qc: Tensor, c: Tensor, opts: AttentionOptions): Tensor {
    const { T, H, Dr, S, Hkv, L } = latentAttentionDims(qr, kr, qc, c);
    attentionWindow("latentAttention", opts.window);
    const group = H / Hkv;
    const QR = data(qr);
    const KR = data(kr);
    const QC = data(qc);
    const C = data(c);
    const O = this.alloc(T * H * L);
    const scores = new Float64Array(S);
    const acc = new Float64Array(L);
    for (let t = 0; t < T; t++) {
      const [lo, hi] = visibleKeys(t, S, opts);
      for (let h = 0; h < H; h++) {
        const kh = Math.floor(h / group);
        const qro = (t * H + h) * Dr;
        const qco = (t * H + h) * L;
        let max = -Infinity;
        for (let s = lo; s <= hi; s++) {
          let dot = 0;
          const ko = (s * Hkv + kh) * Dr;
          for (let d = 0; d < Dr; d++) dot += QR[qro + d]! * KR[ko + d]!;
          const co = s * L;
          for (let d = 0; d < L; d++) dot += QC[qco + d]! * C[co + d]!;
          scores[s] = dot * opts.scale;
          if (scores[s]! > max) max = scores[s]!;
        }
        let denom = 0;
        acc.fill(0);
        for (let s = lo; s <= hi; s++) {
          const p = Math.exp(scores[s]! - max);
          denom += p;
          const co = s * L;
          for (let d = 0; d < L; d++) acc[d] += p * C[co + d]!;
        }
        for (let d = 0; d < L; d++) O[qco + d] = denom > 0 ? acc[d]! / denom : 0;
      }
    }
    return this.make([T, H, L], O);
  }

  attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): Tensor {
    const [T, H, Dh] = q.shape as [number, number, number];
    const [S, Hkv] = k.shape as [number, number];
    const Dv = last(v);
    expectShape("attention", "k", k, [S, Hkv, Dh]);
    expectShape("attention", "v", v, [S, Hkv, Dv]);
    if (H % Hkv !== 0) throw new MlaError("BAD_ARGUMENT", `attention: ${H} query heads do not divide into ${Hkv} KV heads`, "H must be a multiple of Hkv");
    attentionWindow("attention", opts.window);
    const group = H / Hkv;
    const Q = data(q);
    const K = data(k);
    const V = data(v);
    const O = this.alloc(T * H * Dv);
    const scores = new Float64Array(S);
    const acc = new Float64Array(Dv);
    for (let t = 0; t < T; t++) {
      const [lo, hi] = visibleKeys(t, S, opts);
      for (let h = 0; h < H; h++) {
        const kh = Math.floor(h / group);
        const qo = (t * H + h) * Dh;
        let max = -Infinity;
        for (let s = lo; s <= hi; s++) {
          const ko = (s * Hkv + kh) * Dh;
          let dot = 0;
          for (let d = 0; d < Dh; d++) dot += Q[qo + d]! * K[ko + d]!;
          scores[s] = dot * opts.scale;
          if (scores[s]! > max) max = scores[s]!;
        }
        let denom = 0;
        acc.fill(0);
        for (let s = lo; s <= hi; s++) {
          const p = Math.exp(scores[s]! - max);
          denom += p;
          const vo = (s * Hkv + kh) * Dv;
          for (let d = 0; d < Dv; d++) acc[d] += p * V[vo + d]!;
        }
        const oo = (t * H + h) * Dv;
        for (let d = 0; d < Dv; d++) O[oo + d] = denom > 0 ? acc[d]! / denom : 0;
      }
    }
    return this.make([T, H, Dv], O);
  }

  swiglu(gate: Tensor, up: Tensor): Tensor {
    expectShape("swiglu", "up", up, gate.shape);
    const G = data(gate);
    const U = data(up);
    const Y = this.alloc(G.length);
    for (let i = 0; i < G.length; i++) {
      const g = G[i]!;
      Y[i] = (g / (1 + Math.exp(-g))) * U[i]!;
    }
    return this.make(gate.shape, Y);
  }

  add(a: Tensor, b: Tensor): Tensor {
    expectShape("add", "b", b, a.shape);
    const A = data(a);
    const B = data(b);
    const Y = this.alloc(A.length);
    for (let i = 0; i < A.length; i++) Y[i] = A[i]! + B[i]!;
    return this.make(a.shape, Y);
  }

  embedding(table: Tensor, ids: Int32Array): Tensor {
    const [V, D] = table.shape as [number, number];
    const E = data(table);
    const Y = this.alloc(ids.length * D);
    for (let t = 0; t < ids.length; t++) {
      const id = ids[t]!;
      if (!(id >= 0 && id < V)) throw new MlaError("BAD_ARGUMENT", `embedding: token id ${id} at position ${t} is outside the vocabulary of ${V}`, "the tokenizer and the model do not match");
      Y.set(E.subarray(id * D, (id + 1) * D), t * D);
    }
    return this.make([ids.length, D], Y);
  }

  crossEntropy(logits: Tensor, targets: Int32Array): Float64Array {
    const V = last(logits);
    const T = rows(logits);
    checkTargets("crossEntropy", targets, T, V);
    const L = data(logits);
    const out = new Float64Array(T);
    for (let t = 0; t < T; t++) {
      const o = t * V;
      let max = -Infinity;
      for (let i = 0; i < V; i++) if (L[o + i]! > max) max = L[o + i]!;
      let sum = 0;
      for (let i = 0; i < V; i++) sum += Math.exp(L[o + i]! - max);
      out[t] = Math.log(sum) + max - L[o + targets[t]!]!;
    }
    return out;
  }

  headLinear(x: Tensor, w: Tensor): Tensor {
    const { T, H, K, G, N } = headLinearDims(x, w);
    const X = data(x);
    const W = data(w);
    const Y = this.alloc(T * H * N);
    const group = H / G;
    for (let t = 0; t < T; t++)
      for (let h = 0; h < H; h++) {
        const xo = (t * H + h) * K, wo = Math.floor(h / group) * N * K, yo = (t * H + h) * N;
        for (let n = 0; n < N; n++) {
          let s = 0;
          for (let k = 0; k < K; k++) s += X[xo + k]! * W[wo + n * K + k]!;
          Y[yo + n] = s;
        }
      }
    return this.make([T, H, N], Y);
  }

  gatherCols(x: Tensor, idx: Int32Array): Tensor {
    const N = last(x);
    const M = rows(x);
    checkColumns("gatherCols", idx, N);
    const X = data(x);
    const Y = this.alloc(M * idx.length);
    for (let m = 0; m < M; m++) for (let k = 0; k < idx.length; k++) Y[m * idx.length + k] = X[m * N + idx[k]!]!;
    return this.make([...x.shape.slice(0, -1), idx.length], Y);
  }

  scale(x: Tensor, s: number): Tensor {
    const X = data(x);
    const Y = this.alloc(X.length);
    for (let i = 0; i < X.length; i++) Y[i] = X[i]! * s;
    return this.make(x.shape, Y);
  }

  linearBackward(x: Tensor, w: Tensor, dy: Tensor, need: { x: boolean; w: boolean; bias: boolean }) {
    return bw.linearBackward(this, x, w, dy, need);
  }
  rmsnormBackward(x: Tensor, w: Tensor, eps: number, dy: Tensor) {
    return bw.rmsnormBackward(this, x, w, eps, dy);
  }
  ropeBackward(dy: Tensor, positions: Int32Array, invFreq: Float64Array, rotaryDims?: number): Tensor {
    return this.rope(dy, positions.map((p) => -p), invFreq, rotaryDims);
  }
  attentionBackward(q: Tensor, k: Tensor, v: Tensor, dOut: Tensor, opts: AttentionOptions) {
    return bw.attentionBackward(this, q, k, v, dOut, opts);
  }
  swigluBackward(gate: Tensor, up: Tensor, dy: Tensor) {
    return bw.swigluBackward(this, gate, up, dy);
  }
  embeddingBackward(ids: Int32Array, dy: Tensor, vocab: number): Tensor {
    return bw.embeddingBackward(this, ids, dy, vocab);
  }
  crossEntropyBackward(logits: Tensor, targets: Int32Array, scale: number): Tensor {
    return bw.crossEntropyBackward(this, logits, targets, scale);
  }
  klDivergence(student: Tensor, teacher: Tensor, temperature: number, scale: number) {
    return bw.klDivergence(this, student, teacher, temperature, scale);
  }
  scatterCols(dy: Tensor, idx: Int32Array, n: number): Tensor {
    return bw.scatterCols(this, dy, idx, n);
  }
  splitLast(x: Tensor, a: number): [Tensor, Tensor] {
    return bw.splitLast(this, x, a);
  }
}

export const referenceBackend = new ReferenceBackend();
