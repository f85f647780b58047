/**
 * Quantized KV / latent caches (`--kv-cache`): what a cache stores per token, and the exact values it
 * gives back. Each token's cached row is split into groups of KV_GROUP elements along its feature
 * axis; a group keeps one bf16 scale (absmax / qmax) and signed integers in [−qmax, qmax] (int8: 127,
 * int4: 7, two per byte). Values come back as q·scale, so computing with the round trip is
 * numerically what a kernel dequantizing the stored bytes computes.
 */
import { MlaError } from "../errors.js";
import { bf16ToF32, f32ToBf16 } from "../io/dtype.js";
import type { Backend } from "../tensor/backend.js";
import type { Tensor } from "../tensor/tensor.js";

export type KvCacheDtype = "f32" | "bf16" | "int8" | "int4";
export const KV_CACHE_DTYPES: readonly KvCacheDtype[] = ["f32", "bf16", "int8", "int4"];
/** Elements per quantization group (one bf16 scale each). */
export const KV_GROUP = 32;
const QMAX = { int8: 127, int4: 7 } as const;

export function checkKvCacheDtype(x: unknown): KvCacheDtype {
  if (typeof x === "string" && (KV_CACHE_DTYPES as readonly string[]).includes(x)) return x as KvCacheDtype;
  throw new MlaError("BAD_ARGUMENT", `--kv-cache ${String(x)} is not a cache type`, `use one of ${KV_CACHE_DTYPES.join(", ")}`);
}

/** Bytes that one cached row of `n` elements takes as `dtype` (scales included). */
export function kvRowBytes(n: number, dtype: KvCacheDtype): number {
  const groups = Math.ceil(n / KV_GROUP);
  switch (dtype) {
    case "f32":
      return 4 * n;
    case "bf16":
      return 2 * n;
    case "int8":
      return n + 2 * groups;
    case "int4":
      return Math.ceil(n / 2) + 2 * groups;
  }
}

/**
 * Bytes of one row of `n` values in a device store of quantized rows (native/cuda/kv_quant.cuh): the
 * values, then the scales, each padded to 16 bytes (so rows copy whole and stay aligned).
 */
export function deviceRowBytes(n: number, dtype: "int8" | "int4"): number {
  const pad16 = (x: number) => Math.ceil(x / 16) * 16;
  return pad16(dtype === "int8" ? n : Math.ceil(n / 2)) + pad16(2 * Math.ceil(n / KV_GROUP));
}

const toBf16 = (v: number): number => bf16ToF32(f32ToBf16(v));

/** In place: each row of `rowSize` values of x as the cache of `dtype` gives it back. */
export function roundTripRows(x: Float32Array, rowSize: number, dtype: KvCacheDtype): Float32Array {
  checkKvCacheDtype(dtype); // an unknown type's qmax would zero every row
  if (dtype === "f32") return x;
  if (dtype === "bf16") {
    for (let i = 0; i < x.length; i++) x[i] = toBf16(x[i]!);
    return x;
  }
  const qmax = QMAX[dtype];
  for (let r = 0; r < x.length; r += rowSize)
    for (let g = r; g < r + rowSize; g += KV_GROUP) {
      const end = Math.min(g + KV_GROUP, r + rowSize);
      let amax = 0;
      for (let i = g; i < end; i++) amax = Math.max(amax, Math.abs(x[i]!));
      // A group holding a NaN or ±Inf reads back as NaN, as a device store gives it (one scale a
      // group: a NaN scale marks it), so a diverged model is reported downstream, not hidden as zeros.
      if (!Number.isFinite(amax)) {
        x.fill(NaN, g, end);
        continue;
      }
      const s = toBf16(amax / qmax); // the stored scale is bf16
      for (let i = g; i < end; i++) x[i] = s > 0 ? Math.max(-qmax, Math.min(qmax, Math.round(x[i]! / s))) * s : 0;
    }
  return x;
}

/** t [T, …] (one token per row) as a cache of `dtype` returns it, computed on the host; t itself for f32 (kvCache.ts's roundTripOn keeps it on a device that stores rows). */
export function roundTrip(b: Backend, t: Tensor, dtype: KvCacheDtype | undefined): Tensor {
  if (!dtype || dtype === "f32" || t.size === 0) return t;
  const rowSize = t.size / t.shape[0]!;
  return b.upload(roundTripRows(Float32Array.from(t.toArray()), rowSize, dtype), t.shape);
}
