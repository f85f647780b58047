/**
 * Training data: text files and JSONL files of {"text": …} tokenized with the model's tokenizer
 * (no special tokens; documents joined by EOS when the model has one) into one token stream. The
 * last `valFraction` of the stream is held out for validation; `fraction` keeps only the first part
 * of the training tokens. Training sequences are non-overlapping [BOS] + (seq−1) consecutive
 * tokens, visited in a seeded random order that is reshuffled every epoch.
 */
import { readTextFile } from "../io/text.js";
import { MlaError, ioError } from "../errors.js";
import type { TextTokenizer } from "../io/tokenizer.js";
import { Rng } from "./rng.js";

export interface DataOptions {
  valFraction: number;
  /** Keep this fraction of the training tokens (the paper trains on a small fraction of the data). */
  fraction?: number;
  seq: number;
  bos: number;
  eos: number | null;
}

export interface TrainingData {
  train: Int32Array;
  val: Int32Array;
  /** Number of training sequences of `seq` tokens (BOS included). */
  sequences: number;
  seq: number;
  bos: number;
}

export function readDocuments(file: string): string[] {
  let text: string;
  try {
    text = readTextFile(file);
  } catch (e) {
    throw ioError("cannot read data", file, e);
  }
  if (!file.endsWith(".jsonl")) return [text];
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

export function loadTrainingData(tokenizer: TextTokenizer, files: string[], o: DataOptions): TrainingData {
  if (files.length === 0) throw new MlaError("BAD_ARGUMENT", "no --data files given", "pass --data FILE (text or .jsonl with a text field)");
  if (!Number.isInteger(o.seq) || o.seq < 2) throw new MlaError("BAD_ARGUMENT", `--seq ${o.seq} is too small`, "use at least 2 (BOS + one token)");
  if (!(o.valFraction >= 0 && o.valFraction < 1)) throw new MlaError("BAD_ARGUMENT", `--val-fraction ${o.valFraction} is outside [0, 1)`, "e.g. 0.1 holds out the last 10% of the tokens");
  const fraction = o.fraction ?? 1;
  if (!(fraction > 0 && fraction <= 1)) throw new MlaError("BAD_ARGUMENT", `--fraction ${fraction} is outside (0, 1]`, "e.g. 0.01 trains on the first 1% of the data");
  const stream: number[] = [];
  for (const f of files)
    for (const d of readDocuments(f)) {
      if (stream.length && o.eos !== null && d.length) stream.push(o.eos);
      for (const id of tokenizer.encode(d)) stream.push(id);
    }
  if (stream.length === 0) throw new MlaError("BAD_TEXT", `the training data (${files.join(", ")}) holds no tokens`, "pass non-empty text");
  const cut = Math.floor(stream.length * (1 - o.valFraction));
  const train = Int32Array.from(stream.slice(0, Math.floor(cut * fraction)));
  const val = Int32Array.from(stream.slice(cut));
  const sequences = Math.floor(train.length / (o.seq - 1));
  if (sequences < 1) throw new MlaError("BAD_TEXT", `the training part of the data has ${train.length} tokens, fewer than one sequence of ${o.seq - 1} (+BOS)`, "pass more data or a smaller --seq");
  return { train, val, sequences, seq: o.seq, bos: o.bos };
}

/** Sequence `i` of the training stream: [BOS] + tokens i·(seq−1) … (i+1)·(seq−1)−1. */
export function sequence(d: TrainingData, i: number): Int32Array {
  const s = new Int32Array(d.seq);
  s[0] = d.bos;
  s.set(d.train.subarray(i * (d.seq - 1), (i + 1) * (d.seq - 1)), 1);
  return s;
}

/** The visiting order of epoch `epoch`: a permutation drawn from (seed, epoch) alone, so a resumed run draws the same one. */
export function epochOrder(sequences: number, seed: number, epoch: number): Int32Array {
  return new Rng((seed * 1000003 + epoch * 7919 + 17) >>> 0).permutation(sequences);
}
