/**
 * Truncated factorization A ≈ up · down for the joint/split KV SVD, in float64.
 * Route: the smaller Gram matrix (AᵀA or AAᵀ) and its symmetric eigendecomposition (ml-matrix,
 * Householder tridiagonalization + QL). With AᵀA: down = V_kᵀ, up = A·V_k (so up·down = A·V_k·V_kᵀ,
 * exact projection even where σ is tiny); with AAᵀ: up = U_k·Σ_k, down = Σ_k⁻¹·U_kᵀ·A. In both, Σ
 * lives in the up-projection, as in the MHA2MLA code.
 * Activation-aware variant: factor A·C^{1/2} (C = input covariance), then down ← down·C^{-1/2},
 * which minimizes the output error ‖(A − up·down)·X‖ instead of the weight error.
 */
import { EigenvalueDecomposition, Matrix } from "ml-matrix";
import { MlaError } from "../errors.js";
import { checkFloatsArg, checkObjectArg, checkWholeArg } from "../util/numericArgs.js";
import { activeLinalg as native, type FusedFactors } from "../backends/native/linalg.js";

export interface Factors {
  /** [k, N] row-major. */
  down: Float64Array;
  /** [M, k] row-major. */
  up: Float64Array;
  /** All singular values of the factored matrix, descending. */
  sigma: Float64Array;
  /** Σ_{i<k} σ_i² / Σ σ². */
  energy: number;
}

/** Eigenpairs of a symmetric n×n matrix, descending: values [n], vectors column-major by pair [n][n]. */
export function symmetricEigen(S: Float64Array, n: number): { values: Float64Array; vectors: Float64Array[] } {
  const nat = native();
  if (nat) {
    const { values, vectors } = nat.eigen(S, n);
    return { values, vectors: Array.from({ length: n }, (_, i) => vectors.subarray(i * n, (i + 1) * n)) };
  }
  const m = new Matrix(n, n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) m.set(i, j, S[i * n + j]!);
  const e = new EigenvalueDecomposition(m, { assumeSymmetric: true });
  const vals = e.realEigenvalues;
  const V = e.eigenvectorMatrix;
  const order = vals.map((_, i) => i).sort((a, b) => vals[b]! - vals[a]! || a - b);
  return {
    values: Float64Array.from(order, (i) => vals[i]!),
    vectors: order.map((i) => Float64Array.from({ length: n }, (_, r) => V.get(r, i))),
  };
}

/** AᵀA [N, N] of A [M, N]. */
function gramCols(A: Float64Array, M: number, N: number): Float64Array {
  const nat = native();
  if (nat) return nat.gram(A, M, N);
  const G = new Float64Array(N * N);
  for (let r = 0; r < M; r++) {
    const o = r * N;
    for (let i = 0; i < N; i++) {
      const a = A[o + i]!;
      if (a === 0) continue;
      const gi = i * N;
      for (let j = i; j < N; j++) G[gi + j] += a * A[o + j]!;
    }
  }
  for (let i = 0; i < N; i++) for (let j = 0; j < i; j++) G[i * N + j] = G[j * N + i]!;
  return G;
}

/** AAᵀ [M, M] of A [M, N]. */
function gramRows(A: Float64Array, M: number, N: number): Float64Array {
  const nat = native();
  if (nat) return nat.gram(transpose(A, M, N), N, M);
  const G = new Float64Array(M * M);
  for (let i = 0; i < M; i++)
    for (let j = i; j < M; j++) {
      let s = 0;
      for (let d = 0; d < N; d++) s += A[i * N + d]! * A[j * N + d]!;
      G[i * M + j] = s;
      G[j * M + i] = s;
    }
  return G;
}

/**
 * A factorization's arguments, for a script (the converters pass shapes they built): a NaN or
 * fractional size made a zero or garbage factor, a short A or a Float32Array one read past its end or
 * its bytes as other numbers.
 */
function checkMatrix(where: string, A: unknown, M: number, N: number): void {
  const hint = "pass A as a row-major Float64Array of M·N numbers, then M (rows) and N (columns)";
  checkWholeArg(where, "M", M, 1, hint);
  checkWholeArg(where, "N", N, 1, hint);
  checkFloatsArg(where, `A (${M}×${N})`, A, Float64Array, M * N, hint);
}

function checkRank(M: number, N: number, k: number): void {
  if (!Number.isInteger(k) || k < 1 || k > Math.min(M, N)) throw new MlaError("BAD_ARGUMENT", `truncated SVD rank ${k} is outside 1…${Math.min(M, N)} for a ${M}×${N} matrix`, "lower the rank");
}

/** Factors from a fused route's output (eigenvalues of AᵀA → σ, energy). */
function fromFused(r: FusedFactors, k: number): Factors {
  const sigma = r.values.map((v) => Math.sqrt(Math.max(v, 0)));
  return { down: r.down, up: r.up, sigma, energy: energyOf(sigma, k) };
}

/** Σ_{i<k} σ_i² / Σ σ² (1 for an all-zero matrix). */
export function energyOf(sigma: Float64Array, k: number): number {
  let kept = 0;
  let total = 0;
  sigma.forEach((s, i) => {
    total += s * s;
    if (i < k) kept += s * s;
  });
  return total > 0 ? kept / total : 1;
}

/** truncatedFactor with the heavy part off the JavaScript thread when the route can (CUDA); otherwise the same call. */
export async function truncatedFactorAsync(A: Float64Array, M: number, N: number, k: number): Promise<Factors> {
  checkMatrix("truncatedFactor()", A, M, N);
  checkRank(M, N, k);
  const nat = native();
  if (N <= M && nat?.factorColsAsync) return fromFused(await nat.factorColsAsync(A, M, N, k), k);
  return truncatedFactor(A, M, N, k);
}

export function truncatedFactor(A: Float64Array, M: number, N: number, k: number): Factors {
  checkMatrix("truncatedFactor()", A, M, N);
  checkRank(M, N, k);
  const nat = native();
  if (N <= M && nat?.factorCols) return fromFused(nat.factorCols(A, M, N, k), k);
  const down = new Float64Array(k * N);
  const up = new Float64Array(M * k);
  let sigma: Float64Array;
  if (N <= M) {
    const { values, vectors } = symmetricEigen(gramCols(A, M, N), N);
    sigma = values.map((v) => Math.sqrt(Math.max(v, 0)));
    for (let j = 0; j < k; j++) down.set(vectors[j]!, j * N);
    // up = A·V_k = A·downᵀ
    up.set(matmul(A, transpose(down, k, N), M, N, k));
  } else {
    const { values, vectors } = symmetricEigen(gramRows(A, M, N), M);
    sigma = values.map((v) => Math.sqrt(Math.max(v, 0)));
    const tiny = (sigma[0] ?? 0) * 1e-12;
    const Ut = new Float64Array(k * M); // U_kᵀ [k, M]
    for (let j = 0; j < k; j++) Ut.set(vectors[j]!, j * M);
    const UtA = matmul(Ut, A, k, M, N); // U_kᵀ·A = Σ_k·V_kᵀ
    for (let j = 0; j < k; j++) {
      const s = sigma[j]!;
      for (let r = 0; r < M; r++) up[r * k + j] = Ut[j * M + r]! * s;
      // A null direction (σ ≈ 0) has an up column of ~0, so its down row does not matter: leave it 0.
      if (s > tiny) for (let d = 0; d < N; d++) down[j * N + d] = UtA[j * N + d]! / s;
    }
  }
  return { down, up, sigma, energy: energyOf(sigma, k) };
}

export interface CovarianceRoots {
  sqrt: Float64Array;
  invSqrt: Float64Array;
}

/**
 * The exponent β of the whitening C^{β/2} (MHA2MLA_WHITEN_POWER, default 1: full activation-aware
 * SVD; 0 is the plain weight SVD). An experiment switch (bench/whiten-sweep.sh): on mha26m-debian no
 * β in (0, 1] beat the weight SVD (docs/benchmarks.md), so it is not a flag.
 */
function whitenPower(): number {
  const raw = process.env["MHA2MLA_WHITEN_POWER"];
  const p = raw === undefined ? 1 : Number(raw);
  if (!(p >= 0 && p <= 1)) throw new MlaError("BAD_ARGUMENT", `MHA2MLA_WHITEN_POWER=${raw} is not in [0, 1]`, "unset it for the full activation-aware SVD, or use e.g. 0.5");
  return p;
}

/**
 * C^{β/2} and C^{-β/2} of a covariance [N, N] (β = 1 unless MHA2MLA_WHITEN_POWER says otherwise),
 * eigenvalues floored at 1e-6·max (a ridge for dead directions).
 */
export function covarianceRoots(C: Float64Array, N: number): CovarianceRoots {
  const hint = "pass the covariance as a row-major Float64Array of N·N numbers, then N";
  checkWholeArg("covarianceRoots()", "N", N, 1, hint);
  checkFloatsArg("covarianceRoots()", `C (${N}×${N})`, C, Float64Array, N * N, hint);
  const half = whitenPower() / 2;
  const { values, vectors } = symmetricEigen(C, N);
  const floor = Math.max(values[0] ?? 0, 1e-30) * 1e-6;
  const sqrt = new Float64Array(N * N);
  const invSqrt = new Float64Array(N * N);
  for (let e = 0; e < N; e++) {
    const lam = Math.max(values[e]!, floor);
    const s = half === 0.5 ? Math.sqrt(lam) : Math.pow(lam, half);
    const v = vectors[e]!;
    for (let i = 0; i < N; i++)
      for (let j = 0; j < N; j++) {
        const p = v[i]! * v[j]!;
        sqrt[i * N + j] += p * s;
        invSqrt[i * N + j] += p / s;
      }
  }
  return { sqrt, invSqrt };
}

/** Activation-aware factorization of A [M, N] given the roots of the input covariance. */
export function whitenedFactor(A: Float64Array, M: number, N: number, k: number, roots: CovarianceRoots): Factors {
  checkMatrix("whitenedFactor()", A, M, N);
  checkRoots("whitenedFactor()", roots, N);
  const B = matmul(A, roots.sqrt, M, N, N);
  const f = truncatedFactor(B, M, N, k);
  return { ...f, down: matmul(f.down, roots.invSqrt, k, N, N) };
}

/** Refuses `roots` unless it is covarianceRoots' result for N×N (a missing one failed as "reading 'sqrt'", another size read past its end). */
export function checkRoots(where: string, roots: unknown, N: number): void {
  const hint = `pass covarianceRoots(C, ${N}) of the input covariance C [${N}, ${N}]`;
  checkObjectArg(where, "the roots", roots, hint);
  checkFloatsArg(where, "roots.sqrt", roots["sqrt"], Float64Array, N * N, hint);
  checkFloatsArg(where, "roots.invSqrt", roots["invSqrt"], Float64Array, N * N, hint);
}

/** Xᵀ [cols, rows] of X [rows, cols]. */
export function transpose(X: Float64Array, rows: number, cols: number): Float64Array {
  const T = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) T[c * rows + r] = X[r * cols + c]!;
  return T;
}

/** X [a, b] · Y [b, c] → [a, c]. */
export function matmul(X: Float64Array, Y: Float64Array, a: number, b: number, c: number): Float64Array {
  const nat = native();
  if (nat) return nat.matmul(X, Y, a, b, c);
  const Z = new Float64Array(a * c);
  for (let i = 0; i < a; i++)
    for (let t = 0; t < b; t++) {
      const x = X[i * b + t]!;
      if (x === 0) continue;
      const yo = t * c;
      const zo = i * c;
      for (let j = 0; j < c; j++) Z[zo + j] += x * Y[yo + j]!;
    }
  return Z;
}
