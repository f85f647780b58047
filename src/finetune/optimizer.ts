/**
 * AdamW with float32 master weights (the parameter tensors themselves, updated in place), decoupled
 * weight decay, and global-norm gradient clipping.
 */
import type { OptimizerKernels } from "../backends/native/kernels.js";
import type { FloatArray } from "../tensor/tensor.js";
import { MlaError } from "../errors.js";
import { checkObjectArg, checkWholeArg, shown } from "../util/numericArgs.js";

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
    checkAdamWArgs(cfg, sizes);
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

/** AdamW's ranges, as finetune() checks its options: [low, high], and whether each end is open. */
const RANGES: Record<keyof AdamWConfig, readonly [number, number, boolean, boolean]> = { beta1: [0, 1, false, true], beta2: [0, 1, false, true], eps: [0, Infinity, true, true], weightDecay: [0, Infinity, false, true] };

/**
 * The constructor's arguments, for a script (finetune builds them from checked options): no sizes
 * failed as "reading 'map'", a size of -1 as a RangeError, NaN made an empty moment, and a missing or
 * string beta turned every weight NaN at the first update.
 */
function checkAdamWArgs(cfg: AdamWConfig, sizes: number[]): void {
  const hint = "pass new AdamW({ beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.01 }, params.map((p) => p.length))";
  checkObjectArg("new AdamW()", "the config", cfg, hint);
  for (const [key, [lo, hi, openLo, openHi]] of Object.entries(RANGES)) {
    const v = cfg[key as keyof AdamWConfig];
    if (!(typeof v === "number" && (openLo ? v > lo : v >= lo) && (openHi ? v < hi : v <= hi)))
      throw new MlaError("BAD_ARGUMENT", `new AdamW(): ${key} is ${shown(v)}, not a number in ${openLo ? "(" : "["}${lo}, ${hi === Infinity ? "∞" : hi}${openHi ? ")" : "]"}`, hint);
  }
  if (!Array.isArray(sizes)) throw new MlaError("BAD_ARGUMENT", `new AdamW(): the sizes are ${shown(sizes)}, not an array`, hint);
  for (let i = 0; i < sizes.length; i++) checkWholeArg("new AdamW()", `sizes[${i}]`, sizes[i], 0, hint);
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
