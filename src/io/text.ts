/**
 * Text as Python's text mode reads it (universal newlines: "\r\n" and a lone "\r" become "\n"),
 * which is how HF scripts and lm-eval read every corpus and task file: keeping the "\r" tokens
 * changes the token ids and the NLL (issue 16).
 *
 * A file that is not UTF-8 text (a checkpoint, a compressed corpus passed as --text or --data) is
 * refused: decoded as text it tokenizes into replacement characters and gives a plausible-looking but
 * meaningless perplexity or training run. Its first few KB decide, so the check costs nothing.
 * A reader that takes compressed text (finetune's and study's --data: a corpus is often shipped as
 * .xz) decompresses a file named .xz with readXzText.
 */
import { constants } from "node:buffer";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { MlaError } from "../errors.js";

/** Bytes looked at: a binary file shows itself within them; a text that turns binary further in is not worth reading a corpus twice for. */
export const SNIFF_BYTES = 8192;

/** Leading bytes of `magic` at the start. */
const startsWith = (magic: number[]) => (head: Uint8Array) => magic.every((b, i) => head[i] === b);

const XZ_MAGIC = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];

/** Formats a text option is often given by mistake, recognized by their first bytes, with what to do instead. */
const KNOWN_BINARY: { name: string; is: (head: Uint8Array) => boolean; hint: (file: string) => string }[] = [
  { name: "gzip-compressed data", is: startsWith([0x1f, 0x8b]), hint: (f) => `decompress it first (gzip -dk ${f})` },
  { name: "xz-compressed data", is: startsWith(XZ_MAGIC), hint: (f) => `decompress it first (xz -dk ${f})` },
  // "BZh", the block size digit, then the first block's magic (a text may well start with "BZh").
  { name: "bzip2-compressed data", is: (h) => startsWith([0x42, 0x5a, 0x68])(h) && startsWith([0x31, 0x41, 0x59, 0x26, 0x53, 0x59])(h.subarray(4)), hint: (f) => `decompress it first (bzip2 -dk ${f})` },
  { name: "zstd-compressed data", is: startsWith([0x28, 0xb5, 0x2f, 0xfd]), hint: (f) => `decompress it first (zstd -d ${f})` },
  { name: "a zip archive", is: startsWith([0x50, 0x4b, 0x03, 0x04]), hint: () => "extract the text file from it first" },
  // An 8-byte little-endian header length (far below 2^32), then the JSON header.
  { name: "a safetensors checkpoint", is: (h) => startsWith([0, 0, 0, 0, 0x7b, 0x22])(h.subarray(4)), hint: () => "that is model weights, not text" },
];

const PLAIN_TEXT = 'pass a plain UTF-8 text file (or, where the command reads them, a .jsonl file of {"text": …} lines)';

export function normalizeNewlines(text: string): string {
  return text.includes("\r") ? text.replace(/\r\n?/g, "\n") : text;
}

/**
 * Why `head`, the first bytes of `file`, is not UTF-8 text, and what to pass instead (`expected`);
 * null when it is text (a character cut at the end of `head` is not held against it).
 */
function notText(head: Uint8Array, file: string, expected: string): { why: string; hint: string } | null {
  const known = KNOWN_BINARY.find((k) => k.is(head));
  if (known) return { why: `looks like ${known.name}`, hint: `${known.hint(file)}; ${expected}` };
  if (head.includes(0)) return { why: "holds NUL bytes (binary data, or UTF-16 text)", hint: expected };
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(head, { stream: true });
  } catch {
    return { why: "is not valid UTF-8", hint: `${expected}; convert another encoding first (iconv -t utf-8)` };
  }
  return null;
}

/** Refuses `buf`, holding `file` or its start, when its first SNIFF_BYTES are not UTF-8 text; `expected` says what to pass instead. */
function requireText(buf: Uint8Array, file: string, expected = PLAIN_TEXT): void {
  const bad = notText(buf.subarray(0, SNIFF_BYTES), file, expected);
  if (bad) throw new MlaError("BAD_TEXT", `${file} is not a text file: its start ${bad.why}`, bad.hint);
}

/** Refuses `file` when its first bytes are not UTF-8 text, reading only those. */
export function sniffTextFile(file: string): void {
  const head = Buffer.alloc(SNIFF_BYTES);
  const fd = fs.openSync(file, "r");
  try {
    requireText(head.subarray(0, fs.readSync(fd, head, 0, SNIFF_BYTES, 0)), file);
  } finally {
    fs.closeSync(fd);
  }
}

/** The tool that made `buf` out of a compressed `file` (decodeText): its bad bytes are in the decompressed text. */
export type Decompressor = "xz" | "bzip2";

/**
 * The bytes of `file` as text with newlines normalized and a leading byte-order mark dropped (Windows
 * editors write one: it was scored as a token, and failed a .jsonl's first line as invisible "bad JSON");
 * refused (naming `file`) when they do not start as UTF-8 text. `from`: `buf` is `file` decompressed by
 * that tool, so a refusal points into the decompressed text and says to decompress before converting.
 */
export function decodeText(buf: Buffer, file: string, expected?: string, from?: Decompressor): string {
  // Decompressed: converting means decompressing first (iconv on the archive would mangle it), unless the
  // caller says what to do instead (a benchmark's task file: copy it again).
  const fix = (tool: Decompressor) => expected ?? decompressFirst(file, tool);
  if (from) {
    const bad = notText(buf.subarray(0, SNIFF_BYTES), file, PLAIN_TEXT);
    if (bad) throw new MlaError("BAD_TEXT", `${file} does not hold text once decompressed: its start ${bad.why}`, fix(from));
  } else requireText(buf, file, expected);
  const text = buf.toString("utf8");
  // Bytes that are not UTF-8 past the start became U+FFFD unseen (and were scored); Python's strict
  // decoding refuses them too. A U+FFFD in the text is either such a byte or one written as text.
  const at = text.includes("\uFFFD") ? firstInvalidUtf8(buf) : null;
  if (at !== null && from) throw new MlaError("BAD_TEXT", `${file} holds text that is not valid UTF-8: a byte that is not UTF-8 at offset ${at} of its ${buf.length} decompressed bytes`, fix(from));
  if (at !== null) throw new MlaError("BAD_TEXT", `${file} is not valid UTF-8 past its start: a byte that is not UTF-8 at offset ${at} of ${buf.length}`, `convert it (iconv -f ENCODING -t utf-8), or drop the bad bytes (iconv -f utf-8 -t utf-8 -c ${file} > clean.txt)`);
  return normalizeNewlines(stripBom(text));
}

/** How to clean the text inside a compressed `file`: decompress, convert keeping its kind (.jsonl stays .jsonl), pass the result. */
function decompressFirst(file: string, from: Decompressor): string {
  const plain = file.replace(/\.(xz|bz2)$/, "");
  const ext = path.extname(plain);
  const clean = `${plain.slice(0, plain.length - ext.length)}.clean${ext}`;
  return `decompress it (${from} -dk ${file}), convert the text (iconv -f ENCODING -t utf-8 ${plain} > ${clean}, or drop the bad bytes with iconv -f utf-8 -t utf-8 -c), and pass ${clean}`;
}

/**
 * Where buf stops being UTF-8, as Python's strict decoding reports it (the first byte of the bad or cut-short
 * character), or null when all of it is.
 */
function firstInvalidUtf8(buf: Uint8Array): number | null {
  // Whether buf[from, end) holds bytes that are not UTF-8 (a character cut at `end` is not held against it).
  const bad = (from: number, end: number) => {
    try {
      new TextDecoder("utf-8", { fatal: true }).decode(buf.subarray(from, end), { stream: true });
      return false;
    } catch {
      return true;
    }
  };
  // The lead byte of a character at or before `at` that is cut short there (its length by its lead byte), else `at`.
  const leadOf = (at: number, from: number) => {
    let j = at - ((buf[at]! & 0xc0) === 0x80 ? 0 : 1);
    while (j > from && j > at - 4 && (buf[j]! & 0xc0) === 0x80) j--;
    const b = buf[j]!;
    const len = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
    return j < at && len > 1 && j + len > at ? j : at;
  };
  // Pieces through one streaming decoder find the piece (a character may cross into the next one).
  const PIECE = 1 << 16;
  const decoder = new TextDecoder("utf-8", { fatal: true });
  for (let i = 0; i < buf.length; i += PIECE) {
    try {
      decoder.decode(buf.subarray(i, i + PIECE), { stream: true });
      continue;
    } catch {
      // From the character boundary at or before the piece's start (a cut character there included):
    }
    let from = Math.max(0, i - 3);
    while (from < i && (buf[from]! & 0xc0) === 0x80) from++;
    // the shortest bad prefix ends just past the byte where decoding fails.
    let lo = from, hi = Math.min(buf.length, i + PIECE);
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (bad(from, mid)) hi = mid;
      else lo = mid;
    }
    return leadOf(hi - 1, from);
  }
  try {
    decoder.decode();
    return null;
  } catch {
    // A character cut by the end of the file.
    return leadOf(buf.length - 1, Math.max(0, buf.length - 4));
  }
}

/** `text` without a leading byte-order mark (which editors on Windows write, and JSON.parse refuses). */
export function stripBom(text: string): string {
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/** A UTF-8 text file with newlines normalized; a binary one is refused by name, file-system errors propagate for the caller to name. */
export function readTextFile(file: string): string {
  return decodeText(fs.readFileSync(file), file);
}

/** Whether a reader that takes compressed text decompresses `file`: by its name, as `study --data` always has. */
export function isXzFile(file: string): boolean {
  return file.endsWith(".xz");
}

/** Refuses `file`, named .xz, when its first bytes are not xz's (a renamed text, a gzip file), reading only those. */
export function sniffXzFile(file: string): void {
  const head = Buffer.alloc(XZ_MAGIC.length);
  const fd = fs.openSync(file, "r");
  try {
    fs.readSync(fd, head, 0, head.length, 0);
  } finally {
    fs.closeSync(fd);
  }
  if (!startsWith(XZ_MAGIC)(head)) throw new MlaError("BAD_TEXT", `${file} is named .xz but does not start as xz-compressed data`, `pass the file under its own name (a plain text file without .xz), or compress it with xz -k`);
}

/**
 * The decompressed size of the .xz `file` that its index records (`xz --list` reads only the index),
 * or null when not told (no tool, a damaged index): the text is then gathered in chunks.
 */
function xzSize(file: string): number | null {
  const r = spawnSync("xz", ["--robot", "--list", "--", file], { encoding: "utf8" });
  const totals = r.status === 0 ? r.stdout.split("\n").find((l) => l.startsWith("totals\t")) : undefined;
  const n = Number(totals?.split("\t")[4]);
  return Number.isSafeInteger(n) && n >= 0 ? n : null;
}

/**
 * The text of the xz-compressed `file`, newlines normalized, refused as readTextFile refuses binary
 * data. Decompressed by the xz tool (no xz decoder is among the dependencies; the study has always
 * used the tool) and streamed into memory, never onto the disk: into one buffer of the size the
 * archive's index records, so the bytes are held once, as readTextFile holds a plain file's (chunks
 * joined at the end where the index does not say). A damaged or truncated archive, or no xz tool, is
 * refused naming the file. `shouldStop` is polled as the chunks come: true stops the tool and throws
 * MlaError INTERRUPTED.
 */
export function readXzText(file: string, shouldStop?: () => boolean): Promise<string> {
  const plain = file.slice(0, -".xz".length) || "the decompressed file";
  const size = xzSize(file);
  // Node refuses to make a string of a UTF-8 buffer longer than MAX_STRING_LENGTH bytes (ERR_STRING_TOO_LONG).
  if (size !== null && size > constants.MAX_STRING_LENGTH)
    throw new MlaError("BAD_TEXT", `${file} decompresses to ${size} bytes, more text than one string holds (${constants.MAX_STRING_LENGTH} characters)`, "split the corpus into several files and pass them all");
  return new Promise((resolve, reject) => {
    const xz = spawn("xz", ["-dc", "--", file], { stdio: ["ignore", "pipe", "pipe"] });
    let whole: Buffer | null = size === null ? null : Buffer.allocUnsafe(size);
    const chunks: Buffer[] = [];
    let bytes = 0;
    let stderr = "";
    let failed: Error | null = null;
    xz.stdout.on("data", (c: Buffer) => {
      if (failed) return;
      if (shouldStop?.()) {
        failed = new MlaError("INTERRUPTED", `stopped while decompressing ${file}`, "nothing was kept; run it again to redo the work");
        xz.kill();
        return;
      }
      if (whole && bytes + c.length <= whole.length) c.copy(whole, bytes);
      else {
        // More than the index said (it cannot be, for an archive xz accepts): gathered in chunks from here.
        if (whole) chunks.push(whole.subarray(0, bytes));
        whole = null;
        chunks.push(c);
      }
      bytes += c.length;
    });
    xz.stderr.on("data", (c: Buffer) => {
      if (stderr.length < 2000) stderr += c.toString("utf8");
    });
    xz.on("error", (e: NodeJS.ErrnoException) => {
      failed ??= e.code === "ENOENT"
        ? new MlaError("UNSUPPORTED", `${file} is xz-compressed and the xz tool that decompresses it was not found`, `install it (apt-get install xz-utils, brew install xz), or decompress the file where xz is (xz -dk ${file}) and pass ${plain}`)
        : new MlaError("IO", `cannot run the xz tool on ${file}: ${e.message}`, `decompress it yourself (xz -dk ${file}) and pass ${plain}`);
      reject(failed); // a process that never started may not report "close"
    });
    xz.on("close", (code, signal) => {
      if (failed) return reject(failed);
      if (code !== 0) {
        // xz's lines read "xz: FILE: Compressed data is corrupt": the message names the file once.
        const said = stderr.trim().split("\n").map((l) => l.replace(/^xz: /, "").replace(`${file}: `, "")).join("; ");
        const why = said || (signal ? `killed by ${signal}` : `exit status ${code}`);
        return reject(new MlaError("BAD_TEXT", `${file} could not be decompressed: ${why}`, `the archive is damaged or truncated (xz -t ${file} checks it); fetch or compress it again, or pass the plain text file`));
      }
      try {
        const buf = whole ? whole.subarray(0, bytes) : Buffer.concat(chunks, bytes);
        chunks.length = 0; // the pieces go before the string is made
        resolve(decodeText(buf, file, undefined, "xz"));
      } catch (e) {
        reject(e);
      }
    });
  });
}
