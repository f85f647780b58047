/**
 * An HTTP server speaking the OpenAI completions and chat protocols (`POST /v1/completions`,
 * `POST /v1/chat/completions`, streamed or not),
 * over one continuous batch (batcher.ts): what `mha2mla serve` runs. Clients written for vLLM or the
 * OpenAI API talk to it unchanged; the point of serving an MLA model from here is its small cache,
 * which admits more sequences into one batch under the same memory.
 */
import http from "node:http";
import { constants as bufferConstants } from "node:buffer";
import path from "node:path";
import crypto from "node:crypto";
import { MlaError, isMlaError } from "../errors.js";
import { loadModel, type LoadedModel } from "../model/llama.js";
import { defaultKvCache } from "../model/generate.js";
import { KV_CACHE_DTYPES, type KvCacheDtype } from "../model/kvQuant.js";
import { selectBackend, DEVICE_NAMES, type DeviceName } from "../backends/select.js";
import { silentLogger, type Logger } from "../util/log.js";
import { checkOptionTypes, type OptionKinds } from "../util/optionTypes.js";
import { throwIfAborted } from "../util/abort.js";
import { Batcher, checkBatcherOptions, type BatcherStats, type SequenceEnd, type SequenceHandle } from "./batcher.js";
import { defaultReplyLimit, parseChatRequest, parseCompletionRequest, type GenerationFields } from "./completionRequest.js";
import { continueFinalMessage, loadChatTemplate, type ChatTemplate } from "./chatTemplate.js";
import { CHAT_COMPLETION, TEXT_COMPLETION, type ResponseShape, type TokenEntry } from "./responseShapes.js";
import type { TokenLogprobs } from "../model/sampling.js";
import { incompleteTail, TextStream } from "./textStream.js";
import { offsetsOf, TokenOffsets } from "./tokenOffsets.js";
import { prometheusText } from "./metrics.js";
import { detokenize, tokenize, tokenizerInfo, type TokenizerServed } from "./tokenizerRoutes.js";
import { encodedWholeBelow, encodePrefix } from "../io/tokenizer.js";

export interface ServeOptions {
  /** Address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface). */
  host?: string;
  /** Port (default 8000; 0: any free port, see Server.port). */
  port?: number;
  /** The model name clients send and /v1/models lists (default: the model as given). */
  name?: string;
  /** The most sequences decoded together (default 32). */
  maxBatch?: number;
  /** How decode caches store keys/values (default "auto": bf16 for a bf16 checkpoint on the GPU, else f32). */
  kvCache?: KvCacheDtype | "auto";
  /** The most MB all admitted sequences' caches may reserve (default: no limit but maxBatch). */
  kvBudgetMb?: number;
  /** MB of prompts' caches kept so that later prompts beginning the same way prefill only the rest (default 1024; 0: none). */
  prefixCacheMb?: number;
  /** The most prompt tokens prefilled between two decode steps (default 512; 0: each prompt whole, as it comes). */
  prefillChunk?: number;
  /**
   * The most new tokens of a chat reply whose request sets no limit (default 1024). Each request
   * reserves cache for its prompt and limit when admitted, so "up to the model's positions" would
   * reserve a whole context per chat (16 GiB at Llama 3.1 8B's 131k).
   */
  defaultMaxTokens?: number;
  /** Where a model given by name runs (default "auto"; a LoadedModel keeps its backend). */
  device?: DeviceName;
  /**
   * Requests to /v1/… must carry `Authorization: Bearer KEY` (as vLLM's --api-key); /health stays open.
   * Default: none, fine on 127.0.0.1; set one before listening on other interfaces.
   */
  apiKey?: string;
  /** The largest request body in bytes (default 4 MiB). */
  maxBodyBytes?: number;
  /** One line per finished request, and the start (default: silent). */
  logger?: Logger;
  /** Aborting it closes the server at once: requests in flight end, their connections close. */
  signal?: AbortSignal;
}

export interface ServerStats extends BatcherStats {
  model: string;
  requests: number;
  /** Generation requests being received or answered (what close() waits for). */
  inFlight: number;
  uptimeSeconds: number;
}

export interface Server {
  /** http://host:port */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** The name clients send as `model`. */
  readonly model: string;
  /** The loaded model (its tokenizer, config and backend). */
  readonly loaded: LoadedModel;
  stats(): ServerStats;
  /** Stops accepting requests, lets those in flight finish, then resolves. */
  close(): Promise<void>;
}

const SERVE_KINDS: OptionKinds<ServeOptions> = { host: "string", port: "number", name: "string", maxBatch: "number", kvCache: "string", kvBudgetMb: "number", prefixCacheMb: "number", prefillChunk: "number", defaultMaxTokens: "number", apiKey: "string", device: "string", maxBodyBytes: "number", logger: "object", signal: "object" };

const MAX_STRING_LENGTH = bufferConstants.MAX_STRING_LENGTH;

/** A refusal with its own HTTP status (413: a body too large). */
type WithStatus = MlaError & { httpStatus?: number };

/** HTTP status of a refusal: the caller's mistake, a missing thing, no room, or ours. */
function statusOf(e: WithStatus): number {
  if (e.httpStatus) return e.httpStatus;
  if (e.code === "BAD_ARGUMENT" || e.code === "BAD_TEXT") return 400;
  if (e.code === "NOT_FOUND") return 404;
  if (e.code === "OUT_OF_MEMORY" || e.code === "INTERRUPTED") return 503;
  return 500;
}

/** OpenAI's error body; the message keeps the hint on the same line. */
function errorBody(e: MlaError): string {
  const type = statusOf(e) < 500 ? "invalid_request_error" : "server_error";
  return JSON.stringify({ error: { message: e.message.replace(/\n\s*hint: /, "; hint: "), type, param: null, code: e.code } });
}

function sendJson(res: http.ServerResponse, status: number, body: string, headers: http.OutgoingHttpHeaders = {}): void {
  if (res.headersSent || res.destroyed) return void res.end();
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body), ...headers });
  res.end(body);
}

function tooLarge(limit: number): WithStatus {
  return Object.assign(new MlaError("BAD_ARGUMENT", `the request body passes ${limit} bytes`, "send a shorter prompt"), { httpStatus: 413 });
}

/** A request refused while its body was read or checked. After a 413 the rest of the body is not worth reading: the connection closes once the answer is sent. */
function sendRefusal(res: http.ServerResponse, e: unknown): void {
  const err = asMlaError(e) as WithStatus;
  sendJson(res, statusOf(err), errorBody(err), err.httpStatus === 413 ? { Connection: "close" } : {});
}

function asMlaError(e: unknown): MlaError {
  return isMlaError(e) ? e : new MlaError("UNSUPPORTED", `internal error: ${(e as Error)?.message ?? String(e)}`, "this is a bug; report it with the request");
}

/**
 * A body declared at most this many times the limit is read and dropped before its 413 goes out:
 * closing a connection with request bytes unread resets it, and the reset can reach the client before
 * the answer. One declared larger still is cut off at once.
 */
const DRAIN_FACTOR = 16;

/**
 * The request's body, at most `limit` bytes, parsed as JSON. One larger is refused once it has ended
 * (its rest read and dropped), so the client gets the 413 instead of a reset connection; one declared
 * past DRAIN_FACTOR × the limit is refused before it is read.
 */
function readJson(req: http.IncomingMessage, limit: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    if (Number(req.headers["content-length"] ?? 0) > DRAIN_FACTOR * limit) {
      req.resume();
      return reject(tooLarge(limit));
    }
    const parts: Buffer[] = [];
    let size = 0;
    req.on("data", (b: Buffer) => {
      size += b.length;
      if (size <= limit) parts.push(b);
    });
    req.on("end", () => {
      if (size > limit) return reject(tooLarge(limit));
      try {
        resolve(JSON.parse(Buffer.concat(parts).toString("utf8")));
      } catch (e) {
        reject(new MlaError("BAD_ARGUMENT", `the request body is not JSON (${(e as Error).message})`, 'send e.g. {"prompt": "Once upon a time", "max_tokens": 32} with Content-Type: application/json'));
      }
    });
    req.on("error", reject);
  });
}

/** Starts serving `model` (a folder, alias or bundled name, loaded on opts.device; or a model already loaded). */
export async function serve(model: string | LoadedModel, opts: ServeOptions = {}): Promise<Server> {
  checkOptionTypes("serve()", opts, SERVE_KINDS);
  throwIfAborted(opts.signal);
  const port = opts.port ?? 8000;
  if (!(Number.isInteger(port) && port >= 0 && port <= 65535)) throw new MlaError("BAD_ARGUMENT", `--port ${port} is not a TCP port`, "pass a whole number from 1 to 65535, or 0 for any free port");
  if (opts.kvCache !== undefined && opts.kvCache !== "auto" && !KV_CACHE_DTYPES.includes(opts.kvCache)) throw new MlaError("BAD_ARGUMENT", `--kv-cache ${opts.kvCache} is not a cache type`, `use auto, ${KV_CACHE_DTYPES.join(", ")}`);
  if (opts.device !== undefined && !DEVICE_NAMES.includes(opts.device)) throw new MlaError("BAD_ARGUMENT", `--device ${opts.device} is not known`, `use ${DEVICE_NAMES.join(", ")}`);
  if (opts.kvBudgetMb !== undefined && !(Number.isFinite(opts.kvBudgetMb) && opts.kvBudgetMb > 0)) throw new MlaError("BAD_ARGUMENT", `--kv-budget-mb ${opts.kvBudgetMb} is not a size in MB`, "pass a positive number, or leave it out for no limit but --max-batch");
  if (opts.prefixCacheMb !== undefined && !(Number.isFinite(opts.prefixCacheMb) && opts.prefixCacheMb >= 0)) throw new MlaError("BAD_ARGUMENT", `--prefix-cache-mb ${opts.prefixCacheMb} is not a size in MB`, "pass 0 to keep no prompts, or a positive number");
  if (opts.apiKey !== undefined && !/^[\x21-\x7e]+$/.test(opts.apiKey))
    throw new MlaError("BAD_ARGUMENT", opts.apiKey.length ? "--api-key holds characters other than visible ASCII" : "--api-key is empty", "pass a key of visible ASCII characters (HTTP headers carry no others reliably), or leave --api-key out");
  const defaultMax = opts.defaultMaxTokens ?? 1024;
  if (!(Number.isInteger(defaultMax) && defaultMax >= 1)) throw new MlaError("BAD_ARGUMENT", `--default-max-tokens ${defaultMax} is not a token count`, "pass a whole number ≥ 1");
  const maxBody = opts.maxBodyBytes ?? 4 * 2 ** 20;
  // A body is parsed as one string: past the engine's longest, no request could be read.
  if (!(Number.isInteger(maxBody) && maxBody >= 1 && maxBody <= MAX_STRING_LENGTH))
    throw new MlaError("BAD_ARGUMENT", `serve()'s maxBodyBytes ${maxBody} is not a body size in bytes`, `pass a whole number from 1 to ${MAX_STRING_LENGTH} (the longest text JavaScript can parse), or leave it out (default ${4 * 2 ** 20}, 4 MiB)`);
  const log = opts.logger ?? silentLogger;
  const batching = { maxBatch: opts.maxBatch ?? 32, prefixCacheBytes: (opts.prefixCacheMb ?? 1024) * 2 ** 20, prefillChunk: opts.prefillChunk ?? 512, ...(opts.kvBudgetMb !== undefined ? { kvBudgetBytes: opts.kvBudgetMb * 2 ** 20 } : {}) };
  // Before the model loads (minutes for a large one), not after.
  checkBatcherOptions(batching);
  const lm = typeof model === "string" ? loadModel(model, { backend: selectBackend(opts.device ?? "auto", log) }) : model;
  const name = opts.name ?? (typeof model === "string" ? model : path.basename(lm.dir));
  const kvCache = !opts.kvCache || opts.kvCache === "auto" ? defaultKvCache(lm.model) : opts.kvCache;
  const batcher = new Batcher(lm.model, { ...batching, kvCache });
  // A template that does not parse costs the chat endpoint, not the server.
  let chat: ChatTemplate | null = null, chatProblem = "";
  try {
    chat = loadChatTemplate(lm.dir);
  } catch (e) {
    chatProblem = asMlaError(e).message.split("\n")[0]!;
    log.warn(`${chatProblem}: serving without POST /v1/chat/completions`);
  }
  const started = performance.now();
  let requests = 0;
  let closing = false;
  /** Responses under way, from routing to their end: close() waits for them. */
  const inFlight = new Set<Promise<void>>();

  /**
   * A text prompt's ids (BOS first where the tokenizer adds one). One that cannot fit the model is
   * refused after tokenizing only its first maxPositions ids or so: a 4 MB text would otherwise hold
   * the event loop, and every stream, for tens of seconds.
   */
  const encodePrompt = (text: string, addSpecialTokens: boolean): number[] => {
    const max = lm.config.maxPositions;
    const tooLong = () => new MlaError("BAD_ARGUMENT", `the prompt holds more than the model's ${max} positions of tokens`, "shorten the prompt");
    // A text the bounded probe would tokenize whole anyway (most prompts) is tokenized once.
    if (text.length >= encodedWholeBelow(max + 1) && encodePrefix(lm.tokenizer, text, max + 1).length > max) throw tooLong();
    const ids = lm.tokenizer.encode(text, { addSpecialTokens });
    if (ids.length > max) throw tooLong();
    return ids;
  };

  /**
   * The entry of token `id` (and of the step's most likely tokens) after `prev`; its offset is set by
   * the caller (tokenOffsets.ts). A token's text is as it reads after `prev` (so a SentencePiece piece
   * keeps its leading space): the text of [prev, id] less that of [prev]; special tokens by name. A
   * byte token short of a whole character reads as U+FFFD. Spaces are not cleaned up: that is done to
   * the whole text, not to a token (a pair's clean-up would be neither the token nor the text).
   */
  const tokenEntry = (prev: number, id: number, lp: TokenLogprobs): TokenEntry => {
    const decode = (ids: number[]) => lm.tokenizer.decode(ids, { skipSpecialTokens: false, cleanUpSpaces: false });
    const before = decode([prev]);
    const text = (t: number) => {
      const both = decode([prev, t]);
      return both.startsWith(before) ? both.slice(before.length) : decode([t]);
    };
    return { token: text(id), offset: 0, logprob: lp.logprob, top: lp.top.map((t) => ({ token: text(t.id), logprob: t.logprob })) };
  };

  /**
   * The entries of an echoed prompt's tokens, from `scored` (the log-probabilities of tokens 1…; null:
   * not asked), and where the completion's offsets begin. Offsets are in the echo as it comes back:
   * cleaned up where it is the ids' decode, not where it is the text as sent.
   */
  const promptEntries = (prompt: Prompt, scored: readonly TokenLogprobs[]): { entries: TokenEntry[]; end: number } => {
    const ids = prompt.ids;
    const entries: TokenEntry[] = [{ token: lm.tokenizer.decode([ids[0]!], { skipSpecialTokens: false, cleanUpSpaces: false }), offset: 0, logprob: null, top: null }];
    for (let k = 1; k < ids.length; k++) entries.push(tokenEntry(ids[k - 1]!, ids[k]!, scored[k - 1]!));
    const { offsets, end } = offsetsOf(entries.map((e) => e.token), prompt.echoCleaned);
    entries.forEach((e, k) => (e.offset = offsets[k]!));
    return { entries, end };
  };

  /** One prompt of a request: its ids, and its text when it comes back before the completion (echo). */
  interface Prompt {
    ids: number[];
    echo: string | null;
    /** The echo is the ids' decode with its spaces cleaned up (not a text as sent). */
    echoCleaned: boolean;
  }
  /** A completion's prompts and settings from its request body. */
  type Parse = (body: unknown) => { prompts: Prompt[]; fields: GenerationFields };
  const parseText: Parse = (body) => {
    const r = parseCompletionRequest(body, { name, vocabSize: lm.config.vocabSize });
    const prompts = r.prompts.map((p): Prompt => {
      const ids = typeof p === "string" ? encodePrompt(p, true) : p;
      // A text prompt comes back as sent; ids as their text (special tokens left out, as completions'
      // text), less the bytes of a character they end inside: those come out with the completion.
      if (!r.echo) return { ids, echo: null, echoCleaned: false };
      if (typeof p === "string") return { ids, echo: p, echoCleaned: false };
      return { ids, echo: lm.tokenizer.decode(ids.slice(0, ids.length - incompleteTail(lm.tokenizer, ids)), { skipSpecialTokens: true }), echoCleaned: lm.tokenizer.cleansUpSpaces === true };
    });
    return { prompts, fields: r };
  };
  // The template writes the special tokens it wants (BOS among them), as apply_chat_template's ids have them.
  const parseChat: Parse = (body) => {
    const r = parseChatRequest(body, { name, vocabSize: lm.config.vocabSize });
    const text = r.continueFinalMessage ? continueFinalMessage(chat!, r.messages) : chat!.render(r.messages, r.addGenerationPrompt);
    return { prompts: [{ ids: encodePrompt(text, false), echo: null, echoCleaned: false }], fields: r };
  };

  const generation = async (req: http.IncomingMessage, res: http.ServerResponse, parse: Parse, shape: ResponseShape): Promise<void> => {
    let prompts: Prompt[], r: GenerationFields;
    // A client can leave while its body is read: its 'close' has gone by when the sequences start.
    let left = false;
    res.once("close", () => (left = true));
    try {
      ({ prompts, fields: r } = parse(await readJson(req, maxBody)));
    } catch (e) {
      return sendRefusal(res, e);
    }
    const id = `${shape.idPrefix}-${crypto.randomUUID().replaceAll("-", "")}`;
    const created = Math.floor(Date.now() / 1000);
    // Choice k answers prompt ⌊k / n⌋, as OpenAI and vLLM index a batch of prompts' choices.
    const n = r.n, count = prompts.length * n;
    const promptOf = (k: number) => prompts[Math.floor(k / n)]!;
    const texts = Array.from({ length: count }, (_, k) => new TextStream(lm.tokenizer, promptOf(k).ids, r.stop, { includeStop: r.includeStop, skipSpecialTokens: r.skipSpecialTokens }));
    // With logprobs: each choice's token entries, all of them, how many have their offset set and how
    // many have been streamed; the last id, for the next token's text; the completion's offsets (made
    // at its first token, after the echoed prompt's entries) and where each entry's token is in them.
    const entries = Array.from({ length: count }, (_, k) => ({ all: [] as TokenEntry[], known: 0, sent: 0, last: promptOf(k).ids[promptOf(k).ids.length - 1]!, promptEnd: 0, offsets: null as TokenOffsets | null, at: [] as number[] }));
    /** Sets the offsets of choice k's entries that are known now (every one once `final`); returns how many are known. */
    const settle = (k: number, final = false): number => {
      const e = entries[k]!;
      if (final) e.offsets?.finish();
      for (; e.known < e.all.length; e.known++) {
        const offset = e.offsets!.offset(e.at[e.known]!);
        if (offset === null) break;
        e.all[e.known]!.offset = offset;
      }
      return e.known;
    };
    /** Choice k's entries not yet streamed whose offsets are known (null without logprobs); they then count as sent. */
    const unsent = (k: number): TokenEntry[] | null => {
      if (r.logprobs === null) return null;
      const e = entries[k]!, known = settle(k), list = e.all.slice(e.sent, known);
      e.sent = known;
      return list;
    };
    const ends: (SequenceEnd | null)[] = new Array<SequenceEnd | null>(count).fill(null);
    const handles: SequenceHandle[] = [];
    // With include_usage every chunk has a usage field, null until the last, as OpenAI sends them.
    const event = (body: Record<string, unknown>) => res.write(`data: ${JSON.stringify({ id, object: shape.chunkObject, created, model: name, ...(r.includeUsage ? { usage: null } : {}), ...body })}\n\n`);
    const finishOf = (end: SequenceEnd) => (end.reason === "length" ? "length" : "stop");
    // An echoed prompt goes out as each choice's first piece: with its scores once they are known
    // (onPrompt: before the choice's first token), else as soon as the stream opens.
    const scorePrompt = r.logprobs !== null && prompts[0]!.echo !== null;
    const echoSent = Array.from({ length: count }, (_, k) => promptOf(k).echo === null);
    const sendEcho = (k: number) => {
      echoSent[k] = true;
      event({ choices: [shape.delta(promptOf(k).echo!, null, k, unsent(k))] });
    };
    /** Choice k's entry for its new token `tok` (with logprobs). */
    const record = (k: number, tok: number, lp: TokenLogprobs | undefined) => {
      const e = entries[k]!;
      if (lp) {
        e.offsets ??= new TokenOffsets(lm.tokenizer.cleansUpSpaces === true, e.promptEnd);
        const entry = tokenEntry(e.last, tok, lp);
        e.at[e.all.length] = e.offsets.add(entry.token);
        e.all.push(entry);
      }
      e.last = tok;
    };
    let done = false;
    const onEnd = (k: number) => (end: SequenceEnd): void => {
      ends[k] = end;
      log.info(`${id}${count > 1 ? `[${k}]` : ""}: ${end.promptTokens} prompt + ${end.newTokens} new tokens, ${end.reason}${end.error ? ` (${end.error.message.split("\n")[0]})` : ""}; queued ${end.queuedMs.toFixed(0)} ms, prefill ${end.prefillMs.toFixed(0)} ms, ${(end.totalMs / 1000).toFixed(2)} s`);
      if (done || res.destroyed) return; // answered already (another choice failed), or the client left
      const failure = end.reason === "error" ? end.error! : end.reason === "cancelled" ? new MlaError("INTERRUPTED", "the server stopped this request as it shut down", "send it again once the server is back") : null;
      if (failure) {
        // One choice failed: the request fails, and its other choices stop.
        done = true;
        for (const h of handles) h.cancel();
        if (!r.stream) return sendJson(res, statusOf(failure), errorBody(failure));
        res.write(`data: ${errorBody(failure)}\n\n`);
        return void res.end("data: [DONE]\n\n");
      }
      // A choice that ends before its prompt's scores went out (a prompt scored alone) sends them now.
      if (r.stream && !echoSent[k]) sendEcho(k);
      const rest = texts[k]!.finish();
      if (r.logprobs !== null) settle(k, true);
      if (r.stream) event({ choices: [shape.delta(rest, finishOf(end), k, unsent(k))] });
      if (!ends.every((e) => e !== null)) return;
      done = true;
      // Each prompt counts once, however many choices it has (as OpenAI counts them).
      const promptTokens = prompts.reduce((t, p) => t + p.ids.length, 0);
      const completion = ends.reduce((t, e) => t + e!.newTokens, 0);
      const usage = { prompt_tokens: promptTokens, completion_tokens: completion, total_tokens: promptTokens + completion };
      if (!r.stream) return sendJson(res, 200, JSON.stringify({ id, object: shape.object, created, model: name, choices: texts.map((t, c) => shape.choice((promptOf(c).echo ?? "") + t.output, finishOf(ends[c]!), c, r.logprobs === null ? null : entries[c]!.all)), usage }));
      if (r.includeUsage) event({ choices: [], usage });
      res.end("data: [DONE]\n\n");
    };
    // A prompt's choice j draws with seed + j: reproducible per choice, different from its siblings, and
    // the same whether its prompt came alone or in a batch.
    const seed = r.seed ?? crypto.randomInt(2 ** 32);
    try {
      for (let k = 0; k < count; k++) {
        const prompt = promptOf(k).ids;
        try {
          // Without a limit (chat's default), up to --default-max-tokens or the model's positions.
          const maxTokens = r.maxTokens ?? defaultReplyLimit(r.minTokens, prompt.length, defaultMax, lm.config.maxPositions);
          handles.push(
            batcher.submit({
              prompt,
              maxTokens,
              sampling: r.sampling,
              stopAtEos: !r.ignoreEos,
              stopTokenIds: r.stopTokenIds,
              minTokens: r.minTokens,
              seed: ((seed >>> 0) + (k % n)) >>> 0,
              logprobs: r.logprobs ?? undefined,
              // Each choice scores its prompt itself (so its entries come before its first token's); n > 1 with
              // echo and logprobs prefills the prompt once per choice.
              ...(scorePrompt
                ? {
                    promptLogprobs: r.logprobs!,
                    onPrompt: (scored: TokenLogprobs[]) => {
                      if (done || res.writableEnded) return;
                      const e = entries[k]!, p = promptEntries(promptOf(k), scored);
                      e.all.push(...p.entries);
                      e.known = e.all.length;
                      e.promptEnd = p.end;
                      if (r.stream) sendEcho(k);
                    },
                  }
                : {}),
              onToken: (tok, lp) => {
                // Answered already (another choice failed in this same step): nothing more goes out.
                if (done || res.writableEnded) return false;
                const piece = texts[k]!.push(tok);
                // Every generated token is reported, the one that completes a stop string (whose text is
                // cut) too: an entry per token of completion_tokens, as vLLM gives them.
                record(k, tok, lp);
                if (r.stream && piece) event({ choices: [shape.delta(piece, null, k, unsent(k))] });
                return !texts[k]!.hitStop;
              },
              // EOS or a stop token id: its entry, as the text it adds nowhere (it goes out with the end).
              onEndToken: (tok, lp) => record(k, tok, lp),
              onEnd: onEnd(k),
            }),
          );
        } catch (e) {
          // A batch's refusal names the prompt it is about.
          const err = asMlaError(e);
          throw prompts.length > 1 ? new MlaError(err.code, `prompt[${Math.floor(k / n)}]: ${err.message}`) : err;
        }
      }
    } catch (e) {
      // The first refusal is the request's: none of its choices runs.
      done = true;
      for (const h of handles) h.cancel();
      return sendJson(res, statusOf(asMlaError(e)), errorBody(asMlaError(e)));
    }
    requests++;
    if (r.stream) {
      // Sent at once, so a client queued behind a full batch sees its stream open.
      res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
      res.flushHeaders();
      if (shape.opening) for (let k = 0; k < count; k++) event({ choices: [shape.opening(k)] });
      if (!scorePrompt) for (let k = 0; k < count; k++) if (!echoSent[k]) sendEcho(k);
    }
    // A write to a connection that just failed must not become an uncaught error: the close below ends the request.
    res.on("error", () => {});
    // A client that goes away stops its sequences (their places and caches go to the next request).
    const leave = () => {
      if (!done) for (const h of handles) h.cancel();
    };
    if (left) leave();
    else res.on("close", leave);
  };

  /** A generation route: refused while closing, counted in flight until its response has gone. */
  const generationRoute = (parse: Parse, shape: ResponseShape) => (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (closing) return sendJson(res, 503, errorBody(new MlaError("INTERRUPTED", "the server is shutting down", "send the request to another server, or again once it is back")));
    const work = generation(req, res, parse, shape).catch((e) => sendJson(res, 500, errorBody(asMlaError(e))));
    // Under way until its response has gone out or its client has left.
    const whole = Promise.all([work, new Promise<void>((r) => res.once("close", () => r()))]).then(() => {});
    inFlight.add(whole);
    void whole.then(() => inFlight.delete(whole));
  };

  const tokenizerServed: TokenizerServed = { name, tokenizer: lm.tokenizer, vocabSize: lm.config.vocabSize, maxPositions: lm.config.maxPositions, bosTokenId: lm.config.bosTokenId, eosTokenId: lm.config.eosTokenId, chat };
  /** A POST route answering `answer(body)` as JSON, or the refusal it throws. */
  const jsonRoute = (answer: (body: unknown) => Record<string, unknown> | Promise<Record<string, unknown>>) => (req: http.IncomingMessage, res: http.ServerResponse) =>
    void readJson(req, maxBody)
      .then(async (body) => sendJson(res, 200, JSON.stringify(await answer(body))))
      .catch((e) => sendRefusal(res, e));

  type Routes = Record<string, Record<string, (req: http.IncomingMessage, res: http.ServerResponse) => void>>;
  const routes: Routes = {
    "/health": { GET: (_q, res) => sendJson(res, closing ? 503 : 200, JSON.stringify({ status: closing ? "closing" : "ok" })) },
    "/v1/models": { GET: (_q, res) => sendJson(res, 200, JSON.stringify({ object: "list", data: [{ id: name, object: "model", created: Math.floor(Date.now() / 1000), owned_by: "mha2mla", max_model_len: lm.config.maxPositions }] })) },
    "/stats": { GET: (_q, res) => sendJson(res, 200, JSON.stringify(stats())) },
    "/metrics": {
      GET: (_q, res) => {
        const text = prometheusText(stats());
        res.writeHead(200, { "Content-Type": "text/plain; version=0.0.4", "Content-Length": Buffer.byteLength(text) });
        res.end(text);
      },
    },
    "/v1/completions": { POST: generationRoute(parseText, TEXT_COMPLETION) },
    // vLLM's tokenizer endpoints (lm-evaluation-harness's remote tokenizer reads them).
    "/tokenize": { POST: jsonRoute((body) => tokenize(body, tokenizerServed)) },
    "/detokenize": { POST: jsonRoute((body) => detokenize(body, tokenizerServed)) },
    "/tokenizer_info": { GET: (_q, res) => sendJson(res, 200, JSON.stringify(tokenizerInfo(tokenizerServed))) },
    "/v1/chat/completions": {
      POST: chat
        ? generationRoute(parseChat, CHAT_COMPLETION)
        : (_q, res) =>
            sendJson(res, 404, errorBody(new MlaError("NOT_FOUND", chatProblem ? `this model's chat template cannot be used (${chatProblem})` : `this model has no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json's chat_template in ${lm.dir})`, "format the conversation yourself and send it as the prompt of POST /v1/completions"))),
    },
  };

  const expected = opts.apiKey === undefined ? null : Buffer.from(`Bearer ${opts.apiKey}`);
  /** The Authorization header against the key, in constant time (no timing hint at the key's bytes). */
  const authorized = (header: string | undefined): boolean => {
    const got = Buffer.from(header ?? "");
    return expected !== null && got.length === expected.length && crypto.timingSafeEqual(got, expected);
  };

  const server = http.createServer((req, res) => {
    // The path as sent (no URL parsing: a malformed request line must not take the server down).
    const where = (req.url ?? "/").split("?")[0]!;
    const route = routes[where] as Routes[string] | undefined;
    const method = req.method === "HEAD" ? "GET" : (req.method ?? "");
    const handler = route?.[method] as Routes[string][string] | undefined;
    if (handler && opts.apiKey !== undefined && where !== "/health" && !authorized(req.headers.authorization))
      return sendJson(res, 401, errorBody(new MlaError("BAD_ARGUMENT", "the request has no valid API key", "send the header Authorization: Bearer KEY with the server's --api-key")), { "WWW-Authenticate": "Bearer" });
    if (handler) return handler(req, res);
    if (route) return sendJson(res, 405, errorBody(new MlaError("BAD_ARGUMENT", `${where} takes ${Object.keys(route).join(", ")}, not ${req.method}`, `send ${Object.keys(route)[0]} ${where}`)), { Allow: Object.keys(route).join(", ") });
    const known = Object.entries(routes).flatMap(([p, m]) => Object.keys(m).map((k) => `${k} ${p}`)).filter((r) => chat || !r.includes("chat"));
    return sendJson(res, 404, errorBody(new MlaError("NOT_FOUND", `no route ${req.method} ${where}`, `the routes are ${known.join(", ")}`)));
  });

  // A client that waits for "100 Continue" before sending a body too large (curl does above 1 MB) gets
  // the 413 instead, and sends nothing; any other gets the 100 and is served as usual.
  server.on("checkContinue", (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (Number(req.headers["content-length"] ?? 0) > maxBody) return sendRefusal(res, tooLarge(maxBody));
    res.writeContinue();
    server.emit("request", req, res);
  });

  const stats = (): ServerStats => ({ model: name, requests, inFlight: inFlight.size, uptimeSeconds: (performance.now() - started) / 1000, ...batcher.stats() });

  await new Promise<void>((resolve, reject) => {
    const refused = (e: NodeJS.ErrnoException) =>
      reject(
        e.code === "EADDRINUSE"
          ? new MlaError("BAD_ARGUMENT", `port ${port} on ${opts.host ?? "127.0.0.1"} is in use`, "pass another --port, or --port 0 for any free one")
          : e.code === "EACCES"
            ? new MlaError("BAD_ARGUMENT", `port ${port} needs privileges this process lacks`, "pass a port above 1023")
            : new MlaError("IO", `cannot listen on ${opts.host ?? "127.0.0.1"}:${port}: ${e.message}`, "check --host and --port"),
      );
    server.once("error", refused);
    server.listen(port, opts.host ?? "127.0.0.1", () => {
      server.off("error", refused);
      resolve();
    });
  });
  // Errors after the start (a failed accept, too many open files) are logged; the server goes on.
  server.on("error", (e) => log.warn(`server: ${e.message}`));
  const addr = server.address() as { address: string; port: number };
  const host = opts.host ?? "127.0.0.1";
  let closed: Promise<void> | null = null;
  const close = (): Promise<void> =>
    (closed ??= (async () => {
      // No new connections; a request on an open keep-alive connection gets 503.
      closing = true;
      const stopped = new Promise<void>((r) => server.close(() => r()));
      server.closeIdleConnections();
      while (inFlight.size) await Promise.all(inFlight);
      await batcher.whenIdle();
      batcher.clearPrefixCache();
      server.closeAllConnections();
      await stopped;
      // A signal that outlives the server (one per process, many servers) must not keep it alive.
      opts.signal?.removeEventListener("abort", abort);
    })());
  const abort = () => {
    // Requests in flight end now, each with a 503 (or an error event on its stream).
    batcher.cancelAll();
    void close();
  };
  if (opts.signal?.aborted) abort();
  else opts.signal?.addEventListener("abort", abort, { once: true });
  const shown = host.includes(":") ? `[${host}]` : host;
  if (opts.apiKey === undefined && !["127.0.0.1", "localhost", "::1"].includes(host)) log.warn(`listening on ${host} without --api-key: anyone who reaches this port can use the model`);
  log.info(`serving ${name} at http://${shown}:${addr.port} (POST /v1/completions${chat ? ", /v1/chat/completions" : ""}, /tokenize, /detokenize; GET /v1/models, /tokenizer_info, /health, /stats, /metrics): ${kvCache} cache, ${batcher.cacheBytes(1)} bytes per token; up to ${opts.maxBatch ?? 32} sequences per batch${opts.kvBudgetMb !== undefined ? ` within ${opts.kvBudgetMb} MB of cache` : ""}`);
  return { url: `http://${shown}:${addr.port}`, host, port: addr.port, model: name, loaded: lm, stats, close };
}
