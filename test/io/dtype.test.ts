/** The aligned fast paths of decodeToF32/encodeFromF32 equal the per-element conversions (rounding, NaN, ±0, ±Inf, unaligned input). */
import assert from "node:assert/strict";
import { test } from "node:test";
import { bf16ToF32, decodeToF32, encodeFromF32, f32ToBf16 } from "../../src/io/dtype.js";
import { seededRand } from "../helpers.js";

const specials = [0, -0, 1, -1, Infinity, -Infinity, NaN, 1.00390625, 1.005859375, 3.4e38, -3.4e38, 1e-40, -1e-45, 65504, 0.1];

test("BF16 and F32 encode/decode fast paths match the scalar conversions", () => {
  const values = Float32Array.from([...specials, ...seededRand(3, Float32Array)(1000, 1e4)]);
  const bytes = encodeFromF32("BF16", values);
  for (let i = 0; i < values.length; i++) {
    const want = f32ToBf16(values[i]!);
    assert.equal(bytes[2 * i]! | (bytes[2 * i + 1]! << 8), want, `encode ${values[i]}`);
  }
  const back = decodeToF32("BF16", bytes);
  for (let i = 0; i < values.length; i++) assert.ok(Object.is(back[i], Math.fround(bf16ToF32(f32ToBf16(values[i]!)))) || (Number.isNaN(back[i]) && Number.isNaN(values[i])), `decode ${values[i]}`);
  // Unaligned input takes the DataView route and must agree.
  const shifted = new Uint8Array(bytes.length + 1);
  shifted.set(bytes, 1);
  const un = decodeToF32("BF16", shifted.subarray(1));
  assert.deepEqual(Array.from(un, (x) => (Number.isNaN(x) ? "NaN" : Object.is(x, -0) ? "-0" : x)), Array.from(back, (x) => (Number.isNaN(x) ? "NaN" : Object.is(x, -0) ? "-0" : x)));
  const f32 = decodeToF32("F32", encodeFromF32("F32", values));
  for (let i = 0; i < values.length; i++) assert.ok(Object.is(f32[i], values[i]) || Number.isNaN(values[i]!));
});
