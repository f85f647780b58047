/**
 * Long texts (an 85 MB training corpus) tokenized in pieces, in worker threads, with the ids one
 * encode of the whole text gives.
 *
 * Why pieces: a SentencePiece-style tokenizer.json has no pre-tokenizer that splits the text into
 * words, so BPE runs over the whole text as one word: one encode of 85 MB builds tens of millions of
 * heap objects (out of memory), and is slower per byte than small pieces (measured on
 * mha26m-debian's tokenizer: 4 KB pieces 0.13 MB/s, 64 KB 0.09, one 200 KB text 0.05).
 * Why exact: a piece ends right after a "\n" followed by a non-whitespace character, and the pieces
 * after the first are encoded as continuations (no "▁" prepended). With no token spanning such a
 * line break, BPE cannot merge across it, so each side is tokenized as in the whole text.
 * That is not assumed: each tokenizer is probed once (splitIsExact) on texts cut at every such
 * boundary, and its vocabulary is searched for a token that spans one; a tokenizer that fails gets
 * every text encoded whole (same ids, slower, and for a very large text limited by the heap).
 */
import os from "node:os";
import { MlaError } from "../errors.js";
import { silentLogger, type Logger } from "../util/log.js";
import { fmtCount, fmtTime } from "../util/progress.js";
import { nextTurn, throwIfStopped } from "../util/abort.js";
import type { TextTokenizer } from "./tokenizer.js";
import { TokenizerThread } from "./tokenizerThread.js";
import { askHeldThread } from "./heldTokenizerThreads.js";

export interface EncodeLongOptions {
  /** Piece length to aim for, in characters (a piece runs on to the next safe line break). Default 4096. */
  pieceChars?: number;
  /** Texts longer than this in all (characters) are encoded in worker threads. Default 1,000,000. */
  parallelAbove?: number;
  /** Worker threads (default: os.availableParallelism(), at most one per batch of pieces). */
  workers?: number;
  /**
   * A piece longer than this (characters: a text without a safe line break, or one encoded whole) sends
   * all pieces to worker threads, however short the text in all, so that this thread's event loop
   * keeps turning while it is encoded (serve). Default: never.
   */
  offThreadPieceChars?: number;
  /** Receives a line when tokenizing starts and ends, and every 10 s in between (with MB/s and ETA). */
  logger?: Logger;
  /** What is being tokenized (the data file), named in progress lines and errors. */
  label?: string;
  /**
   * Polled between pieces (in worker threads: as each batch of pieces comes back): true ends the
   * tokenizing with MlaError INTERRUPTED (finetune's stop: the CLI's SIGINT flag).
   */
  shouldStop?: () => boolean;
}

/** A piece of a text: `cont` = it continues the previous piece (encoded without a leading "▁"). */
export interface Piece {
  text: string;
  cont: boolean;
}

/** Pieces sent to a worker in one message: about this many pieces' worth of characters (64 KB by default: fewer, larger messages). */
const PIECES_PER_BATCH = 16;

/**
 * `text` cut right after line breaks that are followed by a non-whitespace character, each piece at
 * least `pieceChars` long (the last one may be shorter; a text without such a break stays whole).
 */
export function splitAtLines(text: string, pieceChars: number): string[] {
  const safe = /\n(?=\S)/g;
  const pieces: string[] = [];
  for (let start = 0; start < text.length; ) {
    safe.lastIndex = start + Math.max(1, pieceChars) - 1;
    const m = safe.exec(text);
    const end = m ? m.index + 1 : text.length;
    pieces.push(text.slice(start, end));
    start = end;
  }
  return pieces;
}

/** The ids of one piece as an Int32Array (also run in the workers). */
export function encodePiece(tok: TextTokenizer, p: Piece): Int32Array {
  return Int32Array.from(p.cont ? tok.encodeContinuation!(p.text) : tok.encode(p.text));
}

// Lines that start with letters, digits, punctuation, non-ASCII and markup, after spaces, blank
// lines and tabs: the probe cuts before each of them and compares with the whole encoding.
const PROBE_TEXTS = [
  "Once upon a time, there was a dog.\nIt ran  fast!\n\n  Indented line\n\tTab line\n123 numbers 4.5e6 and 1,000\n(parens) [x] {y} \"quoted\" 'single'\n-dash\n...dots\n",
  " leading space\nÜnïcödé — café naïve\n日本語のテキスト\némoji 🙂🚀\n“smart quotes” ‘x’\n–en dash\n#!/bin/sh\nexport FOO=bar\n$HOME/.config\n",
  "trailing spaces   \nnext\n \nafter a space-only line\n\n\nthree blank\nx\ny\nz\n0\n_\n=\n>\n<\n|\n\\\n/usr/share/doc\n~\n",
  // Special-token literals in the text, at a line's start and inside it (Llama-2's files split there before normalizing).
  "a story ends.\n</s>The next one <s>starts. A </s> here\n<s> and a space\n<unk>x\n",
];

const probed = new WeakMap<TextTokenizer, boolean>();

/**
 * Whether a token of `tok`'s vocabulary holds a line break followed by a non-whitespace character, so
 * that BPE may merge across a safe cut in texts the probe texts do not resemble ("\nimport" in a code
 * tokenizer trained without a pre-tokenizer). Llama 2's and stories260K's hold no "\n" at all (it is
 * the byte token <0x0A>). Byte-level vocabularies spell the break "Ċ", which also spells a letter in
 * other vocabularies: those are left to their pre-tokenizer, which splits at line breaks, and the probe.
 */
function vocabSpansSafeCut(tok: TextTokenizer): boolean {
  if (!tok.idToToken) return false;
  for (let id = 0; id < tok.vocabSize; id++) if (/\n[^\s▁]/.test(tok.idToToken(id) ?? "")) return true;
  return false;
}

/**
 * Whether encoding `tok`'s texts in pieces (splitAtLines, continuations) gives the whole text's ids,
 * judged once per tokenizer on PROBE_TEXTS cut at every safe line break.
 */
export function splitIsExact(tok: TextTokenizer): boolean {
  let ok = probed.get(tok);
  if (ok === undefined) {
    ok = !!tok.encodeContinuation && !vocabSpansSafeCut(tok) && PROBE_TEXTS.every((t) => {
      const whole = tok.encode(t);
      const split = splitAtLines(t, 1).flatMap((text, k) => [...encodePiece(tok, { text, cont: k > 0 })]);
      return whole.length === split.length && whole.every((id, i) => id === split[i]);
    });
    probed.set(tok, ok);
  }
  return ok;
}

/** The ids of `text`, as tok.encode(text) gives them (no special tokens). */
export async function encodeLong(tok: TextTokenizer, text: string, o: EncodeLongOptions = {}): Promise<Int32Array> {
  return (await encodeTexts(tok, [text], o))[0]!;
}

/**
 * The ids of each of `texts` (one Int32Array per text, in order), each as tok.encode(text) gives
 * them. Long texts are cut into pieces when the tokenizer passes the probe; all pieces together are
 * encoded in worker threads when they exceed `parallelAbove` characters and the tokenizer knows its
 * folder, else on this thread.
 */
export async function encodeTexts(tok: TextTokenizer, texts: readonly string[], o: EncodeLongOptions = {}): Promise<Int32Array[]> {
  const pieceChars = o.pieceChars ?? 4096;
  const long = texts.some((t) => t.length > pieceChars);
  const exact = long && splitIsExact(tok);
  const pieces: Piece[] = [];
  const owner: number[] = []; // owner[p]: the text piece p belongs to
  texts.forEach((t, i) => {
    (exact && t.length > pieceChars ? splitAtLines(t, pieceChars) : [t]).forEach((text, k) => {
      pieces.push({ text, cont: k > 0 });
      owner.push(i);
    });
  });
  // Consecutive pieces grouped into batches of about PIECES_PER_BATCH·pieceChars: [first piece, end) each.
  const batchChars = PIECES_PER_BATCH * pieceChars;
  const batches: [number, number][] = [];
  let chars = 0;
  for (let p = 0; p < pieces.length; p++) {
    if (batches.length === 0 || chars >= batchChars) {
      batches.push([p, p + 1]);
      chars = 0;
    } else batches[batches.length - 1]![1] = p + 1;
    chars += pieces[p]!.text.length;
  }
  const total = texts.reduce((n, t) => n + t.length, 0);
  if (total === 0) return texts.map(() => new Int32Array(0));
  const offThread = !!tok.dir && o.offThreadPieceChars !== undefined && pieces.some((p) => p.text.length > o.offThreadPieceChars!);
  const workers = tok.dir && (offThread || total > (o.parallelAbove ?? 1_000_000)) ? Math.min(o.workers ?? os.availableParallelism(), batches.length) : 1;
  const threaded = workers > 1 || offThread;

  const log = o.logger ?? silentLogger;
  const label = o.label ?? "text";
  const mb = (chars: number) => (chars / 1e6).toFixed(chars < 1e6 ? 2 : 1); // characters ≈ bytes: the corpora are mostly ASCII
  const t0 = performance.now();
  let done = 0;
  let lastLog = t0;
  log.info(`tokenizing ${label}: ${mb(total)} MB in ${pieces.length} piece(s)${long && !exact ? " (encoded whole: this tokenizer fails the split probe)" : ""}, ${threaded ? `${workers} worker thread${workers > 1 ? "s" : ""}` : "1 thread"}`);
  const ids: Int32Array[] = new Array(pieces.length);
  const encoded = new Set<number>(); // batches whose ids are in
  const finished = (b: number, out: Int32Array[]) => {
    throwIfStopped(o.shouldStop);
    encoded.add(b);
    const [first, end] = batches[b]!;
    for (let p = first; p < end; p++) {
      ids[p] = out[p - first]!;
      done += pieces[p]!.text.length;
    }
    const now = performance.now();
    if (now - lastLog > 10_000) {
      lastLog = now;
      const rate = done / ((now - t0) / 1000);
      log.info(`tokenizing ${label}: ${mb(done)}/${mb(total)} MB (${((100 * done) / total).toFixed(0)}%), ${mb(rate)} MB/s, ETA ${fmtTime((total - done) / rate)}`);
    }
  };
  let onThisThread = !threaded;
  if (threaded) {
    try {
      const batched = batches.map(([a, b]) => pieces.slice(a, b));
      await (workers === 1 ? inHeldWorker({ dir: tok.dir!, filesHash: tok.filesHash }, batched, finished) : inWorkers(tok.dir!, tok.filesHash, batched, workers, finished));
    } catch (e) {
      if (e instanceof MlaError && e.code === "INTERRUPTED") throw e; // a stop, seen as a batch came back: not a failure
      if (!(e instanceof WorkerUnavailable)) throw new MlaError("BAD_TOKENIZER", `tokenizing ${label} in worker threads failed: ${(e as Error).message}`, `the tokenizer in ${tok.dir} could not encode this text; check that the file is UTF-8 text`);
      // Slower, same ids: a runtime that cannot start a thread should not stop a conversion over it.
      log.warn(`${e.message}; tokenizing the rest of ${label} on this thread`);
      onThisThread = true;
    }
  }
  if (onThisThread) {
    // Encoding never yields by itself: the event loop gets a turn every 50 ms (not every piece: a
    // .jsonl of short documents has millions), so that a SIGINT handler can run and a stop be seen.
    let turn = performance.now();
    for (const [i, [a, b]] of batches.entries()) {
      if (encoded.has(i)) continue; // done in a worker before the others could not start
      const out: Int32Array[] = [];
      for (let p = a; p < b; p++) {
        if (performance.now() - turn >= 50) {
          await nextTurn(undefined, o.shouldStop);
          turn = performance.now();
        }
        out.push(encodePiece(tok, pieces[p]!));
      }
      finished(i, out);
    }
  }

  // Each text's pieces concatenated into one array.
  const lengths = texts.map(() => 0);
  ids.forEach((a, p) => (lengths[owner[p]!]! += a.length));
  const out = lengths.map((n) => new Int32Array(n));
  const at = texts.map(() => 0);
  ids.forEach((a, p) => {
    const i = owner[p]!;
    out[i]!.set(a, at[i]!);
    at[i]! += a.length;
  });
  const s = (performance.now() - t0) / 1000;
  log.info(`tokenized ${label}: ${fmtCount(lengths.reduce((x, y) => x + y, 0))} tokens in ${fmtTime(s)} (${mb(total / s)} MB/s)`);
  return out;
}

/** A worker thread could not be created: the batches not yet encoded are encoded on this thread instead. */
class WorkerUnavailable extends Error {}

/** The error for a worker's failed answer: WorkerUnavailable where the worker never started, else its reason. */
function failure(r: { why: string; unstarted?: true }): Error {
  return r.unstarted ? new WorkerUnavailable(r.why) : new Error(r.why);
}

/**
 * Encodes each batch (a list of pieces) in one of `n` worker threads, which load the tokenizer from
 * `dir`; `finished(b, ids)` receives batch b's ids (one Int32Array per piece). Batches are handed
 * out as workers come free; every worker is ended when all are done or on the first error.
 */
async function inWorkers(dir: string, filesHash: string | undefined, batches: Piece[][], n: number, finished: (b: number, ids: Int32Array[]) => void): Promise<void> {
  const threads = Array.from({ length: n }, () => new TokenizerThread(dir, filesHash));
  let next = 0;
  let failed = false;
  const work = async (t: TokenizerThread) => {
    try {
      while (next < batches.length && !failed) {
        const b = next++;
        const r = await t.ask<Int32Array[]>({ kind: "pieces", pieces: batches[b]! });
        if (failed) return; // another worker failed, or a stop was seen: this batch is not wanted
        if (!r.ok) throw failure(r);
        finished(b, r.value);
      }
    } catch (e) {
      failed = true;
      throw e;
    }
  };
  try {
    await Promise.all(threads.map(work));
  } finally {
    await Promise.all(threads.map((t) => t.end()));
  }
}

/**
 * Encodes the batches one after another in the tokenizer's held worker (heldTokenizerThreads.ts): a
 * server's long /tokenize texts come one at a time, and a worker started for each paid the
 * tokenizer's load (~0.2–0.4 s) every time. A stop (finished throws) sends no more batches and leaves
 * the worker, idle, for the next text.
 */
async function inHeldWorker(tok: { dir: string; filesHash?: string }, batches: Piece[][], finished: (b: number, ids: Int32Array[]) => void): Promise<void> {
  for (const [b, pieces] of batches.entries()) {
    const r = await askHeldThread<Int32Array[]>(tok, { kind: "pieces", pieces });
    if (!r.ok) throw failure(r);
    finished(b, r.value);
  }
}
