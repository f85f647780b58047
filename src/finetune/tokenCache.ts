/**
 * On-disk cache of a data file's token stream, so the variants of a study (and resumed runs)
 * tokenize an 85 MB corpus once instead of once per run. One raw little-endian Int32 file per key,
 * named by the SHA-256 of everything the stream depends on: the tokenizer's files, the data file's
 * absolute path, size and mtime (an edited file gets a new key; for an .xz file its own, which fix
 * the text it decompresses to, so a cache hit needs no decompressing), and how documents are joined.
 * Written under a temporary name and renamed, so an interrupted run never leaves a partial file
 * under the real name.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { ioError } from "../errors.js";
import { makeDirs } from "../io/makeDirs.js";

/** Bump when the stream a file gives changes for the same inputs (splitting, joining rules). */
// v2: a long text holding special-token literals is encoded in pieces as one encode gives it.
// v3: Digits pre-tokenizers split at every Unicode number, not at ASCII digits alone.
// v4: a trailer (TRAILER below) checks the ids: a truncated or damaged file was read as a shorter stream.
// v5: a leading byte-order mark is dropped before tokenizing (it was a token).
const FORMAT = "mha2mla-tokens-v5";

/** After the ids: "MLAT", their count (uint32 LE), the first 8 bytes of their SHA-256. */
const TRAILER = 16;
const MAGIC = "MLAT";

function trailerOf(bytes: Buffer): Buffer {
  const t = Buffer.alloc(TRAILER);
  t.write(MAGIC, 0, "latin1");
  t.writeUInt32LE(bytes.length / 4, 4);
  crypto.createHash("sha256").update(bytes).digest().copy(t, 8, 0, 8);
  return t;
}

/**
 * The cache file for `dataFile` tokenized by the tokenizer in `tokenizerDir`, with documents joined
 * by `join.eos` (null: no separator); `join.bos` starts each training sequence.
 */
export function tokenCacheFile(cacheDir: string, tokenizerDir: string, dataFile: string, join: { eos: number | null; bos: number }): string {
  const h = crypto.createHash("sha256").update(FORMAT + "\0");
  for (const name of ["tokenizer.json", "tokenizer_config.json"]) {
    const f = path.join(tokenizerDir, name);
    h.update(`${name}\0`).update(fs.existsSync(f) ? fs.readFileSync(f) : "(absent)").update("\0");
  }
  const abs = path.resolve(dataFile);
  const st = fs.statSync(abs);
  h.update(JSON.stringify({ file: abs, size: st.size, mtimeMs: st.mtimeMs, eos: join.eos, bos: join.bos }));
  return path.join(cacheDir, `${h.digest("hex").slice(0, 32)}.i32`);
}

/**
 * The cached ids in `file`, or null when it is absent or fails its trailer's check (cut short, damaged):
 * the caller tokenizes the data again and writes the cache anew.
 */
export function readTokenCache(file: string): Int32Array | null {
  let whole: Buffer;
  try {
    whole = fs.readFileSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw ioError("cannot read the token cache", file, e);
  }
  if (whole.length < TRAILER || (whole.length - TRAILER) % 4 !== 0) return null;
  let buf = whole.subarray(0, whole.length - TRAILER);
  if (!whole.subarray(buf.length).equals(trailerOf(buf))) return null;
  if (os.endianness() !== "LE") buf = Buffer.from(buf).swap32(); // a copy: subarray views share the file's bytes
  // A view when the buffer is aligned (it is for a fresh file read), else a copy.
  return buf.byteOffset % 4 === 0 ? new Int32Array(buf.buffer, buf.byteOffset, buf.length / 4) : new Int32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
}

/** Stores `ids` (a token stream) in `file` atomically: a temporary name in the same folder, then rename. */
export function writeTokenCache(file: string, ids: Int32Array): void {
  const tmp = `${file}.tmp-${process.pid}-${crypto.randomBytes(4).toString("hex")}`;
  try {
    makeDirs(path.dirname(file), "the token cache's folder");
    let bytes = Buffer.from(ids.buffer, ids.byteOffset, ids.byteLength);
    if (os.endianness() !== "LE") bytes = Buffer.from(bytes).swap32(); // a copy: the caller's ids stay as they are
    fs.writeFileSync(tmp, Buffer.concat([bytes, trailerOf(bytes)]));
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw ioError("cannot write the token cache", file, e);
  }
}
