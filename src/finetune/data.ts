/**
 * Training data: text files and JSONL files of {"text": …}, or .xz files of either, tokenized with
 * the model's tokenizer (no special tokens; documents joined by EOS when the model has one) into one
 * token stream. The last `valFraction` of the stream is held out for validation; `fraction` keeps
 * only the first part of the training tokens. Training sequences are non-overlapping [BOS] + (seq−1)
 * consecutive tokens, visited in a seeded random order that is reshuffled every epoch.
 *
 * A large file is tokenized in pieces on worker threads (io/encodeLong.ts: same ids as one encode)
 * into Int32Arrays, and with a cache folder its stream is stored once and reused (tokenCache.ts). An
 * .xz file is decompressed in memory by the xz tool (io/text.ts readXzText), never onto the disk:
 * with a cache, only the first run decompresses it (the key is the .xz file's own size and mtime).
 */
import fs from "node:fs";
import { isXzFile, readTextFile, readXzText, sniffTextFile, sniffXzFile } from "../io/text.js";
import { MlaError, ioError } from "../errors.js";
import { encodeTexts, type EncodeLongOptions } from "../io/encodeLong.js";
import { checkIdsInVocab, type TextTokenizer } from "../io/tokenizer.js";
import { silentLogger, type Logger } from "../util/log.js";
import { Rng } from "./rng.js";
import { readTokenCache, tokenCacheFile, writeTokenCache } from "./tokenCache.js";

export interface DataOptions {
  valFraction: number;
  /** Keep this fraction of the training tokens (the paper trains on a small fraction of the data). */
  fraction?: number;
  seq: number;
  bos: number;
  eos: number | null;
  /**
   * The model's vocabulary (`size` ids, vocab_size in `dir`'s config.json): a file whose ids pass it is
   * refused, naming the file, before any training (a tokenizer.json with more tokens than the weights
   * gave them to the first validation or step, whose refusal named no file). None: not checked.
   */
  vocab?: { size: number; dir: string };
  /** Folder of cached token streams, one per data file (needs a tokenizer that knows its folder); none: tokenize every time. */
  cacheDir?: string;
  /** Receives the tokenizing progress and cache hits. */
  logger?: Logger;
  /** Piece size and threads of the tokenizing (defaults suit a corpus; tests force small values). */
  encode?: Omit<EncodeLongOptions, "logger" | "label" | "shouldStop">;
  /** Polled between pieces of the tokenizing: true stops it (MlaError INTERRUPTED); nothing is cached. */
  shouldStop?: () => boolean;
}

/** What one file's token stream depends on, and where it is cached (DataOptions' fields). */
type StreamOptions = Pick<DataOptions, "bos" | "eos" | "vocab" | "cacheDir" | "logger" | "encode" | "shouldStop">;

export interface TrainingData {
  train: Int32Array;
  val: Int32Array;
  /** Number of training sequences of `seq` tokens (BOS included). */
  sequences: number;
  seq: number;
  bos: number;
}

/**
 * Refuses a --data path before any work (loading the model, tokenizing the others): missing, a folder,
 * empty (a wrong path or a failed download, which would otherwise add nothing, unnoticed beside other
 * files), or not text by its first bytes (an .xz file: not xz data by them). Perplexity's --text check
 * is the same, but for .xz and the --data wording.
 */
export function checkDataFile(file: string, flag = "--data"): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (e) {
    throw ioError("cannot read data", file, e);
  }
  if (st.isDirectory()) throw new MlaError("BAD_ARGUMENT", `${flag} ${file} is a folder, not a text file`, `pass the files themselves (.txt, or .jsonl of {"text": …} lines, or .xz of either), e.g. ${flag} folder/*.txt`);
  // A pipe (--data <(xz -dc corpus.xz)) reports size 0, and a sniff would take its first bytes from training.
  if (!st.isFile()) return;
  if (st.size === 0) throw new MlaError("BAD_TEXT", `${flag} ${file} is empty`, "pass a text file with some content (a wrong path or an interrupted download?)");
  try {
    if (isXzFile(file)) sniffXzFile(file);
    else sniffTextFile(file);
  } catch (e) {
    throw ioError("cannot read data", file, e);
  }
}

/** The documents of a data file's text: the whole text, or for a .jsonl file (`name`, .xz stripped) each line's "text". */
function documentsOf(text: string, file: string, name = file): string[] {
  if (!name.endsWith(".jsonl")) return [text];
  const docs: string[] = [];
  text.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    let row: unknown;
    try {
      row = JSON.parse(line);
    } catch (e) {
      throw new MlaError("BAD_TEXT", `${file}:${i + 1}: not valid JSON (${(e as Error).message})`, 'each line of a .jsonl file is an object like {"text": "..."}');
    }
    const t = (row as { text?: unknown })?.text;
    if (typeof t !== "string") throw new MlaError("BAD_TEXT", `${file}:${i + 1}: no string "text" field`, 'each line of a .jsonl file is an object like {"text": "..."}');
    docs.push(t);
  });
  return docs;
}

/** The documents of a plain (not compressed) data file. */
export function readDocuments(file: string): string[] {
  let text: string;
  try {
    text = readTextFile(file);
  } catch (e) {
    throw ioError("cannot read data", file, e);
  }
  return documentsOf(text, file);
}

/**
 * The documents of a data file, an .xz one decompressed in memory (corpus.jsonl.xz is JSONL): its
 * text is held once, as a plain file's is, and with a token cache only until its tokens are stored.
 */
async function readDataDocuments(file: string, shouldStop?: () => boolean): Promise<string[]> {
  if (!isXzFile(file)) return readDocuments(file);
  let text: string;
  try {
    text = await readXzText(file, shouldStop);
  } catch (e) {
    throw ioError("cannot read data", file, e);
  }
  return documentsOf(text, file, file.slice(0, -".xz".length));
}

/**
 * Refuses one file given twice (by any path to it): its text would be trained on twice, and the
 * validation tail (the stream's last part) would hold text the run also trains on.
 */
function refuseRepeatedFiles(files: readonly string[]): void {
  const seen = new Map<string, string>();
  for (const f of files) {
    let real: string;
    try {
      real = fs.realpathSync(f);
    } catch {
      continue; // reading it names what is wrong
    }
    const first = seen.get(real);
    if (first !== undefined) throw new MlaError("BAD_ARGUMENT", `--data ${f} is the same file as --data ${first}`, "give each file once (twice, it is trained on twice and its copy in the held-out validation tail is text the run trained on)");
    seen.set(real, f);
  }
}

export async function loadTrainingData(tokenizer: TextTokenizer, files: string[], o: DataOptions): Promise<TrainingData> {
  if (files.length === 0) throw new MlaError("BAD_ARGUMENT", "no --data files given", "pass --data FILE (text, .jsonl with a text field, or .xz of either)");
  refuseRepeatedFiles(files);
  const fraction = o.fraction ?? 1;
  const streams: Int32Array[] = [];
  for (const f of files) streams.push(await fileTokens(tokenizer, f, o));
  const stream = joinWith(streams, o.eos);
  if (stream.length === 0) throw new MlaError("BAD_TEXT", `the training data (${files.join(", ")}) holds no tokens`, "pass non-empty text");
  const cut = Math.floor(stream.length * (1 - o.valFraction));
  // Views of the one stream: no copies of a corpus-sized array.
  const train = stream.subarray(0, Math.floor(cut * fraction));
  const val = stream.subarray(cut);
  const sequences = Math.floor(train.length / (o.seq - 1));
  if (sequences < 1) {
    // Where --fraction or --val-fraction took the tokens, say so: "more data" would not be the fix.
    const cuts = [...(fraction < 1 ? [`--fraction ${fraction} keeps ${train.length} of its ${cut}`] : []), ...(o.valFraction > 0 ? [`--val-fraction ${o.valFraction} holds out ${val.length}`] : [])];
    throw new MlaError("BAD_TEXT", `the training part of the data has ${train.length} tokens, fewer than one sequence of ${o.seq - 1} (+BOS)${cuts.length ? ` (the files hold ${stream.length} tokens; ${cuts.join(", ")})` : ""}`, `pass more data or a smaller --seq${fraction < 1 ? ", or a larger --fraction" : ""}`);
  }
  return { train, val, sequences, seq: o.seq, bos: o.bos };
}

/**
 * Refuses `files` whose ids `tokenizer` puts past the model's vocabulary (o.vocab), as loadTrainingData
 * does, for a run that trains on them later (a pipeline's fine-tune phase, after its conversion and
 * evaluations): each file is tokenized as loadTrainingData tokenizes it, from and into the token cache
 * o.cacheDir, where the training run then reads it instead of tokenizing it again. Where the tokenizer
 * has no id past the vocabulary nothing is read (idsMayPassVocab).
 */
export async function checkDataIds(tokenizer: TextTokenizer, files: readonly string[], o: StreamOptions & { vocab: NonNullable<DataOptions["vocab"]> }): Promise<void> {
  if (!idsMayPassVocab(tokenizer, o.vocab.size)) return;
  for (const f of files) await fileTokens(tokenizer, f, o);
}

/** Whether `tokenizer` can give an id past a vocabulary of `size` ids (its tokenizer.json has more): only then are a data file's ids checked. */
export const idsMayPassVocab = (tokenizer: TextTokenizer, size: number): boolean => tokenizer.vocabSize > size;

/** The token stream of one data file: its documents' ids joined by EOS (when the model has one); from the cache when there. */
async function fileTokens(tokenizer: TextTokenizer, file: string, o: StreamOptions): Promise<Int32Array> {
  const log = o.logger ?? silentLogger;
  let cacheFile: string | null = null;
  if (o.cacheDir && tokenizer.dir) {
    try {
      cacheFile = tokenCacheFile(o.cacheDir, tokenizer.dir, file, { eos: o.eos, bos: o.bos });
    } catch (e) {
      throw ioError("cannot read data", file, e);
    }
    const cached = readTokenCache(cacheFile);
    if (cached) {
      log.info(`${file}: ${cached.length.toLocaleString("en-US")} tokens from the token cache ${cacheFile}`);
      checkFileIds(tokenizer, cached, file, o);
      return cached;
    }
    if (fs.existsSync(cacheFile)) log.warn(`${cacheFile}: the token cache fails its check (cut short or changed): tokenizing ${file} again and writing it anew`);
  }
  const docs = (await readDataDocuments(file, o.shouldStop)).filter((d) => d.length > 0);
  const ids = joinWith(await encodeTexts(tokenizer, docs, { ...o.encode, logger: log, label: file, shouldStop: o.shouldStop }), o.eos);
  checkFileIds(tokenizer, ids, file, o);
  if (cacheFile) writeTokenCache(cacheFile, ids);
  return ids;
}

/**
 * Refuses `file`'s ids past the model's vocabulary (o.vocab). Only a tokenizer with ids past it can
 * give one: with any other, the stream is not scanned.
 */
function checkFileIds(tokenizer: TextTokenizer, ids: Int32Array, file: string, o: StreamOptions): void {
  if (o.vocab && idsMayPassVocab(tokenizer, o.vocab.size)) checkIdsInVocab(ids, o.vocab.size, file, o.vocab.dir);
}

/**
 * `parts` (token streams) concatenated into one Int32Array, with `sep` between consecutive non-empty
 * parts (nothing when null). A single non-empty part is returned as is.
 */
function joinWith(parts: Int32Array[], sep: number | null): Int32Array {
  const kept = parts.filter((p) => p.length > 0);
  if (kept.length === 1) return kept[0]!;
  const gap = sep === null ? 0 : 1;
  const out = new Int32Array(kept.reduce((n, p) => n + p.length, 0) + gap * Math.max(0, kept.length - 1));
  let at = 0;
  kept.forEach((p, i) => {
    if (i > 0 && sep !== null) out[at++] = sep;
    out.set(p, at);
    at += p.length;
  });
  return out;
}

/** Sequence `i` of the training stream: [BOS] + tokens i·(seq−1) … (i+1)·(seq−1)−1. */
export function sequence(d: TrainingData, i: number): Int32Array {
  const s = new Int32Array(d.seq);
  s[0] = d.bos;
  s.set(d.train.subarray(i * (d.seq - 1), (i + 1) * (d.seq - 1)), 1);
  return s;
}

/**
 * The training micro-batches in visiting order: each call returns `batch` sequences as inputs and
 * next-token targets ([batch·(seq−1)] each), advancing `pos` (epoch, cursor: what a checkpoint
 * records, so a resumed run continues the same order) and reshuffling at each epoch's end.
 */
export function microBatches(d: TrainingData, batch: number, seed: number, pos: { epoch: number; cursor: number }): () => { inputs: Int32Array; targets: Int32Array; sequences: number } {
  let order = epochOrder(d.sequences, seed, pos.epoch);
  const next = () => {
    if (pos.cursor >= d.sequences) {
      pos.epoch++;
      pos.cursor = 0;
      order = epochOrder(d.sequences, seed, pos.epoch);
    }
    return sequence(d, order[pos.cursor++]!);
  };
  const T = d.seq - 1;
  return () => {
    const inputs = new Int32Array(batch * T);
    const targets = new Int32Array(batch * T);
    for (let i = 0; i < batch; i++) {
      const s = next();
      inputs.set(s.subarray(0, T), i * T);
      targets.set(s.subarray(1), i * T);
    }
    return { inputs, targets, sequences: batch };
  };
}

/** The visiting order of epoch `epoch`: a permutation drawn from (seed, epoch) alone, so a resumed run draws the same one. */
export function epochOrder(sequences: number, seed: number, epoch: number): Int32Array {
  return new Rng((seed * 1000003 + epoch * 7919 + 17) >>> 0).permutation(sequences);
}
