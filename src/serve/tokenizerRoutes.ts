/**
 * vLLM's tokenizer endpoints: `POST /tokenize` (a prompt, or chat messages through the model's
 * template, to ids), `POST /detokenize` (ids to text) and `GET /tokenizer_info` (the special tokens
 * and the chat template). Clients that score or generate with ids read the served model's tokenizer
 * from them instead of loading it themselves: lm-evaluation-harness's `local-completions` uses them
 * when `/tokenizer_info` answers (its "remote" tokenizer), and its log-likelihood requests then need
 * no local copy of the model.
 */
import { MlaError } from "../errors.js";
import { encodeLong } from "../io/encodeLong.js";
import type { TextTokenizer } from "../io/tokenizer.js";
import { renderedNothing, type ChatTemplate } from "./chatTemplate.js";
import { bad, booleanField, checkedBody, parseMessages } from "./completionRequest.js";
import { decodeOffThread } from "../io/decodeOffThread.js";
import { tokenizerWorkers } from "../util/lane.js";
import { shownJson as shown } from "../util/shownJson.js";

/** What the endpoints read: the served name, its tokenizer, positions and chat template (null: none). */
export interface TokenizerServed {
  name: string;
  tokenizer: TextTokenizer;
  vocabSize: number;
  maxPositions: number;
  bosTokenId: number | null;
  eosTokenId: number | null;
  chat: ChatTemplate | null;
}

const TOKENIZE_EXAMPLE = '{"prompt": "Once upon a time"} or {"messages": [{"role": "user", "content": "Hello"}]}';

/** A field that must be true or false when sent; the hint says what true does. */
function flag(b: Record<string, unknown>, key: string, fallback: boolean, what: string): boolean {
  return booleanField(b, key, fallback, `send ${key}: true to ${what}, or leave it out (default ${fallback})`);
}

/** Texts longer than this (characters) are tokenized in pieces, the event loop getting turns between them. */
const LONG_TEXT = 16_384;
/**
 * A piece longer than this (a text with no line break to cut at) is tokenized in a worker thread: on
 * this one a 3.6 MB line held every stream for ~3 s with stories260K's tokenizer. The worker is the
 * tokenizer's held one (io/heldTokenizerThreads.ts): its start, ~0.2–0.4 s, is paid by the first such
 * request, not by each.
 */
const OFF_THREAD_PIECE = 65_536;

/**
 * `text`'s ids as tok.encode gives them. A long one (lm-eval's remote tokenizer sends whole
 * documents) is encoded in pieces that give the same ids (encodeLong), so the streams of other
 * requests go on meanwhile; one encode of a 1 MB text held every stream for ~18 s. A piece that stays
 * long (no line break to cut at) goes to a worker thread. The special tokens
 * encode would add around the text are those it adds around a short one.
 */
async function encodeYielding(tok: TextTokenizer, text: string, addSpecialTokens: boolean): Promise<number[]> {
  if (text.length <= LONG_TEXT) return tok.encode(text, { addSpecialTokens });
  // One worker (the tokenizer's held one), and one such text at a time (tokenizerWorkers).
  const ids = [...(await tokenizerWorkers.run(() => encodeLong(tok, text, { offThreadPieceChars: OFF_THREAD_PIECE, workers: 1 })))];
  if (!addSpecialTokens) return ids;
  const bare = tok.encode("x"), full = tok.encode("x", { addSpecialTokens: true });
  const at = full.findIndex((_, i) => bare.every((id, k) => full[i + k] === id));
  // A tokenizer whose special tokens are not around the text (none seen so far): encoded whole.
  if (at < 0) return tok.encode(text, { addSpecialTokens });
  return [...full.slice(0, at), ...ids, ...full.slice(at + bare.length)];
}

/**
 * The answer to POST /tokenize: `{count, max_model_len, tokens, token_strs}` for `{prompt,
 * add_special_tokens (default true)}` or `{messages, add_generation_prompt (default true),
 * add_special_tokens (default false: the template writes them)}`, as vLLM answers.
 */
export async function tokenize(body: unknown, s: TokenizerServed): Promise<Record<string, unknown>> {
  const known = new Set(["model", "prompt", "messages", "add_special_tokens", "add_generation_prompt", "return_token_strs"]);
  const b = checkedBody(body, s, known, {}, TOKENIZE_EXAMPLE);
  const chatForm = b["messages"] !== undefined && b["messages"] !== null;
  if (chatForm === (b["prompt"] !== undefined && b["prompt"] !== null)) throw bad(chatForm ? "the request has both prompt and messages" : "the request has neither prompt nor messages", `send one of them, e.g. ${TOKENIZE_EXAMPLE}`);
  let text: string;
  if (chatForm) {
    if (!s.chat) throw new MlaError("NOT_FOUND", "this model has no chat template to render messages with", "send the conversation as one prompt text instead");
    text = s.chat.render(parseMessages(b["messages"], TOKENIZE_EXAMPLE), flag(b, "add_generation_prompt", true, "end the text where the assistant's reply begins"));
    if (text === "") throw renderedNothing(s.chat, "the messages", "fix it in the model folder");
  } else {
    if (b["add_generation_prompt"] !== undefined && b["add_generation_prompt"] !== null) throw bad("add_generation_prompt is set without messages", "send it with messages, or leave it out");
    if (typeof b["prompt"] !== "string") throw bad(`prompt ${shown(b["prompt"])} is not text`, `send e.g. ${TOKENIZE_EXAMPLE}`);
    text = b["prompt"];
  }
  const tokens = await encodeYielding(s.tokenizer, text, flag(b, "add_special_tokens", !chatForm, "add the model's special tokens (BOS)"));
  // Vocabulary strings ("▁The"), as vLLM's convert_ids_to_tokens gives them: a piece decoded alone
  // would lose its leading space.
  const strs = flag(b, "return_token_strs", false, "get each token's string too") ? tokens.map((t) => s.tokenizer.idToToken?.(t) ?? s.tokenizer.decode([t], { skipSpecialTokens: false })) : null;
  return { count: tokens.length, max_model_len: s.maxPositions, tokens, token_strs: strs };
}

/** More ids than this are decoded in a worker thread (decodeOffThread): ~20 ms of this thread's time. */
const OFF_THREAD_IDS = 65_536;

/** The answer to POST /detokenize: `{prompt}` for `{tokens}`, special tokens written out (as vLLM's). */
export async function detokenize(body: unknown, s: TokenizerServed): Promise<Record<string, unknown>> {
  const b = checkedBody(body, s, new Set(["model", "tokens"]), {}, '{"tokens": [1, 403]}');
  const t = b["tokens"];
  if (!Array.isArray(t) || !t.every((x) => Number.isInteger(x))) throw bad("tokens is not a list of token ids", 'send e.g. {"tokens": [1, 403]}');
  const out = (t as number[]).find((x) => x < 0 || x >= s.vocabSize);
  if (out !== undefined) throw bad(`token id ${out} is outside the vocabulary of ${s.vocabSize}`, "send ids from the served model's tokenizer");
  return { prompt: await decodeOffThread(s.tokenizer, t as number[], { skipSpecialTokens: false, offThreadAbove: OFF_THREAD_IDS }) };
}

/** The answer to GET /tokenizer_info: the special tokens' texts, the chat template and the context length. */
export function tokenizerInfo(s: TokenizerServed): Record<string, unknown> {
  const text = (id: number | null) => (id === null ? null : s.tokenizer.decode([id], { skipSpecialTokens: false }));
  return { tokenizer_class: "PreTrainedTokenizerFast", bos_token: text(s.bosTokenId), eos_token: text(s.eosTokenId), pad_token: null, chat_template: s.chat?.text ?? null, model_max_length: s.maxPositions, vocab_size: s.vocabSize };
}
