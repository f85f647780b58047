/**
 * Text as Python's text mode reads it (universal newlines: "\r\n" and a lone "\r" become "\n"),
 * which is how HF scripts and lm-eval read every corpus and task file: keeping the "\r" tokens
 * changes the token ids and the NLL (issue 16).
 *
 * A file that is not UTF-8 text (a checkpoint, a compressed corpus passed as --text or --data) is
 * refused: decoded as text it tokenizes into replacement characters and gives a plausible-looking but
 * meaningless perplexity or training run. Its first few KB decide, so the check costs nothing.
 */
import fs from "node:fs";
import { MlaError } from "../errors.js";

/** Bytes looked at: a binary file shows itself within them; a text that turns binary further in is not worth reading a corpus twice for. */
export const SNIFF_BYTES = 8192;

/** Leading bytes of `magic` at the start. */
const startsWith = (magic: number[]) => (head: Uint8Array) => magic.every((b, i) => head[i] === b);

/** Formats a text option is often given by mistake, recognized by their first bytes, with what to do instead. */
const KNOWN_BINARY: { name: string; is: (head: Uint8Array) => boolean; hint: (file: string) => string }[] = [
  { name: "gzip-compressed data", is: startsWith([0x1f, 0x8b]), hint: (f) => `decompress it first (gzip -dk ${f})` },
  { name: "xz-compressed data", is: startsWith([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), hint: (f) => `decompress it first (xz -dk ${f})` },
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

/** The bytes of `file` as text with newlines normalized; refused (naming `file`) when they do not start as UTF-8 text. */
export function decodeText(buf: Buffer, file: string, expected?: string): string {
  requireText(buf, file, expected);
  return normalizeNewlines(buf.toString("utf8"));
}

/** A UTF-8 text file with newlines normalized; a binary one is refused by name, file-system errors propagate for the caller to name. */
export function readTextFile(file: string): string {
  return decodeText(fs.readFileSync(file), file);
}
