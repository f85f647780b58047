/** Tokenizer from a model folder's `tokenizer.json` (+ `tokenizer_config.json`), via @huggingface/tokenizers. */
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { MlaError } from "../errors.js";
import { checkOptionTypes, describe, type OptionKinds } from "../util/optionTypes.js";
import { useFastBpe } from "./fastBpe.js";
import { bytesPerToken } from "./bytesPerToken.js";

export interface TextTokenizer {
  /** Token ids of `text`; special tokens (BOS) only when asked. */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  /**
   * Text of `ids`; special tokens (BOS, EOS, <|eot_id|>) written out unless skipSpecialTokens. Spaces
   * are cleaned up where `cleansUpSpaces`, unless `cleanUpSpaces: false` asks for the decoder's text
   * as it is (a stream cleans its text itself: src/io/cleanUpSpaces.ts).
   */
  decode(ids: readonly number[], opts?: { skipSpecialTokens?: boolean; cleanUpSpaces?: boolean }): string;
  readonly vocabSize: number;
  /**
   * Whether decode applies transformers' clean_up_tokenization (" ." → ".", " n't" → "n't"), as
   * tokenizer_config.json's clean_up_tokenization_spaces: true asks. Absent: it does not.
   */
  readonly cleansUpSpaces?: boolean;
  /**
   * Token ids of `text` as the continuation of earlier text: no "▁" is prepended at its start (the
   * whole text's encoding only prepends at offset 0). Absent: texts cannot be encoded in pieces.
   */
  encodeContinuation?(text: string): number[];
  /** The vocabulary's string for `id` as the tokenizer file spells it ("▁The", "<0x0A>", "<s>"): transformers' convert_ids_to_tokens. */
  idToToken?(id: number): string | undefined;
  /**
   * The most UTF-8 bytes of text one token stands for (bytesPerToken.ts), null where nothing bounds it:
   * a text of more than n times that many bytes encodes to more than n tokens. Absent: not known.
   */
  bytesPerToken?(): number | null;
  /** The folder the tokenizer was loaded from (worker threads load their own copy from it; the token cache hashes its files). */
  readonly dir?: string;
  /** sha256 of the files it was built from (loadTokenizer): a worker loading `dir` again checks it has the same. */
  readonly filesHash?: string;
}

/** What a script may pass encode and decode: transformers' add_special_tokens went unheard (no BOS), a number failed as a TypeError. */
const ENCODE_KINDS: OptionKinds<NonNullable<Parameters<TextTokenizer["encode"]>[1]>> = { addSpecialTokens: "boolean" };
const DECODE_KINDS: OptionKinds<NonNullable<Parameters<TextTokenizer["decode"]>[1]>> = { skipSpecialTokens: "boolean", cleanUpSpaces: "boolean" };

/** The decode and encode functions loadTokenizer built: a tokenizer whose decode or encode is not one of them was changed by its caller. */
const builtDecoders = new WeakSet<TextTokenizer["decode"]>();
const builtEncoders = new WeakSet<TextTokenizer["encode"]>();

/** Whether `tok` decodes as the files in its folder do (its decode is the one loadTokenizer built), so a worker thread loading them decodes alike. */
export function decodesAsLoaded(tok: TextTokenizer): boolean {
  return !!tok.dir && !!tok.filesHash && builtDecoders.has(tok.decode);
}

/** Whether `tok` encodes as the files in its folder do (decodesAsLoaded's twin). */
export function encodesAsLoaded(tok: TextTokenizer): boolean {
  return !!tok.dir && !!tok.filesHash && builtEncoders.has(tok.encode);
}

function readBytes(file: string, required: boolean): Buffer | null {
  // existsSync calls a link that leads nowhere (or back to itself) absent: such a file is read below, and refused by its error.
  if (!fs.lstatSync(file, { throwIfNoEntry: false })) {
    if (!required) return null;
    throw new MlaError("BAD_TOKENIZER", `${file} does not exist`, "the model folder needs a tokenizer.json (SentencePiece-only tokenizer.model files are not read)");
  }
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new MlaError("BAD_TOKENIZER", `${file}: cannot be read (${(e as Error).message})`, "check that it is a file this user can read");
  }
}

function parseJson(file: string, bytes: Buffer): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(bytes.toString("utf8"));
  } catch (e) {
    throw new MlaError("BAD_TOKENIZER", `${file}: not valid JSON (${(e as Error).message})`, "the tokenizer file is corrupt; copy it again");
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) throw new MlaError("BAD_TOKENIZER", `${file}: holds ${v === null ? "null" : Array.isArray(v) ? "a list" : `a ${typeof v}`}, not a JSON object`, "the tokenizer file is corrupt; copy it again");
  return v as Record<string, unknown>;
}

/** The model types the tokenizers library reads; it guesses BPE for any other, which would tokenize wrongly without a word. */
const MODEL_TYPES = ["BPE", "WordPiece", "Unigram"];

/**
 * The tokenizers built lately, by resolved folder, with a hash of the files each was built from: a
 * command that loads one folder's tokenizer several times (convert's input checks, calibration, the
 * model's loads for calibration and evaluation) builds it once (~0.4 s for a 32k vocabulary, seconds
 * for 128k). Each call reads the files again and compares their hash, so a file changed between calls
 * (even within the file system's timestamp granularity, at the same size) is loaded afresh.
 */
const built = new Map<string, { hash: string; tokenizer: TextTokenizer }>();
/** Folders kept, the least recently loaded dropped first: a command's source and output, with room to spare. */
const KEPT_FOLDERS = 4;
let builds = 0;

/** Tokenizers built (not served from the cache) by this process's loadTokenizer so far: for tests and diagnostics. */
export function tokenizersBuilt(): number {
  return builds;
}

/**
 * The tokenizer of the model folder `dir`. Calls for the same folder whose tokenizer files are
 * unchanged share one build; each gets an object of its own (replacing one's methods affects no other).
 */
export function loadTokenizer(dir: string): TextTokenizer {
  const abs = path.resolve(dir);
  const tjFile = path.join(dir, "tokenizer.json");
  const tcFile = path.join(dir, "tokenizer_config.json");
  const tjBytes = readBytes(tjFile, true)!;
  const tcBytes = readBytes(tcFile, false);
  const h = crypto.createHash("sha256").update(`${tjBytes.length}:`).update(tjBytes);
  const hash = (tcBytes ? h.update(`${tcBytes.length}:`).update(tcBytes) : h.update("no config")).digest("hex");
  let entry = built.get(abs);
  if (entry?.hash !== hash) {
    entry = { hash, tokenizer: buildTokenizer(abs, tjFile, parseJson(tjFile, tjBytes), tcBytes ? parseJson(tcFile, tcBytes) : {}) };
    builds++;
  }
  built.delete(abs); // re-inserted last: the Map's order is the order of use
  built.set(abs, entry);
  if (built.size > KEPT_FOLDERS) built.delete(built.keys().next().value!);
  return { ...entry.tokenizer, filesHash: entry.hash };
}

function buildTokenizer(dir: string, tjFile: string, tj: Record<string, unknown>, tc: Record<string, unknown>): TextTokenizer {
  const type = (tj["model"] as { type?: unknown } | null | undefined)?.type;
  if (type !== undefined && !MODEL_TYPES.includes(type as string)) throw new MlaError("BAD_TOKENIZER", `${tjFile}: model type ${JSON.stringify(type)} is not one this tool reads (${MODEL_TYPES.join(", ")})`, "is it a Hugging Face tokenizers file of a Llama-style model?");
  // transformers leaves spaces as decoded unless the config asks (its default is False, and null reads
  // as False; the library's default, and its reading of null, is true).
  const cleans = tc["clean_up_tokenization_spaces"] === true;
  const make = (json: Record<string, unknown>) => {
    try {
      const tok = withUnicodeDigits(new HfTokenizer(json, { ...tc, clean_up_tokenization_spaces: cleans }));
      useFastBpe((tok as unknown as { model: unknown }).model);
      return tok;
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
  // Continuations (the pieces of a long text after the first) need no prefix at all: the twin above
  // for the Prepend normalizer, or one whose Metaspace pre-tokenizer never prepends. Built on first
  // use: loading a 32k-vocabulary tokenizer takes ~0.4 s, and most commands never continue a text.
  let tokCont: HfTokenizer | undefined;
  const cont = (): HfTokenizer => {
    if (!tokCont) {
      const noMeta = withoutMetaspacePrepend(noPrepend ?? tj);
      tokCont = noMeta ? make(noMeta) : (tokNoPrepend ?? tok);
    }
    return tokCont;
  };
  const vocab = (tj["model"] as { vocab?: Record<string, number> | unknown[] } | undefined)?.vocab;
  const added = (tj["added_tokens"] as { id: number; content?: string }[] | undefined) ?? [];
  const vocabSize = Math.max(vocab ? (Array.isArray(vocab) ? vocab.length : Object.keys(vocab).length) : 0, ...added.map((a) => a.id + 1));
  const encode = (text: string, addSpecialTokens: boolean): number[] => withConfigSpecials(tok, tc, (tokNoPrepend && text.startsWith(" ") ? tokNoPrepend : tok).encode(text, { add_special_tokens: addSpecialTokens }).ids, addSpecialTokens);
  // The text is split at added tokens before normalizing, so the stretch after one gets its own "▁":
  // a continuation holding one is the continuation up to it, then an encode from it on.
  const addedIds = new Set(added.map((a) => a.id));
  const literals = added.map((a) => a.content).filter((c): c is string => !!c);
  const firstLiteral = literals.length ? new RegExp(literals.sort((a, b) => b.length - a.length).map((c) => c.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|")) : null;
  // The HF library throws on no ids (a /detokenize of [], a window of a stream with nothing in it),
  // and a SentencePiece model on an id it does not hold (a vocabulary padded past the tokenizer's):
  // such ids are dropped, as HF's decode drops them.
  const decode: TextTokenizer["decode"] = (ids, opts) => {
    // A string's characters, or one id, read as no ids at all: "" came back.
    if (typeof ids !== "object" || ids === null || typeof (ids as Iterable<number>)[Symbol.iterator] !== "function")
      throw new MlaError("BAD_ARGUMENT", `decode(): the ids are ${describe(ids)}, not an array of token ids`, "pass an array of ids, e.g. tokenizer.decode(generate(model, prompt, opts).ids), or [id] for one");
    if (opts !== undefined) checkOptionTypes("decode()", opts, DECODE_KINDS);
    const known = [...ids].filter((id) => Number.isInteger(id) && id >= 0 && id < vocabSize && (addedIds.has(id) || tok.id_to_token(id) != null));
    return known.length === 0 ? "" : tok.decode(known, { skip_special_tokens: opts?.skipSpecialTokens ?? false, clean_up_tokenization_spaces: cleans && opts?.cleanUpSpaces !== false });
  };
  builtDecoders.add(decode);
  const encodeText: TextTokenizer["encode"] = (text, opts) => {
    if (typeof text !== "string") throw new MlaError("BAD_ARGUMENT", `encode(): the text is ${describe(text)}, not a string`, 'pass the text itself, e.g. tokenizer.encode("Once upon a time", { addSpecialTokens: true })');
    if (opts !== undefined) checkOptionTypes("encode()", opts, ENCODE_KINDS);
    return encode(text, opts?.addSpecialTokens ?? false);
  };
  builtEncoders.add(encodeText);
  // Read on first use (a pass over the vocabulary and merges): only serve asks.
  let perToken: number | null | undefined;
  return {
    vocabSize,
    encode: encodeText,
    decode,
    cleansUpSpaces: cleans,
    encodeContinuation: (text) => {
      const at = firstLiteral ? text.search(firstLiteral) : -1;
      if (at < 0) return cont().encode(text, { add_special_tokens: false }).ids;
      return [...(at > 0 ? cont().encode(text.slice(0, at), { add_special_tokens: false }).ids : []), ...encode(text.slice(at), false)];
    },
    idToToken: (id) => tok.id_to_token(id),
    bytesPerToken: () => (perToken === undefined ? (perToken = bytesPerToken(tj)) : perToken),
    dir,
  };
}

/**
 * The Rust tokenizers' Digits pre-tokenizer splits at `char::is_numeric` (Unicode N: "٣", "²", "Ⅻ"),
 * the JS library's at ASCII \d only, so a SmolLM-style file (individual_digits) encoded "٣٤" as one
 * piece where transformers makes two. Its Digits steps get the Unicode pattern.
 */
function withUnicodeDigits(tok: HfTokenizer): HfTokenizer {
  // The library exports neither class in its types: a step is known by its config, a Sequence by its list.
  type Step = { config?: { type?: string; individual_digits?: boolean }; pattern?: RegExp; tokenizers?: Step[] };
  const visit = (p: Step | null | undefined): void => {
    if (p?.config?.type === "Digits" && p.pattern instanceof RegExp) p.pattern = new RegExp(`\\P{N}+|\\p{N}${p.config.individual_digits ? "" : "+"}`, "gu");
    else if (Array.isArray(p?.tokenizers)) p.tokenizers.forEach(visit);
  };
  visit((tok as unknown as { pre_tokenizer: Step | null }).pre_tokenizer);
  return tok;
}

/**
 * tokenizer_config.json's add_bos_token / add_eos_token, which transformers' Llama tokenizers obey over
 * tokenizer.json's post-processor (the HF library reads only the latter): with special tokens, the
 * BOS it added is dropped where add_bos_token is false, an EOS appended where add_eos_token is true.
 */
function withConfigSpecials(tok: HfTokenizer, tc: Record<string, unknown>, ids: number[], addSpecialTokens: boolean): number[] {
  if (!addSpecialTokens) return ids;
  const idOf = (key: string): number | undefined => {
    const v = tc[key];
    const text = typeof v === "string" ? v : (v as { content?: unknown } | null)?.content;
    return typeof text === "string" ? tok.token_to_id(text) : undefined;
  };
  let out = ids;
  const bos = idOf("bos_token");
  if (tc["add_bos_token"] === false && bos !== undefined && out[0] === bos) out = out.slice(1);
  const eos = idOf("eos_token");
  if (tc["add_eos_token"] === true && eos !== undefined && out[out.length - 1] !== eos) out = [...out, eos];
  return out;
}

/** The tokenizer.json with every Metaspace pre-tokenizer set to never prepend "▁", or null if none prepends. */
function withoutMetaspacePrepend(tj: Record<string, unknown>): Record<string, unknown> | null {
  type Pre = { type?: string; prepend_scheme?: string; add_prefix_space?: boolean; pretokenizers?: Pre[] };
  let changed = false;
  const fix = (p: Pre | null | undefined): Pre | null | undefined => {
    if (p?.type === "Metaspace" && p.prepend_scheme !== "never") {
      changed = true;
      return { ...p, prepend_scheme: "never", add_prefix_space: false };
    }
    return p?.type === "Sequence" && p.pretokenizers ? { ...p, pretokenizers: p.pretokenizers.map((q) => fix(q)!) } : p;
  };
  const pre = fix(tj["pre_tokenizer"] as Pre | null | undefined);
  return changed ? { ...tj, pre_tokenizer: pre } : null;
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
 * Refuses ids that the model's own tokenizer (in `dir`) gave for `source` past its vocabulary of
 * `vocabSize` (vocab_size in config.json): the folder's tokenizer and weights do not match, and the
 * embedding's own refusal would name neither file.
 */
export function checkIdsInVocab(ids: ArrayLike<number>, vocabSize: number, source: string, dir: string): void {
  for (let i = 0; i < ids.length; i++)
    if (ids[i]! >= vocabSize) throw new MlaError("BAD_CONFIG", `the model's tokenizer gives id ${ids[i]} for ${source}, past its vocabulary of ${vocabSize} (vocab_size in ${path.join(dir, "config.json")})`, "the tokenizer and the model do not match: put the model's own tokenizer.json beside its weights");
}

/** Texts shorter than this many characters encodePrefix tokenizes whole (for `need` ids). */
export function encodedWholeBelow(need: number): number {
  return Math.max(16_384, need * 8);
}

/**
 * The first `need` token ids of `text`, without tokenizing all of it (a 4 MB calibration file takes
 * over a minute): prefixes cut at a line break grow until they hold `need` ids plus a margin, because
 * only the ids near the cut can differ from the whole text's. Short texts are tokenized whole.
 */
export function encodePrefix(tokenizer: TextTokenizer, text: string, need: number): number[] {
  const MARGIN = 256;
  for (let chars = encodedWholeBelow(need); chars < text.length; chars *= 2) {
    const nl = text.lastIndexOf("\n", chars);
    const ids = tokenizer.encode(text.slice(0, nl > chars / 2 ? nl : chars), { addSpecialTokens: false });
    if (ids.length >= need + MARGIN) return ids.slice(0, need);
  }
  return tokenizer.encode(text, { addSpecialTokens: false }).slice(0, need);
}
