/**
 * The native CPU library's host-array loops (optimizer step, calibration reductions), which
 * NativeCpuBackend offers as its optimizerLoops and its calibration. The callers keep their
 * TypeScript loops as the fallback and the test oracle.
 */
import { MlaError } from "../../errors.js";
import type { CalibrationKernels } from "../../tensor/backend.js";
import type { NativeCpuBackend } from "./cpu.js";

export interface AdamWHyper {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export interface OptimizerKernels {
  /** One AdamW step in place on p with gradient g · gradScale (g unchanged) and moments m, v; c1, c2 are the bias corrections. */
  adamw(p: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, lr: number, h: AdamWHyper, c1: number, c2: number, gradScale: number): void;
  sumSquares(x: Float32Array): number;
  scaleInPlace(x: Float32Array, s: number): void;
}

function checker(b: NativeCpuBackend) {
  return (op: string, status: number) => {
    if (status !== 0) throw new MlaError("BAD_ARGUMENT", `native ${op} failed: ${b.lib.lastError()}`, "this is a bug; re-run with --device reference to compare");
  };
}

export function optimizerKernels(backend: NativeCpuBackend): OptimizerKernels {
  const lib = backend.lib;
  const ok = checker(backend);
  const out = new Float64Array(1);
  return {
    adamw: (p, g, m, v, lr, h, c1, c2, gradScale) => ok("adamw", lib.adamw(p, g, m, v, p.length, lr, h.beta1, h.beta2, h.eps, h.weightDecay, c1, c2, gradScale)),
    sumSquares: (x) => {
      ok("sum_squares", lib.sumSquares(x, x.length, out));
      return out[0]!;
    },
    scaleInPlace: (x, s) => ok("scale_inplace", lib.scaleInplace(x, x.length, s)),
  };
}

export function calibrationKernels(backend: NativeCpuBackend): CalibrationKernels {
  const lib = backend.lib;
  const ok = checker(backend);
  return {
    pairNorms: (y, T, heads, Dh, acc) => ok("pair_norms", lib.pairNorms(y.toArray(), acc, T, heads, Dh)),
    covariance: (x, T, D, acc) => ok("accumulate_covariance", lib.accumulateCovariance(x, acc, T, D)),
  };
}

