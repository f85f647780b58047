/**
 * A tensor is a shape plus a backend-owned storage handle. Host values are read only through
 * `toArray()`, so a GPU backend can keep data on the device.
 */
import { MlaError } from "../errors.js";
import type { Backend } from "./backend.js";

/**
 * Element type of the storage: "bf16" only for weights a GPU backend keeps in bf16 (see Backend.uploadBf16);
 * "int8" / "int4": a quantized decode cache's rows on a device (kvQuant.ts); no op reads them as numbers but the decode attention.
 */
export type TensorDType = "f32" | "f64" | "bf16" | "int8" | "int4";
export type FloatArray = Float32Array | Float64Array;

export class Tensor {
  constructor(
    readonly backend: Backend,
    readonly shape: readonly number[],
    readonly storage: unknown,
    readonly dtype: TensorDType = "f32",
  ) {}

  get size(): number {
    let n = 1;
    for (const d of this.shape) n *= d;
    return n;
  }

  toArray(): FloatArray {
    return this.backend.download(this);
  }

  /** Same storage, another shape with the same element count. */
  reshape(shape: readonly number[]): Tensor {
    let n = 1;
    for (const d of shape) n *= d;
    if (n !== this.size) throw new MlaError("BAD_ARGUMENT", `cannot reshape [${this.shape}] to [${shape}]`, "element counts must match");
    return new Tensor(this.backend, shape, this.storage, this.dtype);
  }

  dispose(): void {
    this.backend.free(this);
  }
}

/** Throws a shape error naming the op, the argument, what was given and what was expected. */
export function expectShape(op: string, arg: string, t: Tensor, want: readonly (number | null)[]): void {
  const ok = t.shape.length === want.length && want.every((w, i) => w === null || w === t.shape[i]);
  if (!ok) throw new MlaError("BAD_ARGUMENT", `${op}: ${arg} has shape [${t.shape}], expected [${want.map((w) => w ?? "*")}]`, "this is a bug in the caller or a checkpoint that does not match its config");
}
