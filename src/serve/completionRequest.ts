/**
 * The body of an OpenAI-style `POST /v1/completions` or `/v1/chat/completions`, checked. What the
 * server does not implement (suffix, best_of, tools) is refused by name rather than
 * ignored, so a client never reads an answer computed without a setting it asked for.
 */
import { refusal, type WithStatus } from "./httpJson.js";
import type { SamplingOptions } from "../model/sampling.js";
import { checkPenalties } from "../model/penalties.js";
import type { ChatMessage } from "./chatTemplate.js";
import { shownJson as shown } from "../util/shownJson.js";
import { countOf } from "../util/counts.js";

/** How a refusal names a sequence's token limit: the request's field, and whether the request sent it. */
export interface TokenLimitName {
  key: string;
  sent: boolean;
}

/** What a completion needs besides its prompt, read the same way from both endpoints. */
export interface GenerationFields {
  /** null: up to the model's positions (chat's default, as vLLM's). */
  maxTokens: number | null;
  /** The request's field for that limit (max_tokens, max_completion_tokens), and whether it was sent (not a default). */
  limit: TokenLimitName;
  sampling: SamplingOptions;
  seed: number | null;
  stop: string[];
  stream: boolean;
  includeUsage: boolean;
  /** Choices to generate for the prompt, each with its own draws (seed + index). */
  n: number;
  /** vLLM's `ignore_eos`: go on past the model's end-of-sequence tokens (load tests, fixed lengths). */
  ignoreEos: boolean;
  /** vLLM's `stop_token_ids`: more ids that end a choice as EOS does. */
  stopTokenIds: number[];
  /** vLLM's `min_tokens`: no EOS or stop token id before this many new tokens. */
  minTokens: number;
  /** vLLM's `include_stop_str_in_output`: the stop string that ends the text stays in it. */
  includeStop: boolean;
  /** vLLM's `skip_special_tokens` (default true): special tokens add no text. */
  skipSpecialTokens: boolean;
  /**
   * Log-probabilities of the chosen tokens and of this many most likely ones at each step (completions'
   * `logprobs`, chat's `top_logprobs` with `logprobs: true`); null: none.
   */
  logprobs: number | null;
}

/** The most alternatives per token a request may ask log-probabilities of (vLLM's default limit). */
export const MAX_LOGPROBS = 20;

export interface CompletionRequest extends GenerationFields {
  /**
   * The prompts, each as text or as token ids: one, or a batch sent in one request (lm-eval with a
   * batch size, OpenAI's list of prompts), each with its `n` choices.
   */
  prompts: (string | number[])[];
  /**
   * The prompt comes back before the completion, and with logprobs its tokens' log-probabilities too
   * (the first token's null: nothing comes before it). With echo, max_tokens may be 0: the prompt
   * scored alone, as lm-eval's log-likelihood requests and OpenAI's legacy scoring ask.
   */
  echo: boolean;
}

export interface ChatRequest extends GenerationFields {
  messages: ChatMessage[];
  /** vLLM's `add_generation_prompt` (default true): the rendered prompt ends where the assistant's reply begins. */
  addGenerationPrompt: boolean;
  /** vLLM's `continue_final_message`: the reply continues the last message (an assistant reply begun by the caller). */
  continueFinalMessage: boolean;
}

/** The most tokens a logit_bias may name (OpenAI's limit). */
export const MAX_LOGIT_BIAS = 300;

/** The most stop strings per request. */
export const MAX_STOPS = 16;

/** The most prompts per request, and the most prompts × choices (each is a sequence in the batch). */
export const MAX_PROMPTS = 64;

/** The most choices per request (each is a sequence in the batch). */
export const MAX_CHOICES = 16;

/** OpenAI's default when max_tokens is left out. */
export const DEFAULT_MAX_TOKENS = 16;

/** Fields that change the answer and are not implemented, with the value that means "off". */
const UNSUPPORTED: Record<string, (v: unknown) => boolean> = {
  best_of: (v) => v === 1,
  suffix: (v) => v === "",
};

/** Chat's own fields that change the answer and are not implemented ("off" values as above). */
const CHAT_UNSUPPORTED: Record<string, (v: unknown) => boolean> = {
  tools: (v) => Array.isArray(v) && v.length === 0,
  // With no tools, "auto" chooses none.
  tool_choice: (v) => v === "none" || v === "auto",
  response_format: (v) => typeof v === "object" && v !== null && (v as { type?: unknown }).type === "text",
};

/** Fields read, or harmless to ignore (user: an end-user id for abuse tracking). */
const COMMON = ["model", "n", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "min_tokens", "include_stop_str_in_output", "skip_special_tokens", "stream", "stream_options", "user", "ignore_eos", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias"];
const KNOWN = new Set(["prompt", "logprobs", "echo", ...COMMON, ...Object.keys(UNSUPPORTED)]);
const CHAT_KNOWN = new Set(["messages", "max_completion_tokens", "logprobs", "top_logprobs", "add_generation_prompt", "continue_final_message", ...COMMON, ...Object.keys(CHAT_UNSUPPORTED)]);

/**
 * A refusal of the request. Its message starts with the field at fault where there is one (`max_tokens -1 is
 * not …`, `messages[2].content is …`): that becomes the error body's `param`, as OpenAI names it, unless `param`
 * says otherwise (null: none).
 */
export function bad(message: string, hint: string, param: string | null = fieldOf(message)): WithStatus {
  return refusal("BAD_ARGUMENT", message, hint, { param });
}

/** Every field a request body of either endpoint may carry (their unsupported ones included). */
const FIELDS = new Set([...KNOWN, ...CHAT_KNOWN]);

/** The field a refusal's message starts with (with its index and sub-field: `prompt[1]`, `messages[0].content`), or null. */
function fieldOf(message: string): string | null {
  const m = /^([a-z_]+)((?:\[\d+\])?(?:\.[a-z_]+)?)(?=[ :]|$)/.exec(message);
  return m && FIELDS.has(m[1]!) ? m[1]! + m[2]! : null;
}

/** `key` of `b` as true or false (`fallback` when absent or null), refused with `hint` otherwise (`path`: the key's place in the request). */
export function booleanField(b: Record<string, unknown>, key: string, fallback: boolean, hint: string, path = key): boolean {
  const v = b[key] ?? fallback;
  if (typeof v !== "boolean") throw bad(`${key} ${shown(v)} is not true or false`, hint, path);
  return v;
}

/** `key` of `body` (`fallback` when absent or null); `shownDefault` is what the hint calls the default, where `fallback` is not it. */
function numberField(body: Record<string, unknown>, key: string, fallback: number, ok: (v: number) => boolean, expected: string, shownDefault = String(fallback)): number {
  const v = body[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== "number" || !ok(v)) throw bad(`${key} ${shown(v)} is not ${expected}`, `send ${key} as ${expected}, or leave it out (default ${shownDefault})`);
  return v;
}

/** The body as an object whose every field is known (`known`) and implemented (`unsupported` at its "off" value), for the served model. */
export function checkedBody(body: unknown, served: { name: string }, known: ReadonlySet<string>, unsupported: Record<string, (v: unknown) => boolean>, example: string): Record<string, unknown> {
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw bad("the request body is not a JSON object", `send e.g. ${example}`);
  const b = body as Record<string, unknown>;
  const unknown = Object.keys(b).filter((k) => !known.has(k));
  if (unknown.length) throw bad(`unknown field${unknown.length > 1 ? "s" : ""} ${unknown.map((k) => shown(k)).join(", ")}`, `the fields read are ${[...known].filter((k) => !(k in unsupported)).join(", ")}`, unknown[0]!);
  for (const [k, off] of Object.entries(unsupported))
    if (b[k] !== undefined && b[k] !== null && !off(b[k])) throw bad(`${k} ${shown(b[k])} is not supported by this server`, `leave ${k} out (no tools, best_of or suffix)`);
  // null is "not sent", as for every other field.
  if (b["model"] !== undefined && b["model"] !== null && b["model"] !== served.name) throw refusal("NOT_FOUND", `model ${shown(b["model"])} is not served here`, `this server serves ${JSON.stringify(served.name)} (GET /v1/models); send that name or leave model out`, { param: "model", apiCode: "model_not_found" });
  return b;
}

/** The request `body` (parsed JSON) of POST /v1/completions, checked against the served model's name and vocabulary. */
export function parseCompletionRequest(body: unknown, served: { name: string; vocabSize: number }): CompletionRequest {
  const b = checkedBody(body, served, KNOWN, UNSUPPORTED, '{"prompt": "Once upon a time", "max_tokens": 32}');
  const p = b["prompt"];
  const many = Array.isArray(p) && p.length > 0 && p.every((x) => typeof x === "string" || Array.isArray(x));
  if (p === undefined || p === null) throw bad("the request has no prompt", 'send "prompt": "…" (text) or a list of token ids', "prompt");
  if (Array.isArray(p) && p.length === 0) throw bad("the prompt is an empty list", "send at least one token id, or the prompt as text", "prompt");
  if (many && p.length > MAX_PROMPTS) throw bad(`prompt holds ${p.length} prompts`, `send at most ${MAX_PROMPTS} per request (requests in flight are decoded together anyway)`);
  const prompts = (many ? (p as unknown[]) : [p]).map((x, i) => onePrompt(x, many ? `prompt[${i}]` : "prompt", served.vocabSize));

  // An integer: the chosen tokens' log-probabilities and this many alternatives (0: the chosen alone).
  const lp = b["logprobs"];
  const logprobs = lp === undefined || lp === null || lp === false ? null : numberField(b, "logprobs", 0, (v) => Number.isInteger(v) && v >= 0 && v <= MAX_LOGPROBS, `a whole number from 0 to ${MAX_LOGPROBS}`);
  const echo = booleanField(b, "echo", false, "send echo: true to get the prompt (and with logprobs its tokens' log-probabilities) back before the completion");
  const fields = generationFields(b, "max_tokens", DEFAULT_MAX_TOKENS, served.vocabSize, echo);
  if (prompts.length * fields.n > MAX_PROMPTS) throw bad(`${prompts.length} prompts × n ${fields.n} make ${prompts.length * fields.n} sequences`, `send at most ${MAX_PROMPTS} prompts × choices per request`);
  return { prompts, ...fields, logprobs, echo };
}

/** One prompt, text or token ids, checked (`what` names it in a refusal). */
function onePrompt(p: unknown, what: string, vocabSize: number): string | number[] {
  if (typeof p === "string") return p;
  if (Array.isArray(p) && p.length > 0 && p.every((t) => Number.isInteger(t))) {
    const out = (p as number[]).find((t) => t < 0 || t >= vocabSize);
    if (out !== undefined) throw bad(`${what} token id ${out} is outside the vocabulary of ${vocabSize}`, "send ids from the served model's tokenizer, or the prompt as text");
    return p as number[];
  }
  // An empty text is a prompt of BOS alone (unconditional generation); an empty list of ids is nothing.
  if (Array.isArray(p) && p.length === 0) throw bad(`${what} is an empty list of token ids`, "send at least one id, or the prompt as text");
  throw bad(`${what} ${shown(p)} is neither text nor a list of token ids`, 'send "prompt": "…" (text) or a list of token ids');
}

/** The request `body` of POST /v1/chat/completions, checked against the served model's name and vocabulary. */
export function parseChatRequest(body: unknown, served: { name: string; vocabSize: number }): ChatRequest {
  const example = '{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32}';
  const b = checkedBody(body, served, CHAT_KNOWN, CHAT_UNSUPPORTED, example);
  const messages = parseMessages(b["messages"], example);
  const set = (k: string) => b[k] !== undefined && b[k] !== null;
  if (set("max_tokens") && set("max_completion_tokens")) throw bad("both max_tokens and max_completion_tokens are set", "send one of them");
  const lp = booleanField(b, "logprobs", false, "send logprobs: true (and top_logprobs: N for N alternatives per token)");
  const top = set("top_logprobs") ? numberField(b, "top_logprobs", 0, (v) => Number.isInteger(v) && v >= 0 && v <= MAX_LOGPROBS, `a whole number from 0 to ${MAX_LOGPROBS}`) : 0;
  if (top > 0 && !lp) throw bad(`top_logprobs ${top} is set without logprobs: true`, "send logprobs: true with it, or leave top_logprobs out");
  const continueFinal = booleanField(b, "continue_final_message", false, "send true to continue the last message (an assistant reply you began), or leave it out");
  // vLLM's default: a generation prompt unless the last message is continued.
  const addGenerationPrompt = booleanField(b, "add_generation_prompt", !continueFinal, "leave it out (true: the prompt ends where the assistant's reply begins)");
  if (continueFinal && addGenerationPrompt) throw bad("continue_final_message and add_generation_prompt are both true", "send add_generation_prompt: false (or leave it out) to continue the last message");
  return { messages, addGenerationPrompt, continueFinalMessage: continueFinal, ...generationFields(b, set("max_completion_tokens") ? "max_completion_tokens" : "max_tokens", null, served.vocabSize), logprobs: lp ? top : null };
}

/** A request's `messages` (chat, and /tokenize's chat form), checked; `example` shows a good request. */
export function parseMessages(m: unknown, example: string): ChatMessage[] {
  // "messages": "hi" was refused as "the request has no messages", sending the client to add what it had sent.
  if (m !== undefined && m !== null && !Array.isArray(m)) throw bad(`messages ${shown(m)} is not a list of messages`, `send e.g. ${example}`);
  if (!Array.isArray(m) || m.length === 0) throw bad("the request has no messages", `send e.g. ${example}`, "messages");
  return m.map((x: unknown, i): ChatMessage => {
    const o = x as Record<string, unknown> | null;
    const shape = 'each message is {"role": "user" | "assistant" | "system", "content": "…"}';
    if (typeof o !== "object" || o === null || Array.isArray(o)) throw bad(`messages[${i}] ${shown(o)} is not a message object`, shape);
    if (typeof o["role"] !== "string") throw bad(`messages[${i}] has no role`, shape);
    const c = o["content"];
    // OpenAI's content parts: text parts are joined by line breaks, as vLLM joins them; other kinds
    // (images, audio) this model cannot take. Only an assistant turn may have no content (one with tool
    // calls), as OpenAI takes it; another role without it is a malformed request, not an empty turn.
    if (typeof c === "string") return { role: o["role"], content: c };
    if (c === null || c === undefined) {
      if (o["role"] === "assistant") return { role: o["role"], content: "" };
      throw bad(`messages[${i}] (${o["role"]}) has no content`, 'give it "content": "…" (only an assistant turn may leave it out)');
    }
    if (Array.isArray(c) && c.every((p) => typeof p === "object" && p !== null && (p as { type?: unknown }).type === "text" && typeof (p as { text?: unknown }).text === "string"))
      return { role: o["role"], content: (c as { text: string }[]).map((p) => p.text).join("\n") };
    throw bad(`messages[${i}].content is neither text nor a list of text parts`, "send the content as a string (this model takes text only)");
  });
}

/** The fields both endpoints share, checked; `maxKey` names the token limit's field, which may be 0 where `zeroMax` (a prompt echoed or scored alone). */
function generationFields(b: Record<string, unknown>, maxKey: string, defaultMax: number | null, vocabSize: number, zeroMax = false): Omit<GenerationFields, "logprobs"> {
  if (b[maxKey] === 0 && !zeroMax) throw bad(`${maxKey} 0 asks for no tokens`, `send ${maxKey} ≥ 1${maxKey === "max_tokens" && "prompt" in b ? ", or echo: true with it to get the prompt (and with logprobs its scores) alone" : ""}`);
  const least = zeroMax ? 0 : 1;
  const maxTokens = b[maxKey] === undefined || b[maxKey] === null ? defaultMax : numberField(b, maxKey, 0, (v) => Number.isInteger(v) && v >= least, `a whole number ≥ ${least}`, defaultMax === null ? "as many as the model's positions allow" : String(defaultMax));
  const temperature = numberField(b, "temperature", 1, (v) => Number.isFinite(v) && v >= 0, "a number ≥ 0 (0: greedy)");
  const topP = numberField(b, "top_p", 1, (v) => v > 0 && v <= 1, "a probability in (0, 1]");
  // top_k as vLLM takes it: -1 (or 0) means all tokens.
  const topK = numberField(b, "top_k", -1, (v) => Number.isInteger(v) && v >= -1, "a whole number (-1: all tokens)");
  const seedV = b["seed"];
  if (seedV !== undefined && seedV !== null && !(Number.isInteger(seedV) && typeof seedV === "number")) throw bad(`seed ${shown(seedV)} is not a whole number`, "send an integer seed, or leave it out for a random one");
  // Past 2^53 a JSON number no longer names one integer (2^60 and 2^60 + 1 parse alike): refused, not
  // rounded into another request's seed.
  if (typeof seedV === "number" && !Number.isSafeInteger(seedV)) throw bad(`seed ${shown(seedV)} is beyond ±2^53, where numbers stop being exact integers`, "send a seed between -9007199254740991 and 9007199254740991");

  let stop: string[] = [];
  const s = b["stop"];
  if (typeof s === "string") stop = [s];
  else if (Array.isArray(s) && s.every((x) => typeof x === "string")) stop = s as string[];
  else if (s !== undefined && s !== null) throw bad(`stop ${shown(s)} is neither a string nor a list of strings`, 'send e.g. "stop": ["\\n\\n"]');
  // More than OpenAI's 4, as vLLM takes any number: lm-eval's generation tasks send their stop strings and the EOS text.
  if (stop.length > MAX_STOPS) throw bad(`stop holds ${stop.length} strings`, `send at most ${MAX_STOPS} stop strings`);
  if (stop.some((x) => x.length === 0)) throw bad("stop holds an empty string", "every stop string needs at least one character");

  const stream = booleanField(b, "stream", false, "send stream: true for server-sent events");
  const so = b["stream_options"];
  if (so !== undefined && so !== null && (typeof so !== "object" || Array.isArray(so))) throw bad("stream_options is not an object", 'send e.g. "stream_options": {"include_usage": true}');
  if (so && !stream) throw bad("stream_options is set without stream: true", "send stream: true, or leave stream_options out");
  const soFields = (so ?? {}) as Record<string, unknown>;
  const soUnknown = Object.keys(soFields).filter((k) => k !== "include_usage");
  if (soUnknown.length) throw bad(`unknown stream_options field${soUnknown.length > 1 ? "s" : ""} ${soUnknown.map((k) => shown(k)).join(", ")}`, 'the one read is include_usage, e.g. "stream_options": {"include_usage": true}', `stream_options.${soUnknown[0]}`);
  const includeUsage = booleanField(soFields, "include_usage", false, "send include_usage: true for a last chunk with the usage, or leave it out", "stream_options.include_usage");

  const ignoreEos = booleanField(b, "ignore_eos", false, "send ignore_eos: true to generate past end-of-sequence tokens, or leave it out");
  const n = numberField(b, "n", 1, (v) => Number.isInteger(v) && v >= 1 && v <= MAX_CHOICES, `a whole number from 1 to ${MAX_CHOICES}`);
  // vLLM's extensions: min_p (after temperature, before top-k and top-p), stop_token_ids, min_tokens.
  const minP = numberField(b, "min_p", 0, (v) => v >= 0 && v <= 1, "a fraction in [0, 1]");
  const st = b["stop_token_ids"];
  if (st !== undefined && st !== null && !(Array.isArray(st) && st.every((t) => Number.isInteger(t) && t >= 0 && t < vocabSize))) throw bad(`stop_token_ids ${shown(st)} is not a list of token ids of this model`, `send ids from 0 to ${vocabSize - 1}, e.g. [2]`);
  const stopTokenIds = (st as number[] | undefined | null) ?? [];
  if (stopTokenIds.length > MAX_STOPS) throw bad(`stop_token_ids holds ${stopTokenIds.length} ids`, `send at most ${MAX_STOPS}`);
  const minTokens = numberField(b, "min_tokens", 0, (v) => Number.isInteger(v) && v >= 0, "a whole number ≥ 0");
  // A limit the request did not send (completions' default of 16) is named as such, not as if sent.
  if (maxTokens !== null && minTokens > maxTokens)
    throw b[maxKey] === undefined || b[maxKey] === null
      ? bad(`min_tokens ${minTokens} is more than the ${countOf(maxTokens, "token")} a completion gets when ${maxKey} is not sent`, `send ${maxKey} ≥ ${minTokens} with it, or min_tokens ≤ ${maxTokens}`)
      : bad(`min_tokens ${minTokens} is more than ${maxKey} ${maxTokens}`, `send min_tokens ≤ ${maxKey}`);
  const includeStop = booleanField(b, "include_stop_str_in_output", false, "send include_stop_str_in_output: true to keep the stop string that ends the text, or leave it out");
  const skipSpecialTokens = booleanField(b, "skip_special_tokens", true, "send skip_special_tokens: false to write special tokens into the text, or leave it out");
  const limit = { key: maxKey, sent: b[maxKey] !== undefined && b[maxKey] !== null };
  return { includeStop, skipSpecialTokens, n, maxTokens, limit, sampling: { temperature, topP, topK: topK < 0 ? 0 : topK, ...(minP > 0 ? { minP } : {}), ...penaltyFields(b, vocabSize) }, seed: (seedV as number | undefined | null) ?? null, stop, stream, includeUsage, ignoreEos, stopTokenIds, minTokens };
}

/**
 * The most new tokens of one choice whose request sent no limit (chat): up to the server's
 * `defaultMax` (--default-max-tokens) or the positions the prompt leaves. Refuses a prompt that
 * leaves none, and a min_tokens past the limit, which the sequence could never reach (it would end
 * at the limit, short of what was asked). Neither names a max_tokens, which the request did not send.
 */
export function defaultReplyLimit(minTokens: number, promptTokens: number, defaultMax: number, maxPositions: number): number {
  const room = maxPositions - promptTokens;
  if (room <= 0) throw bad(`the prompt's ${countOf(promptTokens, "token")} fill the model's ${maxPositions} positions: there is no room for a reply`, "shorten the conversation");
  const limit = Math.min(defaultMax, room);
  if (minTokens <= limit) return limit;
  if (limit === defaultMax) throw bad(`min_tokens ${minTokens} is more than the ${countOf(defaultMax, "token")} a reply gets when max_tokens is not sent (the server's --default-max-tokens)`, `send max_tokens ≥ ${minTokens} with it, or min_tokens ≤ ${defaultMax}`);
  throw bad(`min_tokens ${minTokens} is more than the ${room} tokens the model's ${maxPositions} positions leave after the prompt's ${promptTokens}`, `send min_tokens ≤ ${room}, or shorten the conversation`);
}

/**
 * The sampler's 32-bit seed of a request's seed (a safe integer): seeds in [0, 2^32) are themselves,
 * others fold their high bits in, so 0 and 2^32 (or -1) draw differently.
 */
export function seed32(seed: number): number {
  const lo = seed >>> 0, hi = Math.floor(seed / 2 ** 32) | 0;
  return (lo ^ Math.imul(hi, 0x9e3779b1)) >>> 0;
}

/** The penalty fields (vLLM's ranges) and logit_bias (`{"token id": bias}`, as OpenAI sends it), checked. */
function penaltyFields(b: Record<string, unknown>, vocabSize: number): Pick<SamplingOptions, "presencePenalty" | "frequencyPenalty" | "repetitionPenalty" | "logitBias"> {
  const out: Pick<SamplingOptions, "presencePenalty" | "frequencyPenalty" | "repetitionPenalty" | "logitBias"> = {};
  const num = (key: string) => {
    const v = b[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number") throw bad(`${key} ${shown(v)} is not a number`, `send ${key} as a number, or leave it out`);
    return v;
  };
  const presence = num("presence_penalty"), frequency = num("frequency_penalty"), repetition = num("repetition_penalty");
  if (presence !== undefined) out.presencePenalty = presence;
  if (frequency !== undefined) out.frequencyPenalty = frequency;
  if (repetition !== undefined) out.repetitionPenalty = repetition;
  const lb = b["logit_bias"];
  if (lb !== undefined && lb !== null) {
    if (typeof lb !== "object" || Array.isArray(lb)) throw bad("logit_bias is not an object", 'send e.g. "logit_bias": {"50256": -100} (token id → bias from -100 to 100)');
    const entries = Object.entries(lb as Record<string, unknown>);
    if (entries.length > MAX_LOGIT_BIAS) throw bad(`logit_bias holds ${entries.length} tokens`, `send at most ${MAX_LOGIT_BIAS}`);
    const bias = new Map<number, number>(), keyOf = new Map<number, string>();
    for (const [k, v] of entries) {
      if (!/^\d+$/.test(k)) throw bad(`logit_bias key ${shown(k)} is not a token id`, 'key it by token ids, e.g. {"50256": -100}');
      if (typeof v !== "number") throw bad(`logit_bias gives token ${k} ${shown(v)}, not a number`, "give each token a bias from -100 to 100");
      // "5" and "05" name one token: one of the two biases would be dropped unseen.
      const id = Number(k), earlier = keyOf.get(id);
      if (earlier !== undefined) throw bad(`logit_bias names token ${id} twice (${shown(earlier)} and ${shown(k)})`, "give each token one bias, keyed by its id without leading zeros");
      keyOf.set(id, k);
      bias.set(id, v);
    }
    if (bias.size) out.logitBias = bias;
  }
  return checkPenalties(out, vocabSize, { presencePenalty: "presence_penalty", frequencyPenalty: "frequency_penalty", repetitionPenalty: "repetition_penalty", logitBias: "logit_bias" });
}
