/**
 * AdamW with float32 master weights (the parameter tensors themselves, updated in place), decoupled
 * weight decay, and global-norm gradient clipping.
 */
import type { OptimizerKernels } from "../backends/native/kernels.js";
import type { FloatArray } from "../tensor/tensor.js";

export interface AdamWConfig {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export class AdamW {
  /** First and second moments per parameter, in parameter order. */
  readonly m: Float32Array[];
  readonly v: Float32Array[];
  step = 0;

  /** `kernels`: native loops for float32 parameters (null: TypeScript, the oracle). */
  constructor(readonly cfg: AdamWConfig, sizes: number[], private readonly kernels: OptimizerKernels | null = null) {
    this.m = sizes.map((n) => new Float32Array(n));
    this.v = sizes.map((n) => new Float32Array(n));
  }

  /** One update of `params` (in place) with `grads`; returns nothing, `step` counts updates. */
  update(params: FloatArray[], grads: (FloatArray | null)[], lr: number): void {
    this.step++;
    const { beta1, beta2, eps, weightDecay } = this.cfg;
    const c1 = 1 - beta1 ** this.step;
    const c2 = 1 - beta2 ** this.step;
    params.forEach((p, i) => {
      const g = grads[i];
      if (!g) return;
      const m = this.m[i]!;
      const v = this.v[i]!;
      if (this.kernels && p instanceof Float32Array && g instanceof Float32Array) return this.kernels.adamw(p, g, m, v, lr, this.cfg, c1, c2, 1);
      for (let j = 0; j < p.length; j++) {
        const gj = g[j]!;
        m[j] = beta1 * m[j]! + (1 - beta1) * gj;
        v[j] = beta2 * v[j]! + (1 - beta2) * gj * gj;
        const mh = m[j]! / c1;
        const vh = v[j]! / c2;
        p[j] = p[j]! - lr * (mh / (Math.sqrt(vh) + eps) + weightDecay * p[j]!);
      }
    });
  }
}

/** Global L2 norm of all gradients. */
export function gradNorm(grads: (FloatArray | null)[], kernels: OptimizerKernels | null = null): number {
  let s = 0;
  for (const g of grads) {
    if (!g) continue;
    if (kernels && g instanceof Float32Array) s += kernels.sumSquares(g);
    else for (let i = 0; i < g.length; i++) s += g[i]! * g[i]!;
  }
  return Math.sqrt(s);
}

/** Scales gradients in place so their global norm is at most `maxNorm`; returns the norm before clipping. */
export function clipGradients(grads: (FloatArray | null)[], maxNorm: number, kernels: OptimizerKernels | null = null): number {
  const n = gradNorm(grads, kernels);
  if (maxNorm > 0 && n > maxNorm) {
    const f = maxNorm / (n + 1e-6);
    for (const g of grads) {
      if (!g) continue;
      if (kernels && g instanceof Float32Array) kernels.scaleInPlace(g, f);
      else for (let i = 0; i < g.length; i++) g[i] = g[i]! * f;
    }
  }
  return n;
}
