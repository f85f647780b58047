/**
 * Every forward op of the Backend interface written as the plainest float64 loops, straight from the
 * definitions in src/tensor/backend.ts: the oracle the CPU backends are checked against in
 * cpuOps.test.ts (the reference backend is an optimized oracle itself, so it is checked here too).
 * Arrays are flat, row-major, in the shapes the interface names.
 */
type A = ArrayLike<number>;

/** y[M,N] = x[M,K]·w[N,K]ᵀ (+ b[N]). */
export function linear(x: A, w: A, b: A | null, M: number, K: number, N: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = b ? b[n]! : 0;
      for (let k = 0; k < K; k++) s += x[m * K + k]! * w[n * K + k]!;
      y[m * N + n] = s;
    }
  return y;
}

/** y[T,H,N], y[t,h] = w[h / (H/G)]·x[t,h] for x [T,H,K], w [G,N,K]. */
export function headLinear(x: A, w: A, T: number, H: number, G: number, K: number, N: number): Float64Array {
  const y = new Float64Array(T * H * N);
  for (let t = 0; t < T; t++)
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / (H / G));
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += x[(t * H + h) * K + k]! * w[(g * N + n) * K + k]!;
        y[(t * H + h) * N + n] = s;
      }
    }
  return y;
}

export function rmsnorm(x: A, w: A, eps: number, R: number, D: number): Float64Array {
  const y = new Float64Array(R * D);
  for (let r = 0; r < R; r++) {
    let ss = 0;
    for (let i = 0; i < D; i++) ss += x[r * D + i]! ** 2;
    const rms = Math.sqrt(ss / D + eps);
    for (let i = 0; i < D; i++) y[r * D + i] = (x[r * D + i]! / rms) * w[i]!;
  }
  return y;
}

/**
 * Rotate-half RoPE on x [T,H,Dh]: pair (i, i + rd/2) of the first rd dims turned by positions[t]·f,
 * f = invFreq[i] (or invFreq[h·rd/2 + i] per head). The angle is the float32 product HF computes
 * (Backend.rope's contract: long positions stay in step with PyTorch); the rotation is float64.
 */
export function rope(x: A, positions: Int32Array, invFreq: Float64Array, T: number, H: number, Dh: number, rd = Dh): Float64Array {
  const half = rd / 2;
  const perHead = H > 1 && invFreq.length === H * half;
  const y = Float64Array.from(x);
  for (let t = 0; t < T; t++)
    for (let h = 0; h < H; h++)
      for (let i = 0; i < half; i++) {
        const a = Math.fround(positions[t]! * Math.fround(invFreq[(perHead ? h * half : 0) + i]!));
        const o = (t * H + h) * Dh;
        const [u, v] = [x[o + i]!, x[o + i + half]!];
        y[o + i] = u * Math.cos(a) - v * Math.sin(a);
        y[o + i + half] = v * Math.cos(a) + u * Math.sin(a);
      }
  return y;
}

/**
 * softmax over the keys query row t may see (causal from t + off, at most `window` behind), of
 * score(t, h, s)·scale, weighting value(s, h) [Dv]: the shape of both attentions. A row that sees
 * no key gives zeros.
 */
function attend(T: number, H: number, S: number, Dv: number, off: number, window: number | null, scale: number, score: (t: number, h: number, s: number) => number, value: (s: number, h: number, e: number) => number): Float64Array {
  const o = new Float64Array(T * H * Dv);
  for (let t = 0; t < T; t++)
    for (let h = 0; h < H; h++) {
      const qpos = t + off;
      const seen: number[] = [];
      for (let s = 0; s < S; s++) if (s <= qpos && (window === null || qpos - s < window)) seen.push(s);
      if (seen.length === 0) continue;
      const sc = seen.map((s) => score(t, h, s) * scale);
      const mx = Math.max(...sc);
      const p = sc.map((x) => Math.exp(x - mx));
      const z = p.reduce((a, b) => a + b, 0);
      for (let e = 0; e < Dv; e++) o[(t * H + h) * Dv + e] = seen.reduce((acc, s, j) => acc + (p[j]! / z) * value(s, h, e), 0);
    }
  return o;
}

/** Causal GQA attention: q [T,H,Dh], k [S,Hkv,Dh], v [S,Hkv,Dv] → [T,H,Dv]. */
export function attention(q: A, k: A, v: A, d: { T: number; S: number; H: number; Hkv: number; Dh: number; Dv: number }, opts: { scale: number; queryOffset: number; window: number | null }): Float64Array {
  const { T, S, H, Hkv, Dh, Dv } = d;
  const kh = (h: number) => Math.floor(h / (H / Hkv));
  const score = (t: number, h: number, s: number) => {
    let x = 0;
    for (let i = 0; i < Dh; i++) x += q[(t * H + h) * Dh + i]! * k[(s * Hkv + kh(h)) * Dh + i]!;
    return x;
  };
  return attend(T, H, S, Dv, opts.queryOffset, opts.window, opts.scale, score, (s, h, e) => v[(s * Hkv + kh(h)) * Dv + e]!);
}

/** MLA attention on the latent cache: scores (qr·kr + qc·c)·scale, values c; qr [T,H,Dr], kr [S,Hkv,Dr], qc [T,H,L], c [S,L] → [T,H,L]. */
export function latentAttention(qr: A, kr: A, qc: A, c: A, d: { T: number; S: number; H: number; Hkv: number; Dr: number; L: number }, opts: { scale: number; queryOffset: number; window: number | null }): Float64Array {
  const { T, S, H, Hkv, Dr, L } = d;
  const score = (t: number, h: number, s: number) => {
    let x = 0;
    const kh = Math.floor(h / (H / Hkv));
    for (let i = 0; i < Dr; i++) x += qr[(t * H + h) * Dr + i]! * kr[(s * Hkv + kh) * Dr + i]!;
    for (let i = 0; i < L; i++) x += qc[(t * H + h) * L + i]! * c[s * L + i]!;
    return x;
  };
  return attend(T, H, S, L, opts.queryOffset, opts.window, opts.scale, score, (s, _h, e) => c[s * L + e]!);
}

export const swiglu = (g: A, u: A): Float64Array => Float64Array.from(g, (x, i) => (x / (1 + Math.exp(-x))) * u[i]!);

/** Per row of logits [T,V]: −log softmax[target]. */
export function crossEntropy(logits: A, targets: Int32Array, V: number): Float64Array {
  return Float64Array.from(targets, (y, t) => {
    const row = Array.from({ length: V }, (_, i) => logits[t * V + i]!);
    const mx = Math.max(...row);
    return Math.log(row.reduce((a, x) => a + Math.exp(x - mx), 0)) + mx - row[y]!;
  });
}

/** Row-wise softmax of x/temp. */
export function softmax(x: A, V: number, temp = 1): Float64Array {
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / V; r++) {
    const row = Array.from({ length: V }, (_, i) => x[r * V + i]! / temp);
    const mx = Math.max(...row);
    const z = row.reduce((a, v) => a + Math.exp(v - mx), 0);
    row.forEach((v, i) => (out[r * V + i] = Math.exp(v - mx) / z));
  }
  return out;
}

/** scale·(softmax − onehot(target)). */
export function crossEntropyGrad(logits: A, targets: Int32Array, V: number, scale: number): Float64Array {
  const p = softmax(logits, V);
  targets.forEach((y, t) => (p[t * V + y] -= 1));
  return p.map((x) => x * scale);
}

/** Per row T²·KL(softmax(teacher/T) ‖ softmax(student/T)) (0·log 0 = 0), and scale·T·(p_s − p_t). */
export function klDivergence(student: A, teacher: A, V: number, temp: number, scale: number): { loss: Float64Array; grad: Float64Array } {
  const ps = softmax(student, V, temp), pt = softmax(teacher, V, temp);
  const loss = new Float64Array(student.length / V);
  for (let r = 0; r < loss.length; r++)
    for (let i = 0; i < V; i++) {
      const a = pt[r * V + i]!;
      if (a > 0) loss[r] += temp * temp * a * Math.log(a / ps[r * V + i]!);
    }
  return { loss, grad: ps.map((x, i) => scale * temp * (x - pt[i]!)) };
}

/** Rows of table [V,D] at ids. */
export const embedding = (table: A, ids: Int32Array, D: number): Float64Array => Float64Array.from({ length: ids.length * D }, (_, i) => table[ids[Math.floor(i / D)]! * D + (i % D)]!);

/** dtable [V,D]: rows of dy [T,D] added at ids. */
export function embeddingGrad(ids: Int32Array, dy: A, V: number, D: number): Float64Array {
  const out = new Float64Array(V * D);
  ids.forEach((id, t) => {
    for (let d = 0; d < D; d++) out[id * D + d] += dy[t * D + d]!;
  });
  return out;
}

/** Columns idx of x [M,N] → [M,K]. */
export const gatherCols = (x: A, idx: Int32Array, M: number, N: number): Float64Array => Float64Array.from({ length: M * idx.length }, (_, i) => x[Math.floor(i / idx.length) * N + idx[i % idx.length]!]!);

/** dy [M,K] added into the columns idx of a zero [M,N]. */
export function scatterCols(dy: A, idx: Int32Array, M: number, N: number): Float64Array {
  const out = new Float64Array(M * N);
  for (let m = 0; m < M; m++) idx.forEach((j, k) => (out[m * N + j] += dy[m * idx.length + k]!));
  return out;
}

/** [a | b] along the last axis, R rows. */
export function concatLast(a: A, b: A, R: number, Aw: number, Bw: number): Float64Array {
  const out = new Float64Array(R * (Aw + Bw));
  for (let r = 0; r < R; r++) for (let i = 0; i < Aw + Bw; i++) out[r * (Aw + Bw) + i] = i < Aw ? a[r * Aw + i]! : b[r * Bw + i - Aw]!;
  return out;
}
