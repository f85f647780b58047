/**
 * The TypeScript reference backend: float32 storage, float64 accumulation. It is the oracle the
 * native backends are tested against, so every op is written for clarity first; the inner loops are
 * kept contiguous and 4-way unrolled because it also serves as the default backend for small models.
 */
import { MlaError } from "../../errors.js";
import type { AttentionOptions, Backend } from "../../tensor/backend.js";
import { Tensor, expectShape } from "../../tensor/tensor.js";

function data(t: Tensor): Float32Array {
  return t.storage as Float32Array;
}

function last(t: Tensor): number {
  return t.shape[t.shape.length - 1]!;
}

export class ReferenceBackend implements Backend {
  readonly name = "reference";

  upload(values: Float32Array, shape: readonly number[]): Tensor {
    const t = new Tensor(this, shape, values);
    if (t.size !== values.length) throw new MlaError("BAD_ARGUMENT", `upload: ${values.length} values for shape [${shape}]`, "shape and data length must agree");
    return t;
  }

  download(t: Tensor): Float32Array {
    return data(t);
  }

  free(): void {}

  private make(shape: readonly number[], values?: Float32Array): Tensor {
    let n = 1;
    for (const d of shape) n *= d;
    return new Tensor(this, shape, values ?? new Float32Array(n));
  }

  linear(x: Tensor, w: Tensor, bias?: Tensor | null): Tensor {
    const K = last(x);
    const M = x.size / K;
    const N = w.shape[0]!;
    expectShape("linear", "w", w, [N, K]);
    if (bias) expectShape("linear", "bias", bias, [N]);
    const X = data(x);
    const W = data(w);
    const B = bias ? data(bias) : null;
    const Y = new Float32Array(M * N);
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
    const Y = new Float32Array(X.length);
    for (let r = 0; r < X.length / D; r++) {
      let ss = 0;
      for (let i = 0; i < D; i++) ss += X[r * D + i]! * X[r * D + i]!;
      const inv = 1 / Math.sqrt(ss / D + eps);
      for (let i = 0; i < D; i++) Y[r * D + i] = X[r * D + i]! * inv * W[i]!;
    }
    return this.make(x.shape, Y);
  }

  rope(x: Tensor, positions: Int32Array, invFreq: Float64Array): Tensor {
    const [T, H, Dh] = x.shape as [number, number, number];
    expectShape("rope", "x", x, [positions.length, null, invFreq.length * 2]);
    const half = Dh / 2;
    const X = data(x);
    const Y = new Float32Array(X.length);
    const cos = new Float64Array(half);
    const sin = new Float64Array(half);
    for (let t = 0; t < T; t++) {
      for (let i = 0; i < half; i++) {
        // HF computes the angle in float32; rounding it the same way keeps long positions in step.
        const a = Math.fround(positions[t]! * Math.fround(invFreq[i]!));
        cos[i] = Math.cos(a);
        sin[i] = Math.sin(a);
      }
      for (let h = 0; h < H; h++) {
        const o = (t * H + h) * Dh;
        for (let i = 0; i < half; i++) {
          const a = X[o + i]!;
          const b = X[o + i + half]!;
          Y[o + i] = a * cos[i]! - b * sin[i]!;
          Y[o + i + half] = b * cos[i]! + a * sin[i]!;
        }
      }
    }
    return this.make(x.shape, Y);
  }

  attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): Tensor {
    const [T, H, Dh] = q.shape as [number, number, number];
    const [S, Hkv] = k.shape as [number, number];
    const Dv = last(v);
    expectShape("attention", "k", k, [S, Hkv, Dh]);
    expectShape("attention", "v", v, [S, Hkv, Dv]);
    if (H % Hkv !== 0) throw new MlaError("BAD_ARGUMENT", `attention: ${H} query heads do not divide into ${Hkv} KV heads`, "H must be a multiple of Hkv");
    const group = H / Hkv;
    const Q = data(q);
    const K = data(k);
    const V = data(v);
    const O = new Float32Array(T * H * Dv);
    const scores = new Float64Array(S);
    const acc = new Float64Array(Dv);
    for (let t = 0; t < T; t++) {
      const qpos = t + opts.queryOffset;
      const hi = Math.min(S - 1, qpos);
      const lo = opts.window === null ? 0 : Math.max(0, qpos - opts.window + 1);
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
    const Y = new Float32Array(G.length);
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
    const Y = new Float32Array(A.length);
    for (let i = 0; i < A.length; i++) Y[i] = A[i]! + B[i]!;
    return this.make(a.shape, Y);
  }

  embedding(table: Tensor, ids: Int32Array): Tensor {
    const [V, D] = table.shape as [number, number];
    const E = data(table);
    const Y = new Float32Array(ids.length * D);
    for (let t = 0; t < ids.length; t++) {
      const id = ids[t]!;
      if (!(id >= 0 && id < V)) throw new MlaError("BAD_ARGUMENT", `embedding: token id ${id} at position ${t} is outside the vocabulary of ${V}`, "the tokenizer and the model do not match");
      Y.set(E.subarray(id * D, (id + 1) * D), t * D);
    }
    return this.make([ids.length, D], Y);
  }

  crossEntropy(logits: Tensor, targets: Int32Array): Float64Array {
    const V = last(logits);
    const T = logits.size / V;
    if (targets.length !== T) throw new MlaError("BAD_ARGUMENT", `crossEntropy: ${targets.length} targets for ${T} rows`, "one target per row");
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
}

export const referenceBackend = new ReferenceBackend();
