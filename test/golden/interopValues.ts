/**
 * Deterministic tensors for the safetensors interop check, mirrored exactly in make_golden.py
 * (`interop_tensors`): the same integer formula, then float32, then rounded to bf16/f16 with
 * round-to-nearest-even, plus special values (±0, ±Inf, subnormals, the extremes of each type).
 */
import { encodeFromF32 } from "../../src/io/dtype.js";
import type { TensorSpec } from "../../src/io/safetensors.js";

export const INTEROP_METADATA = { format: "pt", producer: "mha2mla interop test", note: "ünïcode ✓" };

/** 97 values: a formula over i, then the special values. */
export function interopFloats(): Float32Array {
  const vals: number[] = [];
  for (let i = 0; i < 80; i++) vals.push((((i * 7919) % 1001) - 500) / 37);
  vals.push(0, -0, Infinity, -Infinity, 1e-40, -1e-40, 3.4e38, -3.4e38, 6.1e-5, 5.96e-8, 65504, 65520, 1e5, 1.00390625, 1.001953125, 0.1, -2.5);
  return Float32Array.from(vals);
}

export function interopInt64(): BigInt64Array {
  const v: bigint[] = [0n, 1n, -1n, 2n ** 53n + 1n, -(2n ** 62n), 2n ** 63n - 1n, -(2n ** 63n)];
  for (let i = 0; i < 9; i++) v.push(BigInt(i * 1234567 - 5000000));
  return BigInt64Array.from(v);
}

export function interopTensors(): (TensorSpec & { data: Uint8Array })[] {
  const f = interopFloats();
  const i64 = interopInt64();
  return [
    { name: "f32", dtype: "F32", shape: [f.length], data: encodeFromF32("F32", f) },
    { name: "bf16", dtype: "BF16", shape: [f.length], data: encodeFromF32("BF16", f) },
    { name: "f16", dtype: "F16", shape: [f.length], data: encodeFromF32("F16", f) },
    { name: "i64", dtype: "I64", shape: [4, 4], data: new Uint8Array(i64.buffer) },
    { name: "nested.weight", dtype: "F32", shape: [0, 3], data: new Uint8Array(0) },
  ];
}
