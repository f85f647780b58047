/**
 * Row slicing and stacking for batched decode: one sequence's row of a [B, …] activation, and B
 * per-sequence results back into one [B, …] tensor. Backends that keep tensors in their own memory
 * (CUDA) do both on the device with views and copies; host backends go through arrays.
 */
import type { Backend } from "./backend.js";
import type { Tensor } from "./tensor.js";

/** What a device backend offers for this (CudaBackend). */
interface DeviceRows {
  viewOf(t: Tensor, offset: number, n: number, shape: readonly number[]): Tensor;
  copyElements(dst: Tensor, dstOffset: number, src: Tensor, srcOffset: number, n: number): void;
  empty(shape: readonly number[], what: string): Tensor;
}

function device(b: Backend): DeviceRows | null {
  const d = b as Partial<DeviceRows>;
  return d.viewOf && d.copyElements && d.empty ? (d as DeviceRows) : null;
}

/** Row i of t [B, …rest] as [1, …rest] (a view on device backends: valid while t is). */
export function rowOf(b: Backend, t: Tensor, i: number): Tensor {
  const rest = t.shape.slice(1);
  const n = t.size / t.shape[0]!;
  const d = device(b);
  if (d) return d.viewOf(t, i * n, n, [1, ...rest]);
  return b.upload(t.toArray().slice(i * n, (i + 1) * n), [1, ...rest]);
}

/** parts, each [1, …rest] (or any shape of the same size), stacked into [B, …rest]. */
export function stackRows(b: Backend, parts: readonly Tensor[], rest: readonly number[]): Tensor {
  const n = rest.reduce((x, y) => x * y, 1);
  const d = device(b);
  if (d) {
    const out = d.empty([parts.length, ...rest], "stacked rows");
    parts.forEach((p, i) => d.copyElements(out, i * n, p, 0, n));
    return out;
  }
  const out = new Float32Array(parts.length * n);
  parts.forEach((p, i) => out.set(p.toArray(), i * n));
  return b.upload(out, [parts.length, ...rest]);
}
