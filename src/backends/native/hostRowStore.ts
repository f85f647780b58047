/**
 * The native CPU backend's store of a bf16 decode cache's rows: bf16 bits on the host, 2 bytes a value.
 *
 * Why a store of the backend's own rather than a wider RowBuffer in kvCache.ts: it is the shape the
 * CUDA backend already has (DeviceRowStore behind Backend.createRowStore, rows appended B at a time
 * by scatterRows), so kvCache.ts's decode path, clone/truncate and heldBytes work unchanged, and the
 * batched decode hands the store's own buffer to the backend's attention (NativeCpuBackend's
 * *DecodeBatch read it as bf16, native/cpu/decode_bf16.cpp) instead of a float32 copy. Before, the
 * CPU cache held each row rounded to bf16 but stored as float32: the same values in twice the bytes.
 *
 * `storage` is a tensor of dtype "bf16" whose storage is the Uint16Array itself; only the bf16 decode
 * kernels read it (the backend's download widens it for anything else). view() gives the rows as a
 * float32 copy, as CUDA's bf16 store does, for the ops that take float rows (a prompt's prefill).
 */
import { MlaError } from "../../errors.js";
import type { Backend } from "../../tensor/backend.js";
import { Tensor, type FloatArray } from "../../tensor/tensor.js";

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** x[i] → bf16 bits into out[at + i], rounded to nearest even (NaN stays a quiet NaN): io/dtype.ts's f32ToBf16, which kvQuant's round trip applies. */
export function roundToBf16(x: FloatArray, out: Uint16Array, at: number): void {
  for (let i = 0; i < x.length; i++) {
    f32[0] = x[i]!;
    const b = u32[0]!;
    out[at + i] = (b & 0x7fffffff) > 0x7f800000 ? ((b >>> 16) | 0x40) & 0xffff : ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
  }
}

/** bf16 bits [n] → float32 [n], exact (the bits are float32's upper half). */
export function widenBf16(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const o32 = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) o32[i] = bits[i]! << 16;
  return out;
}

/** Growable [rows, …rowShape] bf16 rows on the host; the DeviceStore kvCache.ts's rowStore wraps. */
export class HostBf16RowStore {
  private bits = new Uint16Array(0);
  private room = 0;
  private held: Tensor | null = null;
  rows = 0;
  readonly rowSize: number;
  readonly dtype = "bf16" as const;

  constructor(private readonly backend: Backend, private readonly rowShape: readonly number[]) {
    this.rowSize = rowShape.reduce((x, y) => x * y, 1);
  }

  /** rows [n, …rowShape]: float32 (rounded to bf16 here) or this backend's bf16; n counted from the shape (a part may be zero wide). */
  append(rows: Tensor): void {
    const add = rows.shape[0]!;
    if (rows.size !== add * this.rowSize) throw new MlaError("BAD_ARGUMENT", `a bf16 row store of rows [${this.rowShape}] cannot append [${rows.shape}]`, "append rows of the store's shape; this is a bug in the caller");
    this.reserve(add);
    this.write(rows, this.rows * this.rowSize);
    this.rows += add;
  }

  /** rows' values (float32 or bf16 bits) at element `at` of the buffer, which has room for them. */
  write(rows: Tensor, at: number): void {
    if (rows.dtype === "bf16") this.bits.set((rows.storage as Uint16Array).subarray(0, rows.size), at);
    else roundToBf16(rows.toArray(), this.bits, at);
  }

  /**
   * Room for `add` more rows. `exact`: room for exactly that (a cache made with a capacity); otherwise
   * growth doubles (at least 16 rows), as the float32 host rows (kvCache.ts's RowBuffer) grow.
   */
  reserve(add: number, exact = false): void {
    const need = this.rows + add;
    if (need <= this.room) return;
    const cap = exact ? need : Math.max(need, this.room * 2, 16);
    const grown = new Uint16Array(cap * this.rowSize);
    grown.set(this.bits.subarray(0, this.rows * this.rowSize));
    this.bits = grown;
    this.room = cap;
    this.held = null;
  }

  /** This (empty) store becomes a copy of `other`'s first `rows` rows, bf16 as stored, with room for `capacity`. */
  copyRowsFrom(other: HostBf16RowStore, rows = other.rows, capacity = Math.max(other.rows, other.capacity)): void {
    if (this.rows) throw new MlaError("BAD_ARGUMENT", `copyRowsFrom: the target store already holds ${this.rows} rows`, "copy into a new store; this is a bug in the caller");
    if (!(other instanceof HostBf16RowStore) || other.rowSize !== this.rowSize)
      throw new MlaError("BAD_ARGUMENT", `copyRowsFrom: a bf16 host store of rows of ${this.rowSize} cannot copy ${(other as { dtype?: string }).dtype} rows of ${(other as { rowSize?: number }).rowSize}`, "copy between stores of one dtype and row shape; this is a bug in the caller");
    if (rows > other.rows) throw new MlaError("BAD_ARGUMENT", `copyRowsFrom: ${rows} rows of a store holding ${other.rows}`, "this is a bug in the caller");
    this.reserve(Math.max(rows, capacity), true);
    this.bits.set(other.bits.subarray(0, rows * this.rowSize));
    this.rows = rows;
  }

  truncate(rows: number): void {
    this.rows = Math.min(this.rows, rows);
  }

  dispose(): void {
    this.bits = new Uint16Array(0);
    this.room = 0;
    this.rows = 0;
    this.held = null;
  }

  /** Rows the buffer holds room for. */
  get capacity(): number {
    return this.room;
  }

  /** Bytes the buffer takes, room included: 2 a value. */
  get heldBytes(): number {
    return this.bits.byteLength;
  }

  /** Counts `add` rows written into the spare room by another call (NativeCpuBackend.scatterRows). */
  commit(add: number): void {
    if (this.rows + add > this.room) throw new MlaError("BAD_ARGUMENT", `a decode cache of ${this.room} rows cannot take ${add} more after ${this.rows}`, "reserve the rows first; this is a bug in the caller");
    this.rows += add;
  }

  /** The whole buffer [capacity, …rowShape] as a bf16 tensor; rows past `rows` are spare (valid until the next reserve). */
  get storage(): Tensor {
    return (this.held ??= new Tensor(this.backend, [this.room, ...this.rowShape], this.bits, "bf16"));
  }

  /** All rows so far as a float32 copy [rows, …shape] (widened exactly). */
  view(shape: readonly number[]): Tensor {
    return this.backend.upload(widenBf16(this.bits.subarray(0, this.rows * this.rowSize)), [this.rows, ...shape]);
  }
}
