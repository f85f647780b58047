/**
 * The flat training state (Backend.training) over host arrays, for the reference and native CPU
 * backends: views are subarrays, so parameters stay the model's own storage and updates need no copy.
 * The arithmetic is the TypeScript oracle of the CUDA kernels (native/cuda/optim.cu) and of
 * mla_cpu_adamw; `loops` swaps in native loops where the backend has them.
 */
import { MlaError } from "../../errors.js";
import type { TrainingKernels } from "../../tensor/backend.js";
import { Tensor } from "../../tensor/tensor.js";
import type { FloatArray, ReferenceBackend } from "./index.js";
import type { OptimizerKernels } from "../native/kernels.js";

/** The optimizer's native loops where the backend has them (the native CPU library's; one signature, in kernels.ts). */
export type HostOptimizerLoops = OptimizerKernels;

export function hostTraining(b: ReferenceBackend, loops: () => HostOptimizerLoops | null): TrainingKernels {
  const arr = (t: Tensor) => t.storage as FloatArray;
  return {
    zeros(n, what, dtype = "f32") {
      if (dtype !== "f32") throw new MlaError("UNSUPPORTED", `${what}: the ${b.name} backend keeps no bf16 tensors`, "use --precision f32, or --device cuda for bf16");
      return b.make([n]);
    },
    view: (flat, offset, shape) => {
      const n = shape.reduce((x, y) => x * y, 1);
      return new Tensor(b, shape, arr(flat).subarray(offset, offset + n), flat.dtype);
    },
    copyInto: (dst, offset, src) => arr(dst).set(arr(src), offset),
    cast: () => {
      throw new MlaError("UNSUPPORTED", `the ${b.name} backend keeps no bf16 tensors`, "use --precision f32, or --device cuda for bf16");
    },
    addInto(dst, src) {
      const d = arr(dst), s = arr(src);
      if (d.length !== s.length) throw new MlaError("BAD_ARGUMENT", `addInto: [${src.shape}] into [${dst.shape}]`, "this is a bug in the caller");
      for (let i = 0; i < d.length; i++) d[i] = d[i]! + s[i]!;
    },
    fillZero: (t) => arr(t).fill(0),
    sumSquares(t) {
      const x = arr(t);
      const native = loops();
      if (native && x instanceof Float32Array) return native.sumSquares(x);
      let s = 0;
      for (let i = 0; i < x.length; i++) s += x[i]! * x[i]!;
      return s;
    },
    adamw(pt, gt, mt, vt, lr, h, c1, c2, gradScale, shadow) {
      if (shadow) throw new MlaError("UNSUPPORTED", `the ${b.name} backend keeps no bf16 tensors`, "use --precision f32, or --device cuda for bf16");
      const p = arr(pt), g = arr(gt), m = arr(mt), v = arr(vt);
      const native = loops();
      if (native && p instanceof Float32Array && g instanceof Float32Array && m instanceof Float32Array && v instanceof Float32Array)
        return native.adamw(p, g, m, v, lr, h, c1, c2, gradScale);
      const { beta1, beta2, eps, weightDecay } = h;
      for (let j = 0; j < p.length; j++) {
        const gj = g[j]! * gradScale;
        m[j] = beta1 * m[j]! + (1 - beta1) * gj;
        v[j] = beta2 * v[j]! + (1 - beta2) * gj * gj;
        p[j] = p[j]! - lr * (m[j]! / c1 / (Math.sqrt(v[j]! / c2) + eps) + weightDecay * p[j]!);
      }
    },
  };
}
