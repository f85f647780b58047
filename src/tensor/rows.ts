/**
 * Row slicing and stacking for batched decode: one sequence's row of a [B, …] activation, and B
 * per-sequence results back into one [B, …] tensor. Backends that keep tensors in their own memory
 * (CUDA) do both on the device with views and copies; host backends go through arrays.
 */
import { attentionDecodeBatchDims, latentAttentionDecodeBatchDims, type Backend, type DecodeBatchOptions } from "./backend.js";
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
  const arrays = parts.map((p) => p.toArray());
  // Keep float64 rows float64 (the reference backend's finite-difference and decode checks run in it).
  const out = arrays[0] instanceof Float64Array ? new Float64Array(parts.length * n) : new Float32Array(parts.length * n);
  arrays.forEach((a, i) => out.set(a, i * n));
  return b.upload(out, [parts.length, ...rest]);
}

/** Rows [r0, r0 + n) of t [≥r0+n, …rest] as [n, …rest] (a view on device backends: valid while t is; t itself when that is all of it). */
export function rowRange(b: Backend, t: Tensor, r0: number, n: number): Tensor {
  if (r0 === 0 && t.shape[0] === n) return t;
  const rest = t.shape.slice(1);
  const per = t.size / t.shape[0]!;
  const d = device(b);
  if (d) return d.viewOf(t, r0 * per, n * per, [n, ...rest]);
  return b.upload(t.toArray().subarray(r0 * per, (r0 + n) * per), [n, ...rest]);
}

/**
 * Backend.attentionDecodeBatch as one `attention` per sequence: the form of backends without a
 * batched kernel (the host backends, whose per-call cost is small next to the arithmetic).
 */
export function attentionDecodeByRows(b: Backend, q: Tensor, k: readonly Tensor[], v: readonly Tensor[], opts: DecodeBatchOptions): Tensor {
  const { B, H, Dv } = attentionDecodeBatchDims(q, k, v, opts);
  const outs = Array.from({ length: B }, (_, i) => {
    const S = opts.positions[i]! + 1;
    return b.attention(rowOf(b, q, i), rowRange(b, k[i]!, 0, S), rowRange(b, v[i]!, 0, S), { scale: opts.scale, queryOffset: opts.positions[i]!, window: opts.window });
  });
  return stackRows(b, outs, [H, Dv]);
}

/** Backend.latentAttentionDecodeBatch as one `latentAttention` per sequence (see attentionDecodeByRows). */
export function latentAttentionDecodeByRows(b: Backend, qr: Tensor, kr: readonly Tensor[], qc: Tensor, c: readonly Tensor[], opts: DecodeBatchOptions): Tensor {
  const { B, H, L } = latentAttentionDecodeBatchDims(qr, kr, qc, c, opts);
  const outs = Array.from({ length: B }, (_, i) => {
    const S = opts.positions[i]! + 1;
    return b.latentAttention(rowOf(b, qr, i), rowRange(b, kr[i]!, 0, S), rowOf(b, qc, i), rowRange(b, c[i]!, 0, S), { scale: opts.scale, queryOffset: opts.positions[i]!, window: opts.window });
  });
  return stackRows(b, outs, [H, L]);
}
