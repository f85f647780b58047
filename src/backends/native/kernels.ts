/**
 * Host-array kernels outside the Backend interface (optimizer step, calibration reductions), native
 * when the model runs on the native CPU backend, TypeScript otherwise. The callers keep their
 * TypeScript loops as the fallback and the test oracle.
 */
import { MlaError } from "../../errors.js";
import type { Backend } from "../../tensor/backend.js";
import type { Tensor } from "../../tensor/tensor.js";
import { NativeCpuBackend } from "./cpu.js";
import { CudaBackend } from "./cuda.js";

export interface AdamWHyper {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export interface OptimizerKernels {
  /** One AdamW step in place on p with gradient g and moments m, v; c1, c2 are the bias corrections. */
  adamw(p: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, lr: number, h: AdamWHyper, c1: number, c2: number): void;
  sumSquares(x: Float32Array): number;
  scaleInPlace(x: Float32Array, s: number): void;
}

export interface CalibrationKernels {
  /** acc[heads, Dh/2] += mean over T of each RoPE pair's L2 norm in y[T, heads, Dh] (a tensor of the model's backend). */
  pairNorms(y: Tensor, T: number, heads: number, Dh: number, acc: Float64Array): void;
  /** acc[D,D] upper triangle += xᵀx for x[T,D] (null: the TypeScript loop on the downloaded x). */
  covariance: ((x: Float32Array, T: number, D: number, acc: Float64Array) => void) | null;
}

function checker(b: NativeCpuBackend) {
  return (op: string, status: number) => {
    if (status !== 0) throw new MlaError("BAD_ARGUMENT", `native ${op} failed: ${b.lib.lastError()}`, "this is a bug; re-run with --device reference to compare");
  };
}

export function optimizerKernels(backend: Backend): OptimizerKernels | null {
  if (!(backend instanceof NativeCpuBackend)) return null;
  const lib = backend.lib;
  const ok = checker(backend);
  const out = new Float64Array(1);
  return {
    adamw: (p, g, m, v, lr, h, c1, c2) => ok("adamw", lib.adamw(p, g, m, v, p.length, lr, h.beta1, h.beta2, h.eps, h.weightDecay, c1, c2)),
    sumSquares: (x) => {
      ok("sum_squares", lib.sumSquares(x, x.length, out));
      return out[0]!;
    },
    scaleInPlace: (x, s) => ok("scale_inplace", lib.scaleInplace(x, x.length, s)),
  };
}

export function calibrationKernels(backend: Backend): CalibrationKernels | null {
  if (backend instanceof CudaBackend) return { pairNorms: (y, T, heads, Dh, acc) => backend.pairNorms(y, T, heads, Dh, acc), covariance: null };
  if (!(backend instanceof NativeCpuBackend)) return null;
  const lib = backend.lib;
  const ok = checker(backend);
  return {
    pairNorms: (y, T, heads, Dh, acc) => ok("pair_norms", lib.pairNorms(y.toArray(), acc, T, heads, Dh)),
    covariance: (x, T, D, acc) => ok("accumulate_covariance", lib.accumulateCovariance(x, acc, T, D)),
  };
}

