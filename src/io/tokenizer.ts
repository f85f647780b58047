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
  let tok: HfTokenizer;
  try {
    tok = new HfTokenizer(tj, tc);
  } catch (e) {
    throw new MlaError("BAD_TOKENIZER", `${tjFile}: cannot be loaded (${(e as Error).message})`, "is it a Hugging Face tokenizers file?");
  }
  const vocab = (tj["model"] as { vocab?: Record<string, number> | unknown[] } | undefined)?.vocab;
  const added = (tj["added_tokens"] as { id: number }[] | undefined) ?? [];
  const vocabSize = Math.max(vocab ? (Array.isArray(vocab) ? vocab.length : Object.keys(vocab).length) : 0, ...added.map((a) => a.id + 1));
  return {
    vocabSize,
    encode: (text, opts) => tok.encode(text, { add_special_tokens: opts?.addSpecialTokens ?? false }).ids,
    decode: (ids) => tok.decode([...ids], { skip_special_tokens: false }),
  };
}
