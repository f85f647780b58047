/**
 * The least-squares core of the output refit (refitOutput.ts): float64 moments of a layer's
 * calibration tokens, the ridge solve for o_proj, and its error, all from the moments alone.
 *
 * With a native float64 library (`Linalg`, chosen by the converter: the CPU library or cuSOLVER/cuBLAS
 * on the GPU) the solve is an eigendecomposition and two products, and the error one product: at the
 * llama2-7b shape (Hd = D = 4096) the JavaScript loops would take minutes per layer. Without one, a
 * Cholesky factorization with row-major triangular solves (the inner loops run along contiguous rows).
 */
import { MlaError } from "../errors.js";
import type { Linalg } from "../backends/native/linalg.js";
import type { Backend } from "../tensor/backend.js";
import type { Tensor } from "../tensor/tensor.js";
import { transpose } from "../svd/truncated.js";

/** Float64 sums of OᵀO [Hd, Hd], OᵀA [Hd, D] and ‖A‖² over the calibration tokens. */
export class RefitMoments {
  readonly oo: Float64Array;
  readonly oa: Float64Array;
  aa = 0;
  constructor(readonly Hd: number, readonly D: number) {
    this.oo = new Float64Array(Hd * Hd);
    this.oa = new Float64Array(Hd * D);
  }

  /** One window's o [T, Hd] and a [T, D]: the products run on the backend (float32 over the window), the sums on the host. */
  add(b: Backend, o: Tensor, a: Tensor): void {
    const T = o.shape[0]!;
    const av = a.toArray();
    const [ot, at] = [b.upload(transposeF32(o.toArray(), T, this.Hd), [this.Hd, T]), b.upload(transposeF32(av, T, this.D), [this.D, T])];
    const oo = b.linear(ot, ot), oa = b.linear(ot, at);
    addInto(this.oo, oo.toArray());
    addInto(this.oa, oa.toArray());
    for (const v of av) this.aa += v * v;
    for (const t of [ot, at, oo, oa]) t.dispose();
  }

  /** W_o [D, Hd] minimizing Σ‖o·W_oᵀ − a‖² + λ‖W_o‖², λ = ridge · trace(OᵀO)/Hd. */
  solve(ridge: number, linalg?: Linalg | null): Float32Array {
    const { Hd, D } = this;
    const G = Float64Array.from(this.oo);
    let trace = 0;
    for (let i = 0; i < Hd; i++) trace += G[i * Hd + i]!;
    const lambda = (ridge * trace) / Hd || 1e-12;
    for (let i = 0; i < Hd; i++) G[i * Hd + i] += lambda;
    const X = linalg ? eigenSolve(linalg, G, this.oa, Hd, D) : choleskySolve(G, Float64Array.from(this.oa), Hd, D);
    return transposeF32(X, Hd, D);
  }

  /** ‖O·Wᵀ − A‖ / ‖A‖ for W [D, Hd]: (tr(W OᵀO Wᵀ) − 2 tr(W OᵀA) + ‖A‖²)^½ / ‖A‖. */
  relativeError(W: ArrayLike<number>, linalg?: Linalg | null): number {
    const { Hd, D } = this;
    let quad = 0, cross = 0;
    if (linalg) {
      const WG = linalg.matmul(Float64Array.from(W), this.oo, D, Hd, Hd);
      for (let i = 0; i < D * Hd; i++) quad += WG[i]! * W[i]!;
    } else {
      for (let d = 0; d < D; d++) {
        const row = d * Hd;
        for (let i = 0; i < Hd; i++) {
          const wi = W[row + i]!;
          if (wi === 0) continue;
          let g = 0;
          const gi = i * Hd;
          for (let j = 0; j < Hd; j++) g += this.oo[gi + j]! * W[row + j]!;
          quad += wi * g;
        }
      }
    }
    for (let d = 0; d < D; d++) for (let i = 0; i < Hd; i++) cross += W[d * Hd + i]! * this.oa[i * D + d]!;
    return Math.sqrt(Math.max(0, quad - 2 * cross + this.aa) / this.aa);
  }
}

/** X [Hd, D] = G⁻¹·B for symmetric positive definite G [Hd, Hd]: G = V Λ Vᵀ, X = V Λ⁻¹ Vᵀ B. */
function eigenSolve(linalg: Linalg, G: Float64Array, B: Float64Array, Hd: number, D: number): Float64Array {
  const { values, vectors } = linalg.eigen(G, Hd); // eigenvector i in row i: vectors = Vᵀ
  const smallest = values[Hd - 1]!;
  if (!(smallest > 0)) notPositive(`smallest eigenvalue ${smallest}`);
  const Y = linalg.matmul(vectors, B, Hd, Hd, D); // Vᵀ B
  for (let i = 0; i < Hd; i++) {
    const inv = 1 / values[i]!;
    for (let c = 0; c < D; c++) Y[i * D + c] *= inv;
  }
  return linalg.matmul(transpose(vectors, Hd, Hd), Y, Hd, Hd, D);
}

/** X [Hd, D] = G⁻¹·X in place of X, by a lower Cholesky factor and forward/back substitution along rows. */
function choleskySolve(G: Float64Array, X: Float64Array, Hd: number, D: number): Float64Array {
  choleskyInPlace(G, Hd);
  // Row i of X less L[i,k]·row k over all D columns at once: L y = b (k < i), then Lᵀ x = y (k > i, L[k,i]).
  const substitute = (i: number, ks: Iterable<number>, l: (k: number) => number) => {
    const xi = i * D;
    for (const k of ks) {
      const f = l(k);
      if (f === 0) continue;
      const xk = k * D;
      for (let c = 0; c < D; c++) X[xi + c] -= f * X[xk + c]!;
    }
    const inv = 1 / G[i * Hd + i]!;
    for (let c = 0; c < D; c++) X[xi + c] *= inv;
  };
  const range = (from: number, to: number) => ({ *[Symbol.iterator]() { for (let k = from; k < to; k++) yield k; } });
  for (let i = 0; i < Hd; i++) substitute(i, range(0, i), (k) => G[i * Hd + k]!);
  for (let i = Hd - 1; i >= 0; i--) substitute(i, range(i + 1, Hd), (k) => G[k * Hd + i]!);
  return X;
}

/** Lower Cholesky factor of symmetric positive definite G [n, n], in place (upper triangle left as is). */
function choleskyInPlace(G: Float64Array, n: number): void {
  for (let j = 0; j < n; j++) {
    let s = G[j * n + j]!;
    for (let k = 0; k < j; k++) s -= G[j * n + k]! ** 2;
    if (!(s > 0)) notPositive(`pivot ${j}: ${s}`);
    const d = Math.sqrt(s);
    G[j * n + j] = d;
    for (let i = j + 1; i < n; i++) {
      let t = G[i * n + j]!;
      for (let k = 0; k < j; k++) t -= G[i * n + k]! * G[j * n + k]!;
      G[i * n + j] = t / d;
    }
  }
}

function notPositive(what: string): never {
  throw new MlaError("BAD_ARGUMENT", `output refit: the calibration moments are not positive definite (${what})`, "raise --calib-samples, or convert without --refit-output");
}

/** transpose (svd/truncated.ts) into float32: what the backend's products and the checkpoint take. */
function transposeF32(x: ArrayLike<number>, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = x[r * cols + c]!;
  return out;
}

function addInto(acc: Float64Array, x: ArrayLike<number>): void {
  for (let i = 0; i < acc.length; i++) acc[i] += x[i]!;
}
