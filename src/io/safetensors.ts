/**
 * safetensors reader and writer: 8-byte little-endian header length, a JSON header, raw little-endian
 * data. Reads are positioned (a 13 GB file is never held in memory); every malformed file gives an
 * MlaError naming the file and the culprit, never a RangeError from deep inside.
 */
import fs from "node:fs";
import { MlaError, ioError } from "../errors.js";
import { DTYPE_BYTES, DType, decodeToF32, isDType } from "./dtype.js";
import { checkFactoryMade, checkStringArg } from "../util/argTypes.js";

export interface TensorSpec {
  name: string;
  dtype: DType;
  shape: number[];
}

export interface TensorEntry extends TensorSpec {
  /** Absolute byte offsets in the file, [begin, end). */
  begin: number;
  end: number;
}

/** The format's own ceiling on the header (100 MB, as in the reference implementation). */
const MAX_HEADER_BYTES = 100_000_000;

function bad(path: string, what: string, hint: string): MlaError {
  return new MlaError("BAD_SAFETENSORS", `${path}: ${what}`, hint);
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * Lists the top-level keys of a JSON object text in order, so that duplicates (which JSON.parse
 * silently collapses) can be reported.
 */
function topLevelKeys(text: string): string[] {
  const keys: string[] = [];
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      const start = i;
      for (i++; i < text.length && text[i] !== '"'; i++) if (text[i] === "\\") i++;
      if (depth === 1) {
        let j = i + 1;
        while (j < text.length && /\s/.test(text[j]!)) j++;
        if (text[j] === ":") keys.push(JSON.parse(text.slice(start, i + 1)) as string);
      }
    } else if (c === "{" || c === "[") depth++;
    else if (c === "}" || c === "]") depth--;
  }
  return keys;
}

/** Parses and validates a header; `dataBytes` is the size of the data section after it. */
export function parseHeader(path: string, headerText: string, dataStart: number, dataBytes: number): { tensors: TensorEntry[]; metadata: Record<string, string> } {
  let raw: unknown;
  try {
    raw = JSON.parse(headerText);
  } catch (e) {
    throw bad(path, `header is not valid JSON (${(e as Error).message})`, "the file is corrupt or not a safetensors file");
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw bad(path, "header is not a JSON object", "the file is corrupt or not a safetensors file");
  const seen = new Set<string>();
  for (const k of topLevelKeys(headerText)) {
    if (seen.has(k)) throw bad(path, `tensor name "${k}" appears twice in the header`, "each tensor name must be unique; rewrite the file");
    seen.add(k);
  }
  const metadata: Record<string, string> = {};
  const tensors: TensorEntry[] = [];
  for (const [name, v] of Object.entries(raw as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (typeof v !== "object" || v === null || Array.isArray(v)) throw bad(path, "__metadata__ is not an object of strings", "metadata must map strings to strings");
      for (const [mk, mv] of Object.entries(v as Record<string, unknown>)) {
        if (typeof mv !== "string") throw bad(path, `__metadata__.${mk} is ${JSON.stringify(mv)}, not a string`, "metadata must map strings to strings");
        metadata[mk] = mv;
      }
      continue;
    }
    const t = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof t !== "object" || t === null) throw bad(path, `tensor "${name}" has no description object`, "each tensor needs dtype, shape and data_offsets");
    if (!isDType(t.dtype)) throw bad(path, `tensor "${name}" has unknown dtype ${JSON.stringify(t.dtype)}`, "supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL");
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw bad(path, `tensor "${name}" has shape ${JSON.stringify(t.shape)}`, "a shape is an array of non-negative integers");
    const off = t.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0)) throw bad(path, `tensor "${name}" has data_offsets ${JSON.stringify(off)}`, "data_offsets is [begin, end] in bytes after the header");
    const [b, e] = off as [number, number];
    if (b > e || e > dataBytes) throw bad(path, `tensor "${name}" has data_offsets [${b}, ${e}] outside the ${dataBytes}-byte data section`, "the file is truncated or its header is corrupt");
    const want = numel(t.shape as number[]) * DTYPE_BYTES[t.dtype];
    if (e - b !== want) throw bad(path, `tensor "${name}" spans ${e - b} bytes but shape ${JSON.stringify(t.shape)} × ${t.dtype} needs ${want}`, "the header's shape, dtype and offsets disagree");
    tensors.push({ name, dtype: t.dtype, shape: t.shape as number[], begin: dataStart + b, end: dataStart + e });
  }
  const sorted = [...tensors].sort((x, y) => x.begin - y.begin || x.end - y.end);
  for (let i = 1; i < sorted.length; i++) {
    const p = sorted[i - 1]!;
    const c = sorted[i]!;
    if (c.begin < p.end && c.end > c.begin) throw bad(path, `tensors "${p.name}" and "${c.name}" overlap in the data section`, "the header's data_offsets are corrupt");
  }
  return { tensors, metadata };
}

/** An open safetensors file; tensors are read on demand with positioned reads. */
export class SafetensorsFile {
  readonly tensors: Map<string, TensorEntry>;
  readonly metadata: Record<string, string>;
  readonly size: number;
  private fd: number;

  private constructor(readonly path: string, fd: number, size: number, tensors: TensorEntry[], metadata: Record<string, string>) {
    checkFactoryMade(typeof fd === "number" && Array.isArray(tensors), "SafetensorsFile", "SafetensorsFile.open(path)");
    this.fd = fd;
    this.size = size;
    this.tensors = new Map(tensors.map((t) => [t.name, t]));
    this.metadata = metadata;
  }

  static open(path: string): SafetensorsFile {
    checkStringArg("SafetensorsFile.open()", "the file", path, "pass the path of a .safetensors file");
    let fd: number;
    try {
      fd = fs.openSync(path, "r");
    } catch (e) {
      throw ioError("cannot open", path, e);
    }
    try {
      const st = fs.fstatSync(fd);
      // A folder opens for reading; its first read failed as EISDIR, which the checkpoint then blamed on its folder.
      if (st.isDirectory()) throw bad(path, "is a folder, not a file", "a weight file's name is taken by a folder: move the folder away, or copy the checkpoint again");
      const size = st.size;
      if (size < 8) throw bad(path, `truncated: the file has ${size} bytes, fewer than the 8-byte header length`, "the file is empty or was cut short; copy it again");
      const lenBuf = Buffer.alloc(8);
      fs.readSync(fd, lenBuf, 0, 8, 0);
      const n = lenBuf.readBigUInt64LE(0);
      if (n > BigInt(size - 8)) throw bad(path, `header length ${n} runs past the end of the ${size}-byte file`, "the file is truncated or not a safetensors file");
      if (n > BigInt(MAX_HEADER_BYTES)) throw bad(path, `header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`, "the file is corrupt or not a safetensors file");
      const hlen = Number(n);
      const hbuf = Buffer.alloc(hlen);
      fs.readSync(fd, hbuf, 0, hlen, 8);
      const text = hbuf.toString("utf8");
      const { tensors, metadata } = parseHeader(path, text, 8 + hlen, size - 8 - hlen);
      return new SafetensorsFile(path, fd, size, tensors, metadata);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  entry(name: string): TensorEntry {
    const t = this.tensors.get(name);
    if (!t) throw new MlaError("NOT_FOUND", `${this.path}: no tensor named "${name}"`, `the file holds ${this.tensors.size} tensors, e.g. ${[...this.tensors.keys()].slice(0, 3).join(", ")}`);
    return t;
  }

  /** Raw bytes of a tensor, or of `length` bytes from `offset` inside it. */
  readBytes(name: string, offset = 0, length?: number): Uint8Array {
    const t = this.entry(name);
    const len = length ?? t.end - t.begin - offset;
    if (offset < 0 || offset + len > t.end - t.begin) throw new MlaError("BAD_ARGUMENT", `read of ${len} bytes at ${offset} is outside tensor "${name}" (${t.end - t.begin} bytes)`, "this is a bug in the caller");
    const out = new Uint8Array(len);
    let done = 0;
    while (done < len) {
      const got = fs.readSync(this.fd, out, done, Math.min(len - done, 1 << 30), t.begin + offset + done);
      if (got === 0) throw bad(this.path, `unexpected end of file reading "${name}"`, "the file was truncated while open");
      done += got;
    }
    return out;
  }

  /** Same as readBytes, without blocking the event loop (for overlapping IO with compute). */
  async readBytesAsync(name: string): Promise<Uint8Array> {
    const t = this.entry(name);
    const len = t.end - t.begin;
    const out = new Uint8Array(len);
    let done = 0;
    while (done < len) {
      const got = await new Promise<number>((res, rej) => fs.read(this.fd, out, done, Math.min(len - done, 1 << 30), t.begin + done, (err, n) => (err ? rej(ioError("cannot read", this.path, err)) : res(n))));
      if (got === 0) throw bad(this.path, `unexpected end of file reading "${name}"`, "the file was truncated while open");
      done += got;
    }
    return out;
  }

  /** A floating or integer tensor decoded to float32. */
  readF32(name: string): Float32Array {
    const t = this.entry(name);
    return decodeToF32(t.dtype, this.readBytes(name));
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}

/** Header bytes (length prefix included, padded with spaces to 8-byte alignment) and data offsets. */
export function buildHeader(specs: readonly TensorSpec[], metadata?: Record<string, string>): { bytes: Uint8Array; dataBytes: number } {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) header["__metadata__"] = metadata;
  let off = 0;
  const names = new Set<string>();
  for (const s of specs) {
    if (names.has(s.name)) throw new MlaError("BAD_ARGUMENT", `tensor name "${s.name}" is given twice`, "tensor names in one file must be unique");
    names.add(s.name);
    const n = numel(s.shape) * DTYPE_BYTES[s.dtype];
    header[s.name] = { dtype: s.dtype, shape: s.shape, data_offsets: [off, off + n] };
    off += n;
  }
  let json = Buffer.from(JSON.stringify(header), "utf8");
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const bytes = new Uint8Array(8 + json.length);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(json.length), true);
  bytes.set(json, 8);
  return { bytes, dataBytes: off };
}

/**
 * Streams one safetensors file: the header is written first from the specs, then each tensor's
 * bytes in spec order, in as many chunks as the caller likes. `append` may be called again before
 * the previous promise settles only with a different buffer (writes are queued in order).
 */
export class SafetensorsWriter {
  private fd: number;
  private pos: number;
  private expectedEnd: number;
  private queue: Promise<void> = Promise.resolve();
  /** Set once the file is closed (by close or abandon), so the other does not close it again. */
  private closed = false;

  constructor(readonly path: string, readonly specs: readonly TensorSpec[], metadata?: Record<string, string>) {
    checkStringArg("new SafetensorsWriter()", "the file", path, "pass the path of the .safetensors file to write");
    const { bytes, dataBytes } = buildHeader(specs, metadata);
    try {
      this.fd = fs.openSync(path, "w");
      fs.writeSync(this.fd, bytes, 0, bytes.length, 0);
    } catch (e) {
      throw ioError("cannot write", path, e);
    }
    this.pos = bytes.length;
    this.expectedEnd = bytes.length + dataBytes;
  }

  append(chunk: Uint8Array): Promise<void> {
    if (this.pos + chunk.length > this.expectedEnd) throw new MlaError("BAD_ARGUMENT", `${this.path}: ${this.pos + chunk.length - this.expectedEnd} bytes more than the header declares`, "this is a bug in the caller");
    const at = this.pos;
    this.pos += chunk.length;
    const prev = this.queue;
    this.queue = prev.then(() => writeAll(this.fd, chunk, at, this.path));
    return this.queue;
  }

  appendSync(chunk: Uint8Array): void {
    if (this.pos + chunk.length > this.expectedEnd) throw new MlaError("BAD_ARGUMENT", `${this.path}: ${this.pos + chunk.length - this.expectedEnd} bytes more than the header declares`, "this is a bug in the caller");
    let done = 0;
    try {
      while (done < chunk.length) done += fs.writeSync(this.fd, chunk, done, chunk.length - done, this.pos + done);
    } catch (e) {
      throw ioError("cannot write", this.path, e);
    }
    this.pos += chunk.length;
  }

  async close(): Promise<void> {
    await this.queue;
    this.closeSync();
  }

  /** Closes the file without the completeness check, once queued writes have settled: a write that failed or was stopped (its folder is then removed). */
  async abandon(): Promise<void> {
    await this.queue.catch(() => {});
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.fd);
  }

  closeSync(): void {
    this.closed = true;
    fs.closeSync(this.fd);
    if (this.pos !== this.expectedEnd) throw new MlaError("BAD_ARGUMENT", `${this.path}: ${this.expectedEnd - this.pos} bytes were never written`, "this is a bug in the caller");
  }
}

function writeAll(fd: number, chunk: Uint8Array, at: number, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (done: number): void => {
      if (done >= chunk.length) return resolve();
      fs.write(fd, chunk, done, chunk.length - done, at + done, (err, n) => (err ? reject(ioError("cannot write", path, err)) : step(done + n)));
    };
    step(0);
  });
}

/** Writes a whole small file at once (fixtures, tests, small checkpoints). */
export function writeSafetensorsSync(path: string, tensors: readonly (TensorSpec & { data: Uint8Array })[], metadata?: Record<string, string>): void {
  const w = new SafetensorsWriter(path, tensors, metadata);
  for (const t of tensors) {
    const want = numel(t.shape) * DTYPE_BYTES[t.dtype];
    if (t.data.byteLength !== want) throw new MlaError("BAD_ARGUMENT", `tensor "${t.name}" has ${t.data.byteLength} bytes, shape × dtype needs ${want}`, "pass the raw little-endian bytes of the tensor");
    w.appendSync(t.data);
  }
  w.closeSync();
}
