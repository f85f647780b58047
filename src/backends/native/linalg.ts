/**
 * The float64 routines of the conversion SVD (Gram, product, symmetric eigen) behind one interface,
 * served by the native CPU library or the CUDA library. `useLinalg` picks the route: inside a
 * `linalgScope` (each conversion runs in its own) for that scope only, so conversions running
 * concurrently in one process (a script converting on the GPU and on the CPU at once) each keep theirs;
 * outside any scope, the process default (tests and benchmarks). null means the TypeScript route
 * (ml-matrix).
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { nativeLinalg } from "./cpu.js";

export interface Linalg {
  readonly name: string;
  /** G[N,N] = AᵀA for A[M,N]. */
  gram(A: Float64Array, M: number, N: number): Float64Array;
  /** Eigenpairs of symmetric S[n,n], values descending; eigenvector i in row i of `vectors`. */
  eigen(S: Float64Array, n: number): { values: Float64Array; vectors: Float64Array };
  /** Z[a,c] = X[a,b]·Y[b,c]. */
  matmul(X: Float64Array, Y: Float64Array, a: number, b: number, c: number): Float64Array;
  /** Optional fused rank-k factorization of A[M,N], N ≤ M: down[k,N] (top eigenvectors of AᵀA), up = A·downᵀ [M,k], all eigenvalues of AᵀA descending. */
  factorCols?(A: Float64Array, M: number, N: number, k: number): FusedFactors;
  /** The same off the JavaScript thread (reading and writing go on meanwhile). */
  factorColsAsync?(A: Float64Array, M: number, N: number, k: number): Promise<FusedFactors>;
  /**
   * Optional: a layer's whole joint factorization from its float32 projections wk [rowsK, D] and
   * wv [Mv, D], A = [wk rows `nopeRows`; wv] built where the factoring runs (no float64 copy on the
   * host); down [k, D] and up [Mk+Mv, k] in float32, eigenvalues of AᵀA descending. Needs D ≤ Mk+Mv.
   */
  factorKvAsync?(wk: Float32Array, wv: Float32Array, D: number, nopeRows: Int32Array, k: number): Promise<{ down: Float32Array; up: Float32Array; values: Float64Array }>;
}

export interface FusedFactors {
  down: Float64Array;
  up: Float64Array;
  values: Float64Array;
}

let chosen: Linalg | null | undefined;
const scope = new AsyncLocalStorage<{ linalg?: Linalg | null }>();

/** Runs `fn` and everything it awaits in a route scope of its own (useLinalg inside it sets that scope's). */
export function linalgScope<T>(fn: () => Promise<T>): Promise<T> {
  return scope.run({}, fn);
}

/** Sets the route of the current scope (or the process default outside one); undefined restores the default (native CPU when built). */
export function useLinalg(l: Linalg | null | undefined): void {
  const s = scope.getStore();
  if (s) s.linalg = l;
  else chosen = l;
}

/** The route set for the current scope, else the process default's; undefined when neither was set. */
export function chosenLinalg(): Linalg | null | undefined {
  const s = scope.getStore();
  return s && s.linalg !== undefined ? s.linalg : chosen;
}

/**
 * The float64 routines to use now: the converter's choice for this process (CUDA when converting on
 * the GPU, null for TypeScript), else the native CPU library unless MHA2MLA_SKIP_NATIVE_LINALG is set
 * (tests compare both routes), else null.
 */
export function activeLinalg(): Linalg | null {
  const c = chosenLinalg();
  if (c !== undefined) return c;
  return process.env["MHA2MLA_SKIP_NATIVE_LINALG"] ? null : (nativeLinalg() ?? null);
}
