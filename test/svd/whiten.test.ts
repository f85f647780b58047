/**
 * The whitening of activation-aware SVD: C^{1/2}·C^{-1/2} = I, and the MHA2MLA_WHITEN_POWER experiment
 * switch (β = 0: the plain weight SVD's identity roots; outside [0, 1]: a clear error).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { covarianceRoots, matmul } from "../../src/svd/truncated.js";
import { MlaError } from "../../src/errors.js";

// A symmetric positive definite [3, 3].
const C = Float64Array.of(4, 1, 0.5, 1, 3, 0.2, 0.5, 0.2, 2);
const close = (a: Float64Array, b: Float64Array) => a.every((x, i) => Math.abs(x - b[i]!) < 1e-12);
const I3 = Float64Array.of(1, 0, 0, 0, 1, 0, 0, 0, 1);

test("covarianceRoots: sqrt·sqrt = C and sqrt·invSqrt = I; β = 0 gives the identity; β outside [0, 1] is refused", () => {
  const r = covarianceRoots(C, 3);
  assert.ok(close(matmul(r.sqrt, r.sqrt, 3, 3, 3), C));
  assert.ok(close(matmul(r.sqrt, r.invSqrt, 3, 3, 3), I3));
  try {
    process.env["MHA2MLA_WHITEN_POWER"] = "0";
    const z = covarianceRoots(C, 3);
    assert.ok(close(z.sqrt, I3) && close(z.invSqrt, I3));
    process.env["MHA2MLA_WHITEN_POWER"] = "0.5";
    const h = covarianceRoots(C, 3);
    assert.ok(close(matmul(matmul(h.sqrt, h.sqrt, 3, 3, 3), matmul(h.sqrt, h.sqrt, 3, 3, 3), 3, 3, 3), C), "C^{1/4} to the fourth power is C");
    process.env["MHA2MLA_WHITEN_POWER"] = "2";
    assert.throws(() => covarianceRoots(C, 3), (e: Error) => e instanceof MlaError && /MHA2MLA_WHITEN_POWER=2 is not in \[0, 1\]/.test(e.message));
  } finally {
    delete process.env["MHA2MLA_WHITEN_POWER"];
  }
});
