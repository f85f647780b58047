/** Checks a float64 linear-algebra route (native CPU or CUDA) against direct sums: Gram, product, eigenpairs. */
import assert from "node:assert/strict";
import type { Linalg } from "../../src/backends/native/linalg.js";
import { seededRand } from "../helpers.js";

export function checkLinalg(L: Pick<Linalg, "gram" | "matmul" | "eigen">, shapes: readonly (readonly [number, number])[], tol: { gram: number; matmul: number }): void {
  const r64 = seededRand(9, Float64Array);
  for (const [M, N] of shapes) {
    const A = r64(M * N);
    const G = L.gram(A, M, N);
    let err = 0;
    for (let i = 0; i < N; i++)
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let r = 0; r < M; r++) s += A[r * N + i]! * A[r * N + j]!;
        err = Math.max(err, Math.abs(G[i * N + j]! - s));
      }
    assert.ok(err < tol.gram, `gram ${M}×${N}: ${err}`);
    const Z = L.matmul(A, G, M, N, N);
    let zerr = 0;
    for (let i = 0; i < M; i++)
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let k = 0; k < N; k++) s += A[i * N + k]! * G[k * N + j]!;
        zerr = Math.max(zerr, Math.abs(Z[i * N + j]! - s));
      }
    assert.ok(zerr < tol.matmul, `matmul: ${zerr}`);
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
}
