import { MlaError } from "../errors.js";

/** Safetensors dtypes this project reads and writes. */
export const DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"] as const;
export type DType = (typeof DTYPES)[number];

export const DTYPE_BYTES: Record<DType, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };

export function isDType(s: unknown): s is DType {
  return typeof s === "string" && (DTYPES as readonly string[]).includes(s);
}

/** Maps user spellings (bf16, float32, fp16 …) to a safetensors dtype. */
export function parseDType(s: string): DType {
  const k = s.toLowerCase();
  const table: Record<string, DType> = { bf16: "BF16", bfloat16: "BF16", f16: "F16", fp16: "F16", float16: "F16", half: "F16", f32: "F32", fp32: "F32", float32: "F32", float: "F32", f64: "F64", float64: "F64" };
  const d = table[k] ?? (isDType(s.toUpperCase()) ? (s.toUpperCase() as DType) : undefined);
  if (!d) throw new MlaError("BAD_ARGUMENT", `dtype "${s}" is not known`, "use one of bf16, f16, f32, f64");
  return d;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function bf16ToF32(h: number): number {
  u32[0] = h << 16;
  return f32[0]!;
}

/** float32 → bfloat16 bits with round-to-nearest-even (NaN stays a quiet NaN), as torch does. */
export function f32ToBf16(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  if ((b & 0x7fffffff) > 0x7f800000) return ((b >>> 16) | 0x40) & 0xffff;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

export function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** float32 → IEEE half bits, round-to-nearest-even, overflow to ±Inf. */
export function f32ToF16(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}

/** Typed-array views read the host's byte order; safetensors is little-endian. */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Decodes raw little-endian bytes of `dtype` into float32 values (integers converted exactly where they fit). */
export function decodeToF32(dtype: DType, bytes: Uint8Array, out?: Float32Array): Float32Array {
  const n = bytes.byteLength / DTYPE_BYTES[dtype];
  const res = out ?? new Float32Array(n);
  // Fast paths (a 7B conversion decodes gigabytes): aligned views instead of a DataView per element.
  if (LITTLE_ENDIAN && dtype === "BF16" && bytes.byteOffset % 2 === 0 && res.byteOffset % 4 === 0) {
    const src = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
    const dst = new Uint32Array(res.buffer, res.byteOffset, n);
    for (let i = 0; i < n; i++) dst[i] = src[i]! << 16;
    return res;
  }
  if (LITTLE_ENDIAN && dtype === "F32" && bytes.byteOffset % 4 === 0) {
    res.set(new Float32Array(bytes.buffer, bytes.byteOffset, n));
    return res;
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (dtype) {
    case "F32":
      for (let i = 0; i < n; i++) res[i] = dv.getFloat32(i * 4, true);
      break;
    case "F64":
      for (let i = 0; i < n; i++) res[i] = dv.getFloat64(i * 8, true);
      break;
    case "BF16":
      for (let i = 0; i < n; i++) {
        u32[0] = dv.getUint16(i * 2, true) << 16;
        res[i] = f32[0]!;
      }
      break;
    case "F16":
      for (let i = 0; i < n; i++) res[i] = f16ToF32(dv.getUint16(i * 2, true));
      break;
    case "I64":
      for (let i = 0; i < n; i++) res[i] = Number(dv.getBigInt64(i * 8, true));
      break;
    case "I32":
      for (let i = 0; i < n; i++) res[i] = dv.getInt32(i * 4, true);
      break;
    case "I16":
      for (let i = 0; i < n; i++) res[i] = dv.getInt16(i * 2, true);
      break;
    case "I8":
      for (let i = 0; i < n; i++) res[i] = dv.getInt8(i);
      break;
    case "U8":
    case "BOOL":
      for (let i = 0; i < n; i++) res[i] = bytes[i]!;
      break;
  }
  return res;
}

/** Encodes float values into little-endian bytes of a floating `dtype` (rounding to nearest even). */
export function encodeFromF32(dtype: DType, values: ArrayLike<number>): Uint8Array {
  const n = values.length;
  const out = new Uint8Array(n * DTYPE_BYTES[dtype]);
  if (LITTLE_ENDIAN && dtype === "BF16") {
    const f = values instanceof Float32Array ? values : Float32Array.from(values);
    const src = new Uint32Array(f.buffer, f.byteOffset, n);
    const dst = new Uint16Array(out.buffer);
    for (let i = 0; i < n; i++) {
      const b = src[i]!;
      // Round to nearest even; NaN stays a (quiet) NaN, as f32ToBf16.
      dst[i] = (b & 0x7fffffff) > 0x7f800000 ? (b >>> 16) | 0x40 : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
    }
    return out;
  }
  if (LITTLE_ENDIAN && dtype === "F32") {
    new Float32Array(out.buffer).set(values);
    return out;
  }
  const dv = new DataView(out.buffer);
  switch (dtype) {
    case "F32":
      for (let i = 0; i < n; i++) dv.setFloat32(i * 4, values[i]!, true);
      break;
    case "F64":
      for (let i = 0; i < n; i++) dv.setFloat64(i * 8, values[i]!, true);
      break;
    case "BF16":
      for (let i = 0; i < n; i++) dv.setUint16(i * 2, f32ToBf16(values[i]!), true);
      break;
    case "F16":
      for (let i = 0; i < n; i++) dv.setUint16(i * 2, f32ToF16(values[i]!), true);
      break;
    default:
      throw new MlaError("UNSUPPORTED", `encoding float values as ${dtype} is not supported`, "write integer tensors from their raw bytes");
  }
  return out;
}

/** bf16 bit patterns (round to nearest even) of float32 values, as uint16 [n]. */
export function toBf16Bits(values: ArrayLike<number>): Uint16Array {
  const bytes = encodeFromF32("BF16", values);
  return new Uint16Array(bytes.buffer, bytes.byteOffset, values.length);
}

/** Rounds a value as `dtype` stores it (a constant written to a checkpoint, compensated for its rounding). */
export function roundingFor(dtype: DType): (x: number) => number {
  return (x) => decodeToF32(dtype, encodeFromF32(dtype, [x]))[0]!;
}
