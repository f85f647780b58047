/**
 * Decode caches. MHA/GQA keeps keys (after RoPE) and values, 2·Hkv·Dh per token and layer; MLA keeps
 * the rope keys (after RoPE) and the latent, Hkv·2R + L per token and layer. Rows live in growable
 * buffers, so appending a token copies only that token; a cache made with a capacity (the longest
 * sequence it will hold) never moves while it stays within it.
 */
import { MlaError } from "../errors.js";
import { checkOptionTypes } from "../util/optionTypes.js";
import type { Backend } from "../tensor/backend.js";
import type { FloatArray, Tensor } from "../tensor/tensor.js";
import { KV_CACHE_DTYPES, KvCacheDtype, deviceRowBytes, kvRowBytes, roundTrip } from "./kvQuant.js";
import { checkBackendArg, checkObjectArg, checkWholeArg, shown } from "../util/numericArgs.js";
import { kvRowsPerToken, type ModelConfig } from "./config.js";
import { rowOf, rowRange } from "../tensor/rows.js";

/** Growable [S, rowSize] float rows. */
class RowBuffer {
  private buf: FloatArray = new Float32Array(0);
  rows = 0;
  constructor(readonly rowSize: number) {}

  /** Room for `rows` rows in all, allocated now (in the buffer's current element type). */
  reserve(rows: number): void {
    if (rows * this.rowSize > this.buf.length) this.resize(rows * this.rowSize, this.buf instanceof Float64Array);
  }

  /** A buffer of n elements (float64 or float32) holding the rows so far. */
  private resize(n: number, f64: boolean): void {
    const grown = f64 ? new Float64Array(n) : new Float32Array(n);
    grown.set(this.buf.subarray(0, this.rows * this.rowSize));
    this.buf = grown;
  }

  get capacity(): number {
    return this.rowSize ? this.buf.length / this.rowSize : 0;
  }

  /** Appends `rows` rows (counted, not derived: a part may be zero wide, e.g. MLA without rope pairs). */
  append(values: FloatArray, rows: number): void {
    const need = this.rows * this.rowSize + values.length;
    if (need > this.buf.length || this.buf.constructor !== values.constructor) {
      // A change of element type alone (float64 rows into a reserved float32 buffer) keeps the size.
      this.resize(need > this.buf.length ? Math.max(need, this.buf.length * 2, this.rowSize * 16) : this.buf.length, values instanceof Float64Array);
    }
    this.buf.set(values, this.rows * this.rowSize);
    this.rows += rows;
  }

  view(): FloatArray {
    return this.buf.subarray(0, this.rows * this.rowSize);
  }

  truncate(rows: number): void {
    this.rows = Math.min(this.rows, rows);
  }

  release(): void {
    this.buf = new Float32Array(0);
    this.rows = 0;
  }

  get heldBytes(): number {
    return this.buf.byteLength;
  }
}

/** Rows of one cache part: on the host (uploaded whole for each step) or, where the backend can keep them, on the device. */
interface RowStore {
  readonly rows: number;
  /** Rows it holds room for without moving. */
  readonly capacity: number;
  append(values: Tensor): void;
  tensor(shape: number[]): Tensor;
  /** Keeps the first `rows` rows (at most). */
  truncate(rows: number): void;
  /** Frees the rows' memory; the store is then empty, with no room. */
  dispose(): void;
  /** Bytes its buffer takes, room included. */
  readonly heldBytes: number;
  /** The device store behind it, when there is one. */
  readonly device?: DeviceStore;
}

/** A cache part in a backend's own memory (CUDA's DeviceRowStore). */
interface DeviceStore {
  readonly rows: number;
  append(rows: Tensor): void;
  view(shape: readonly number[]): Tensor;
  /** This (empty) store becomes a copy of `other`'s first `rows` rows (default all; same dtype and row size), device to device, with room for `capacity` rows (default other's). */
  copyRowsFrom(other: DeviceStore, rows?: number, capacity?: number): void;
  /** Room for `add` more rows (exact: no more than that; else with the growth policy's spare rows). */
  reserve(add: number, exact?: boolean): void;
  readonly capacity: number;
  /** "bf16", "int8", "int4": rows are stored rounded or quantized by the store itself (from float32 rows). */
  readonly dtype: HeldType;
  /** Bytes its buffer takes, room included. */
  readonly heldBytes: number;
  /** Counts `add` rows written into the spare capacity by another call (scatterRows). */
  commit(add: number): void;
  /** Keeps the first `rows` rows (at most); the buffer stays. */
  truncate(rows: number): void;
  /** The whole buffer [capacity, …row shape]; rows past `rows` are spare. */
  readonly storage: Tensor;
  /** Frees the buffer; the store is then empty, with no room. */
  dispose(): void;
}

/** A new store of rows `rowShape` holding a copy of `from`'s first `rows` rows, with room for `capacity` rows. */
function copyStore(backend: Backend, from: RowStore, rowShape: readonly number[], dtype: KvCacheDtype, rows: number, capacity: number): RowStore {
  // Device stores copy device to device in their own dtype (no float32 copy of a bf16 cache).
  const probe = from.device ? rowStore(backend, rowShape, dtype, 0) : null;
  if (from.device && probe?.device) {
    probe.device.copyRowsFrom(from.device, rows, capacity);
    return probe;
  }
  const s = rowStore(backend, rowShape, dtype, capacity);
  if (rows) {
    // The rows come as a temporary (an upload, a float32 copy of a bf16 device store, or a view):
    // freed here, or cloning a cache for each of B sequences would hold B copies until collection.
    const all = from.tensor([...rowShape]);
    const kept = rows === from.rows ? all : rowRange(backend, all, 0, rows);
    s.append(kept);
    if (kept !== all) kept.dispose();
    all.dispose();
  }
  return s;
}

/**
 * Backends that keep decode caches in their own memory (CUDA; the native CPU backend's bf16 caches, as
 * bf16 on the host), and append one row to each of B of them in one call.
 */
interface DeviceRowBackend {
  /** Whether caches of `dtype` go to createRowStore (absent: every dtype); the others are float32 host rows (RowBuffer). */
  storesRowsOf?(dtype: KvCacheDtype): boolean;
  createRowStore(rowShape: readonly number[], dtype: HeldType): DeviceStore;
  /** Row b of src [B, n] into dst[b] at element offsets[b]. */
  scatterRows(src: Tensor, dst: readonly Tensor[], offsets: readonly number[]): void;
}

/** The types rows are held in: a cache's own dtype in a backend's store (quantized rows: kvQuant.ts's deviceRowBytes), float32 in host RowBuffers. */
type HeldType = KvCacheDtype;

/** Whether `backend` keeps decode caches of `dtype` in a store of its own (DeviceRowBackend); the others' rows live on the host as float32 (RowBuffer). */
function keepsDeviceRows(backend: Backend, dtype: KvCacheDtype): boolean {
  const b = backend as Partial<DeviceRowBackend>;
  return typeof b.createRowStore === "function" && (b.storesRowsOf?.(dtype) ?? true);
}

/** How a cache's rows are held in memory, where that may be wider than its dtype. */
export interface HeldRows {
  /** The element type of its buffers. */
  type: HeldType;
  /** Bytes a row of `n` values takes in them (quantized device rows: values and scales, padded). */
  rowBytes(n: number): number;
  /** Why that is wider than the dtype, for messages (null: the rows are held as the dtype). */
  why: string | null;
}

/**
 * How a cache of `dtype` holds its rows on `backend` (what `heldBytes` counts, and what a server's
 * KV budget must count): in a backend's store as its dtype (CUDA: every dtype, int8/int4 rows with
 * their scales each padded to 16 bytes; the native CPU backend: bf16, as bf16 on the host); elsewhere
 * on the host as float32 (the reference backend's caches, which stay the numeric reference, and the
 * native CPU backend's int8/int4 caches, rounded there but held wide: no CPU kernel reads quantized rows).
 */
export function heldRows(backend: Backend, dtype: KvCacheDtype): HeldRows {
  const type: HeldType = keepsDeviceRows(backend, dtype) ? dtype : "f32";
  const why = type !== dtype ? `the ${backend.name} backend holds ${dtype} cache rows on the host, as float32` : type === "int8" || type === "int4" ? `a device store pads each row's ${type} values and its scales to 16 bytes each` : null;
  return { type, rowBytes: (n) => heldRowBytes(n, type), why };
}

function heldRowBytes(n: number, type: HeldType): number {
  return type === "int8" || type === "int4" ? (n > 0 ? deviceRowBytes(n, type) : 0) : n * (type === "bf16" ? 2 : 4);
}

/** Bytes per token, all layers, that a cache of `dtype` of model `c` holds in memory on `backend` (heldRows; config's kvBytesPerToken is the dtype's size). */
export function heldBytesPerToken(c: ModelConfig, backend: Backend, dtype: KvCacheDtype): number {
  const held = heldRows(backend, dtype);
  let bytes = 0;
  for (let l = 0; l < c.layers; l++) for (const n of kvRowsPerToken(c, l)) bytes += held.rowBytes(n);
  return bytes;
}

/**
 * A store of rows `rowShape` with room for `capacity` rows allocated up front; a bf16 cache keeps bf16
 * rows where the backend can (half the bytes read per step), as heldRows says.
 */
function rowStore(backend: Backend, rowShape: readonly number[], dtype: KvCacheDtype = "f32", capacity = 0): RowStore {
  const rowSize = rowShape.reduce((x, y) => x * y, 1);
  const dev = keepsDeviceRows(backend, dtype) ? (backend as Backend & DeviceRowBackend).createRowStore(rowShape, heldRows(backend, dtype).type) : null;
  if (dev) {
    if (capacity > 0) dev.reserve(capacity, true);
    return { get rows() { return dev.rows; }, get capacity() { return dev.capacity; }, append: (v) => dev.append(v), tensor: (shape) => dev.view(shape), truncate: (n) => dev.truncate(n), dispose: () => dev.dispose(), get heldBytes() { return dev.heldBytes; }, device: dev };
  }
  const host = new RowBuffer(rowSize);
  if (capacity > 0) host.reserve(capacity);
  return { get rows() { return host.rows; }, get capacity() { return host.capacity; }, append: (v) => host.append(v.toArray(), v.shape[0]!), tensor: (shape) => backend.upload(host.view(), [host.rows, ...shape]), truncate: (n) => host.truncate(n), dispose: () => host.release(), get heldBytes() { return host.heldBytes; } };
}

/**
 * t [T, …] (one token per row) as a cache of `dtype` returns it (a forward without a cache that scores as
 * if it had one): on a backend that keeps device rows, through such a store (rounded or quantized there,
 * no trip through the host); elsewhere kvQuant's host round trip. t itself for f32.
 */
export function roundTripOn(backend: Backend, t: Tensor, dtype: KvCacheDtype | undefined): Tensor {
  if (!dtype || dtype === "f32" || t.size === 0 || !keepsDeviceRows(backend, dtype)) return roundTrip(backend, t, dtype);
  const rowShape = t.shape.slice(1);
  const store = rowStore(backend, rowShape, dtype);
  store.append(t);
  const out = store.tensor(rowShape);
  store.dispose();
  return out;
}

export interface CloneOptions {
  tokens?: number;
  capacity?: number;
}

/** Options of a new decode cache. */
export interface CacheOptions {
  /**
   * Tokens to allocate room for now (e.g. prompt + new tokens): the cache's buffers then never move
   * while it stays within that, which spares the copies and the transient twice-the-cache memory of
   * growing, and keeps addresses fixed (what a captured decode step needs). Beyond it the cache grows.
   */
  capacity?: number;
}

export interface DecodeCache {
  /** Tokens cached so far. */
  readonly length: number;
  /** Floats held, summed over layers. */
  readonly elements: number;
  /** Bytes those would take stored as the cache's dtype (scales included), summed over layers. */
  readonly bytes: number;
  /**
   * Bytes its buffers take in memory now, room included: more than `bytes` where rows are held wider
   * than their dtype (heldRows: host caches hold float32 rows; device stores pad quantized rows to 16 bytes).
   */
  readonly heldBytes: number;
  /** How rows are stored (kvQuant.ts); rows come back as that storage gives them. */
  readonly dtype: KvCacheDtype;
  /** Tokens it holds room for without moving its buffers (newCache's capacity, or what growth left). */
  readonly capacity: number;
  /** Called once per forward after every layer appended. */
  advance(tokens: number): void;
  /**
   * An independent copy (a shared prompt decoded into several continuations, a benchmark's batch, a
   * server's cached prefix): of its first `tokens` tokens (default all), with room for `capacity`
   * tokens (default its own) allocated at once.
   */
  clone(opts?: CloneOptions): DecodeCache;
  /**
   * For a recorded decode step (DecodeSession): the device buffers the step writes and reads, or null
   * where the cache cannot be replayed (host rows).
   * A change of any of them (growth moved one) invalidates a recording.
   */
  replayBuffers(): readonly Tensor[] | null;
  /** The host bookkeeping of one replayed step: one more row in every part, one more token. */
  commitStep(): void;
  /** Forgets every token past the first `tokens` (a rejected draft, an undone step); the room stays. */
  truncate(tokens: number): void;
  /**
   * Frees its buffers now and leaves it empty, with no room. Device memory is otherwise freed only when
   * the cache is collected, which a server retiring sequences one after another cannot wait for.
   */
  dispose(): void;
}

/** The row shapes of one layer's two cache parts (MLA layers may differ from each other). */
export type LayerRowShapes = readonly [readonly number[], readonly number[]];

/** Pairs of row buffers per layer, shared by both cache kinds. */
abstract class TwoPartCache implements DecodeCache {
  private a: RowStore[];
  private b: RowStore[];
  private len = 0;
  /** Elements per row of each part, per layer. */
  private readonly rowA: number[];
  private readonly rowB: number[];

  /** `shapes[layer]` = the row shapes of that layer's two parts. */
  constructor(protected readonly backend: Backend, protected readonly shapes: readonly LayerRowShapes[], readonly dtype: KvCacheDtype = "f32", opts: CacheOptions = {}) {
    // From a script (model.newCache checks its own): a missing backend failed as "reading
    // 'createRowStore'", an unknown dtype was kept, null options as "reading 'capacity'".
    const where = `new ${new.target.name}()`;
    checkBackendArg(where, backend);
    if (!(KV_CACHE_DTYPES as readonly unknown[]).includes(dtype)) throw new MlaError("BAD_ARGUMENT", `${where}: the dtype is ${shown(dtype)}, not a cache type`, `pass one of ${KV_CACHE_DTYPES.join(", ")}, or leave it out (f32)`);
    checkOptionTypes<CacheOptions>(where, opts, { capacity: "number" });
    const size = (s: readonly number[]) => s.reduce((x, y) => x * y, 1);
    const capacity = opts.capacity ?? 0;
    if (!Number.isInteger(capacity) || capacity < 0) throw new MlaError("BAD_ARGUMENT", `a decode cache's capacity must be a whole number of tokens ≥ 0, got ${capacity}`, "pass the longest sequence the cache will hold (prompt + new tokens), or leave it out");
    this.a = shapes.map(([a]) => rowStore(backend, a, dtype, capacity));
    this.b = shapes.map(([, b]) => rowStore(backend, b, dtype, capacity));
    this.rowA = shapes.map(([a]) => size(a));
    this.rowB = shapes.map(([, b]) => size(b));
  }

  get length(): number {
    return this.len;
  }

  get capacity(): number {
    // Zero-wide parts (MLA without rope pairs) hold no room on the host and do not limit it.
    const parts = [...this.a.map((s, i) => [s, this.rowA[i]!] as const), ...this.b.map((s, i) => [s, this.rowB[i]!] as const)];
    return parts.reduce((m, [s, n]) => (n > 0 ? Math.min(m, s.capacity) : m), Infinity);
  }

  get elements(): number {
    return this.a.reduce((n, x, i) => n + x.rows * this.rowA[i]! + this.b[i]!.rows * this.rowB[i]!, 0);
  }

  get bytes(): number {
    return this.a.reduce((n, x, i) => n + x.rows * kvRowBytes(this.rowA[i]!, this.dtype) + this.b[i]!.rows * kvRowBytes(this.rowB[i]!, this.dtype), 0);
  }

  get heldBytes(): number {
    return this.stores().reduce((n, s) => n + s.heldBytes, 0);
  }

  advance(tokens: number): void {
    this.len += tokens;
  }

  /** Every layer's stores of both parts. */
  private stores(): RowStore[] {
    return [...this.a, ...this.b];
  }

  replayBuffers(): readonly Tensor[] | null {
    const stores = this.stores();
    if (stores.some((s) => !s.device)) return null;
    return stores.map((s) => s.device!.storage);
  }

  truncate(tokens: number): void {
    if (!Number.isInteger(tokens) || tokens < 0 || tokens > this.len) throw new MlaError("BAD_ARGUMENT", `truncate: ${tokens} tokens of a cache holding ${this.len}`, `pass a whole number from 0 to ${this.len}`);
    for (const s of this.stores()) s.truncate(tokens);
    this.len = tokens;
  }

  commitStep(): void {
    for (const s of this.stores()) s.device!.commit(1);
    this.len += 1;
  }

  dispose(): void {
    for (const s of this.stores()) s.dispose();
    this.len = 0;
  }

  clone(opts: CloneOptions = {}): this {
    // From JavaScript: clone(5) or { token: 5 } copied the whole cache.
    checkOptionTypes<CloneOptions>("clone()", opts, { tokens: "number", capacity: "number" });
    const tokens = opts.tokens ?? this.len;
    if (!Number.isInteger(tokens) || tokens < 0 || tokens > this.len) throw new MlaError("BAD_ARGUMENT", `clone: ${tokens} tokens of a cache holding ${this.len}`, `pass a whole number from 0 to ${this.len}`);
    // A cache of zero-wide parts only (MLA without rope pairs or latent) has unbounded room.
    const own = Number.isFinite(this.capacity) ? this.capacity : tokens;
    const capacity = Math.max(tokens, opts.capacity ?? own);
    if (!Number.isInteger(capacity)) throw new MlaError("BAD_ARGUMENT", `clone: a capacity of ${opts.capacity} tokens`, "pass a whole number of tokens");
    const copy = Object.create(Object.getPrototypeOf(this) as object) as this;
    Object.assign(copy, this);
    copy.a = this.a.map((s, l) => copyStore(this.backend, s, this.shapes[l]![0], this.dtype, tokens, capacity));
    copy.b = this.b.map((s, l) => copyStore(this.backend, s, this.shapes[l]![1], this.dtype, tokens, capacity));
    copy.len = tokens;
    return copy;
  }

  protected appendBoth(layer: number, a: Tensor, b: Tensor): [Tensor, Tensor] {
    for (const [store, t] of [[this.a[layer]!, a], [this.b[layer]!, b]] as const) {
      // A device store rounds or quantizes the rows itself; host rows round trip here.
      const stored = store.device && store.device.dtype !== "f32" ? t : roundTrip(this.backend, t, this.dtype);
      store.append(stored);
      if (stored !== t) stored.dispose();
    }
    return this.both(layer);
  }

  /**
   * One decode step of B sequences at `layer`: row b of a [B, …] and b [B, …] (the layer's row
   * shapes) appended to caches[b]; returns each cache's rows of both parts for Backend.*DecodeBatch, possibly followed
   * by spare rows. On a device backend the rows of all B caches go in one call per part and the
   * caches' own buffers come back (no per-sequence views or copies).
   */
  static appendBatch(caches: readonly TwoPartCache[], layer: number, a: Tensor, b: Tensor): [Tensor[], Tensor[]] {
    const first = caches[0]!;
    const backend = first.backend as Backend & Partial<DeviceRowBackend>;
    const uniform = caches.every((c) => c.dtype === first.dtype && c.backend === first.backend && c.a[layer]!.device && c.b[layer]!.device);
    if (!backend.scatterRows || !uniform) {
      const both = caches.map((c, i) => c.appendBoth(layer, rowOf(backend, a, i), rowOf(backend, b, i)));
      return [both.map((x) => x[0]), both.map((x) => x[1])];
    }
    const parts: [Tensor[], Tensor[]] = [[], []];
    for (const [p, src, rowSize] of [[0, a, first.rowA[layer]!], [1, b, first.rowB[layer]!]] as const) {
      const stores = caches.map((c) => (p === 0 ? c.a : c.b)[layer]!.device!);
      const stored = stores[0]!.dtype !== "f32" ? src : roundTrip(backend, src, first.dtype);
      for (const s of stores) s.reserve(1);
      backend.scatterRows(stored, stores.map((s) => s.storage), stores.map((s) => s.rows * rowSize));
      for (const s of stores) s.commit(1);
      if (stored !== src) stored.dispose();
      parts[p] = stores.map((s) => s.storage);
    }
    return parts;
  }

  /** What `layer` holds now, without appending. */
  protected both(layer: number): [Tensor, Tensor] {
    const [shapeA, shapeB] = this.shapes[layer]!;
    return [this.a[layer]!.tensor([...shapeA]), this.b[layer]!.tensor([...shapeB])];
  }
}

/** MHA/GQA cache: keys [S, Hkv, Dh] (after RoPE) and values [S, Hkv, Dh]. */
export class KvCache extends TwoPartCache {
  constructor(backend: Backend, layers: number, kvHeads: number, headDim: number, dtype: KvCacheDtype = "f32", opts: CacheOptions = {}) {
    // A NaN or negative count made a cache of no layers, or rows of NaN elements.
    const hint = "pass the model's config.layers, config.kvHeads and config.headDim, or call model.newCache(dtype)";
    checkWholeArg("new KvCache()", "layers", layers, 0, hint);
    checkWholeArg("new KvCache()", "kvHeads", kvHeads, 1, hint);
    checkWholeArg("new KvCache()", "headDim", headDim, 1, hint);
    super(backend, Array.from({ length: layers }, () => [[kvHeads, headDim], [kvHeads, headDim]] as const), dtype, opts);
  }

  /** Appends k, v [T, Hkv, Dh] to `layer`; returns all cached keys and values [S, Hkv, Dh]. */
  append(layer: number, k: Tensor, v: Tensor): [Tensor, Tensor] {
    return this.appendBoth(layer, k, v);
  }
}

/** LatentCache's sizes: a layer of {} made rows of NaN elements and a capacity of null, -1 heads rows of -1. */
function checkLatentLayers(kvHeads: number, layers: readonly { ropeDims: number; latentDim: number }[]): void {
  const where = "new LatentCache()", hint = "pass config.kvHeads and one { ropeDims: 2·R, latentDim } per layer, or call model.newCache(dtype)";
  checkWholeArg(where, "kvHeads", kvHeads, 1, hint);
  if (!Array.isArray(layers)) throw new MlaError("BAD_ARGUMENT", `${where}: the layers are ${shown(layers)}, not an array`, hint);
  for (let l = 0; l < layers.length; l++) {
    checkObjectArg(where, `layers[${l}]`, layers[l], hint);
    checkWholeArg(where, `layers[${l}].ropeDims`, layers[l]!.ropeDims, 0, hint);
    checkWholeArg(where, `layers[${l}].latentDim`, layers[l]!.latentDim, 0, hint);
  }
}

/** MLA cache: per layer, rope keys [S, Hkv, 2R] (after RoPE) and latents [S, L]; R and L may differ between layers. */
export class LatentCache extends TwoPartCache {
  /** `layers[l]` = layer l's rope dims per KV head (2R) and latent width. */
  constructor(backend: Backend, kvHeads: number, layers: readonly { ropeDims: number; latentDim: number }[], dtype: KvCacheDtype = "f32", opts: CacheOptions = {}) {
    checkLatentLayers(kvHeads, layers);
    super(backend, layers.map(({ ropeDims, latentDim }) => [[kvHeads, ropeDims], [latentDim]] as const), dtype, opts);
  }

  /** Appends kr [T, Hkv, 2R] and c [T, L] to `layer`; returns everything cached. */
  append(layer: number, kr: Tensor, c: Tensor): [Tensor, Tensor] {
    return this.appendBoth(layer, kr, c);
  }
}
