/**
 * What a perplexity depends on besides the weights, recorded in eval's JSON so that `report` compares
 * like with like. Per-token NLL over another tokenizer's tokens is another quantity (a vocabulary of
 * 512 pieces predicts shorter, easier tokens than one of 32000), and another text is another test.
 * Bits per byte is comparable across tokenizers: the same bytes, whatever pieces cut them.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import type { TextTokenizer } from "../io/tokenizer.js";
import { canonicalJson } from "../util/canonicalJson.js";

/** The tokenizer a run scored with: what turns a text into ids, hashed, and its vocabulary size. */
export interface TokenizerIdentity {
  /**
   * sha256 (first 16 hex digits) of tokenizer.json's normalizer, pre-tokenizer, model (vocabulary,
   * merges) and added tokens, keys sorted: the parts that decide the ids of a text. The decoder and
   * post-processor (special tokens added around it, which the perplexity protocol leaves out) are not
   * in it, nor the file's layout, so a converted model's copy hashes as its source's.
   */
  hash: string;
  vocab_size: number;
}

const sha16 = (text: string) => crypto.createHash("sha256").update(text).digest("hex").slice(0, 16);

/**
 * Encoding hashes by the sha256 of the tokenizer.json bytes they came from: a pipeline evaluates the
 * original, converted and fine-tuned folders, whose tokenizer.json is one copied file, and parsing and
 * sorting a 128k vocabulary with its merges takes a fraction of a second each time.
 */
const encodingHashes = new Map<string, string>();

/** The identity of the tokenizer in model folder `dir` (its tokenizer.json, which loading it has read already). */
export function tokenizerIdentity(dir: string, tokenizer: TextTokenizer): TokenizerIdentity {
  const bytes = fs.readFileSync(path.join(dir, "tokenizer.json"));
  const key = crypto.createHash("sha256").update(bytes).digest("hex");
  let hash = encodingHashes.get(key);
  if (hash === undefined) {
    const tj = JSON.parse(bytes.toString("utf8")) as Record<string, unknown>;
    const encoding = { normalizer: tj["normalizer"] ?? null, pre_tokenizer: tj["pre_tokenizer"] ?? null, model: tj["model"] ?? null, added_tokens: tj["added_tokens"] ?? [] };
    hash = sha16(canonicalJson(encoding));
    if (encodingHashes.size >= 8) encodingHashes.clear(); // a long-lived process reading many tokenizers keeps a few
    encodingHashes.set(key, hash);
  }
  return { hash, vocab_size: tokenizer.vocabSize };
}

/**
 * sha256 (first 16 hex digits) of a text as scored: UTF-8, newlines normalized (a CRLF copy hashes as
 * the original: it tokenizes the same); also of a config's text and of a task's items as JSON.
 */
export function textHash(text: string): string {
  return sha16(text);
}

/**
 * The UTF-8 bytes of `text` that its first `ids.length` tokens cover: all of it when `whole` (every
 * token was scored), else the bytes of the ids decoded, where that is where the text starts (null
 * where it is not: a normalizer that changed the text, a leading space a decoder strips).
 */
export function scoredBytes(text: string, ids: ArrayLike<number>, tokenizer: TextTokenizer, whole: boolean): number | null {
  if (whole) return Buffer.byteLength(text, "utf8");
  const span = tokenizer.decode(Array.from(ids), { cleanUpSpaces: false });
  return text.startsWith(span) ? Buffer.byteLength(span, "utf8") : null;
}
