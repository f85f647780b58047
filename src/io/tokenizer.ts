/** Tokenizer from a model folder's `tokenizer.json` (+ `tokenizer_config.json`), via @huggingface/tokenizers. */
import fs from "node:fs";
import path from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { MlaError } from "../errors.js";

export interface TextTokenizer {
  /** Token ids of `text`; special tokens (BOS) only when asked. */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  decode(ids: readonly number[]): string;
  readonly vocabSize: number;
}

function readJson(file: string, required: boolean): Record<string, unknown> | null {
  if (!fs.existsSync(file)) {
    if (!required) return null;
    throw new MlaError("BAD_TOKENIZER", `${file} does not exist`, "the model folder needs a tokenizer.json (SentencePiece-only tokenizer.model files are not read)");
  }
  try {
    return JSON.parse(fs.readFileSync(file, "utf8")) as Record<string, unknown>;
  } catch (e) {
    throw new MlaError("BAD_TOKENIZER", `${file}: not valid JSON (${(e as Error).message})`, "the tokenizer file is corrupt; copy it again");
  }
}

export function loadTokenizer(dir: string): TextTokenizer {
  const tjFile = path.join(dir, "tokenizer.json");
  const tj = readJson(tjFile, true)!;
  const tc = readJson(path.join(dir, "tokenizer_config.json"), false) ?? {};
  const make = (json: Record<string, unknown>) => {
    try {
      return new HfTokenizer(json, tc);
    } catch (e) {
      throw new MlaError("BAD_TOKENIZER", `${tjFile}: cannot be loaded (${(e as Error).message})`, "is it a Hugging Face tokenizers file?");
    }
  };
  const tok = make(tj);
  // SentencePiece-style files (normalizer Prepend "▁" + Replace " " → "▁") are loaded by transformers
  // as a Metaspace with prepend_scheme "first": no "▁" is prepended when the text already starts with
  // a space. The reference numbers come from transformers, so a text with a leading space is encoded
  // by a twin tokenizer without the Prepend step.
  const noPrepend = withoutPrepend(tj);
  const tokNoPrepend = noPrepend ? make(noPrepend) : null;
  const vocab = (tj["model"] as { vocab?: Record<string, number> | unknown[] } | undefined)?.vocab;
  const added = (tj["added_tokens"] as { id: number }[] | undefined) ?? [];
  const vocabSize = Math.max(vocab ? (Array.isArray(vocab) ? vocab.length : Object.keys(vocab).length) : 0, ...added.map((a) => a.id + 1));
  return {
    vocabSize,
    encode: (text, opts) => (tokNoPrepend && text.startsWith(" ") ? tokNoPrepend : tok).encode(text, { add_special_tokens: opts?.addSpecialTokens ?? false }).ids,
    decode: (ids) => tok.decode([...ids], { skip_special_tokens: false }),
  };
}

/** The tokenizer.json without its leading Prepend("▁") normalizer, or null if it has none. */
function withoutPrepend(tj: Record<string, unknown>): Record<string, unknown> | null {
  const n = tj["normalizer"] as { type?: string; normalizers?: { type?: string; prepend?: string }[] } | null;
  if (n?.type !== "Sequence" || !n.normalizers) return null;
  const first = n.normalizers[0];
  if (first?.type !== "Prepend" || first.prepend !== "\u2581") return null;
  return { ...tj, normalizer: { ...n, normalizers: n.normalizers.slice(1) } };
}

/**
 * The first `need` token ids of `text`, without tokenizing all of it (a 4 MB calibration file takes
 * over a minute): prefixes cut at a line break grow until they hold `need` ids plus a margin, because
 * only the ids near the cut can differ from the whole text's. Short texts are tokenized whole.
 */
export function encodePrefix(tokenizer: TextTokenizer, text: string, need: number): number[] {
  const MARGIN = 256;
  for (let chars = Math.max(16_384, need * 8); chars < text.length; chars *= 2) {
    const nl = text.lastIndexOf("\n", chars);
    const ids = tokenizer.encode(text.slice(0, nl > chars / 2 ? nl : chars), { addSpecialTokens: false });
    if (ids.length >= need + MARGIN) return ids.slice(0, need);
  }
  return tokenizer.encode(text, { addSpecialTokens: false }).slice(0, need);
}
