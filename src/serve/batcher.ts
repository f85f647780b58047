/**
 * Continuous batching: sequences join and leave one decode batch between steps, so a server keeps
 * every weight read shared by all the sequences in flight. A new sequence is prefilled on its own
 * cache in chunks between decode steps (at most `prefillChunk` prompt tokens per step, as vLLM's
 * chunked prefill: a long prompt delays the running ones by a chunk per step, not by its whole
 * prefill), then decodes with the batch; one that ends (EOS, a stop string, its token limit, a
 * cancel) leaves it and frees its cache at once.
 *
 * Admission is bounded by the number of sequences and, optionally, by the bytes their caches reserve:
 * each sequence reserves room for its prompt and its token limit when it is admitted, so a running
 * batch never runs out of cache. A reservation counts the bytes the cache holds in memory on this
 * backend (kvCache.ts, heldRows: bf16 rows as bf16 on a device or the native CPU
 * backend, other host rows as float32, quantized rows padded on a device), not
 * its dtype's size, so what a budget admits fits in the memory it names. This is
 * where MLA pays: the same budget admits as many more sequences as its cache is smaller.
 */
import type { TokenLimitName } from "./completionRequest.js";
import { MlaError, isMlaError } from "../errors.js";
import type { LlamaModel } from "../model/llama.js";
import { heldBytesPerToken, heldRows, type DecodeCache, type HeldRows } from "../model/kvCache.js";
import { DecodeSession } from "../model/decodeSession.js";
import { kvBytesPerToken, stopTokenIds } from "../model/config.js";
import { KV_CACHE_DTYPES, type KvCacheDtype } from "../model/kvQuant.js";
import { checkModelArg } from "../util/argTypes.js";
import { checkOptionTypes } from "../util/optionTypes.js";
import { greedyIds, pickToken, seededRandom, tokenLogprobs, type SamplingOptions, type TokenLogprobs } from "../model/sampling.js";
import type { FloatArray } from "../tensor/tensor.js";
import { PrefixCache, type PrefixCacheStats } from "./prefixCache.js";
import { refusal } from "./httpJson.js";
import { Penalties } from "../model/penalties.js";
import { Histogram, type HistogramSnapshot } from "./histogram.js";
import { countOf } from "../util/counts.js";

export interface SequenceSpec {
  /** Token ids to continue (BOS included where the model wants it). */
  prompt: readonly number[];
  /** The most new tokens (≥ 0; 0: the prompt is only prefilled, e.g. to score it with promptLogprobs). */
  maxTokens: number;
  /** How refusals name maxTokens: the request's field and whether it sent it. Absent: max_tokens, sent. */
  limit?: TokenLimitName;
  sampling: SamplingOptions;
  /** The generator's seed for sampled tokens. */
  seed: number;
  /** End at the model's EOS tokens (stopTokenIds; default true); the EOS is counted and passed to onEndToken, not onToken. */
  stopAtEos?: boolean;
  /** More ids that end the sequence as EOS does (vLLM's stop_token_ids), whatever stopAtEos says. */
  stopTokenIds?: readonly number[];
  /** No ending id (EOS, stopTokenIds) is picked before this many new tokens (vLLM's min_tokens; default 0). */
  minTokens?: number;
  /** Log-probabilities of each new token and of this many most likely ones, passed to onToken (default: none). */
  logprobs?: number;
  /**
   * Score the prompt too: the log-probability of each prompt token after the ones before it, and of
   * this many most likely tokens there (a completion's `echo` with logprobs; lm-eval's log-likelihood
   * tasks), passed to onPrompt once the prompt is prefilled. Such a prompt starts only from a kept
   * prompt that was scored too (at least as many alternatives), whose scores it takes for the tokens
   * they share.
   */
  promptLogprobs?: number;
  /** With promptLogprobs: the prompt's tokens 1… scored (token 0 has nothing before it), before any new token. */
  onPrompt?: (scored: TokenLogprobs[]) => void;
  /** Each new token (with its log-probabilities when asked); returning false ends the sequence there ("stop": a stop string was met). */
  onToken: (id: number, logprobs?: TokenLogprobs) => boolean;
  /** The id that ended the sequence (EOS or one of stopTokenIds), which adds no text, with its log-probabilities when asked. */
  onEndToken?: (id: number, logprobs?: TokenLogprobs) => void;
  /** Called once, when the sequence ends for whatever reason. */
  onEnd: (end: SequenceEnd) => void;
}

export interface SequenceEnd {
  reason: "stop" | "length" | "cancelled" | "error";
  /** With reason "error": what failed (the prefill or a decode step). */
  error?: MlaError;
  promptTokens: number;
  /** Tokens generated (an EOS included). */
  newTokens: number;
  /** Milliseconds waiting for a place, in the prefill, and from admission to the end. */
  queuedMs: number;
  prefillMs: number;
  totalMs: number;
}

export interface BatcherOptions {
  /** The most sequences decoded together (≥ 1). */
  maxBatch: number;
  /** How the caches store keys/values (MLA: rope keys and latents). */
  kvCache: KvCacheDtype;
  /** The most bytes all admitted sequences' caches may reserve (default: no limit but maxBatch). */
  kvBudgetBytes?: number;
  /** The most bytes of prompts' caches kept for later prompts that begin the same way (default 0: none; prefixCache.ts). */
  prefixCacheBytes?: number;
  /** The most prompt tokens prefilled between two decode steps (default 512; 0: each prompt whole). */
  prefillChunk?: number;
}

/** How a refusal names maxBatch and prefillChunk: serve's flags, or a script's options. */
const FLAG_NAMES = { maxBatch: "--max-batch", prefillChunk: "--prefill-chunk" };
const OPTION_NAMES = { maxBatch: "new Batcher(): option maxBatch", prefillChunk: "new Batcher(): option prefillChunk" };

/** The options that need no model, checked: `serve` asks before it loads one (minutes for a large model). */
export function checkBatcherOptions(opts: Omit<BatcherOptions, "kvCache">, names: typeof FLAG_NAMES = FLAG_NAMES): void {
  if (!(Number.isInteger(opts.maxBatch) && opts.maxBatch >= 1)) throw new MlaError("BAD_ARGUMENT", `${names.maxBatch} ${opts.maxBatch} is not a number of sequences`, "pass a whole number ≥ 1, e.g. 32");
  if (opts.kvBudgetBytes !== undefined && !(opts.kvBudgetBytes > 0)) throw new MlaError("BAD_ARGUMENT", `a KV-cache budget of ${opts.kvBudgetBytes} bytes admits no sequence`, "pass a positive budget, or none for no limit but the batch size");
  if (opts.prefillChunk !== undefined && !(Number.isInteger(opts.prefillChunk) && opts.prefillChunk >= 0)) throw new MlaError("BAD_ARGUMENT", `${names.prefillChunk} ${opts.prefillChunk} is not a token count`, "pass a whole number of prompt tokens per step, or 0 to prefill each prompt whole");
  if (opts.prefixCacheBytes !== undefined && !(opts.prefixCacheBytes >= 0)) throw new MlaError("BAD_ARGUMENT", `a prefix cache of ${opts.prefixCacheBytes} bytes`, "pass 0 for none, or a positive budget");
}

export interface BatcherStats {
  /** Sequences admitted (prefilling or decoding); of them, still prefilling their prompt. */
  running: number;
  prefilling: number;
  waiting: number;
  /** Sequences ended so far, by reason. */
  ended: Record<SequenceEnd["reason"], number>;
  /** Tokens generated so far, and by decode steps (after each sequence's first). */
  newTokens: number;
  decodeTokens: number;
  /** Seconds spent in decode steps. */
  decodeSeconds: number;
  /**
   * Decode steps run, and of them those launched as a recorded step (CUDA graphs; a recording's own
   * step counts): the rest ran op by op, bound by the host's dispatch (a new batch shape's first step,
   * a backend that cannot record).
   */
  decodeSteps: number;
  replayedSteps: number;
  /** Bytes the running sequences' caches reserve (prompt + token limit each, at kvHeldBytesPerToken), within kvBudgetBytes. */
  kvReservedBytes: number;
  /**
   * Bytes of the tokens the running sequences have cached so far, in the cache's dtype (kvBytesPerToken
   * each, not kvHeldBytesPerToken): how full their caches are, not the memory they hold (that is
   * kvReservedBytes, allocated whole when a sequence is admitted).
   */
  kvCachedBytes: number;
  /**
   * @deprecated The old name of kvCachedBytes (the same value), kept for existing readers of /stats.
   * Despite "held", it counts the cached tokens at the dtype's size (kvBytesPerToken), not at
   * kvHeldBytesPerToken, nor the memory the caches hold (kvReservedBytes).
   */
  kvHeldBytes: number;
  kvBudgetBytes: number | null;
  /** A cache's bytes per token in its dtype (what inspect and eval report). */
  kvBytesPerToken: number;
  /**
   * The bytes per token a cache holds in memory on this backend (float32 rows on the host, int8/int4
   * rows padded on a device): what a sequence reserves per token against the budget.
   */
  kvHeldBytesPerToken: number;
  /** Prompts kept for reuse, and what they saved (null: no prefix cache). */
  prefixCache: PrefixCacheStats | null;
  /**
   * Seconds per sequence that ended at a stop or its length: from submission to its first token, per
   * token after the first, from submission to its end, and waiting for a place.
   */
  latency: { timeToFirstToken: HistogramSnapshot; timePerOutputToken: HistogramSnapshot; endToEnd: HistogramSnapshot; queue: HistogramSnapshot };
}

interface Sequence {
  spec: SequenceSpec;
  cache: DecodeCache | null;
  rand: () => number;
  /** The token fed to the next step. */
  next: number;
  /** With promptLogprobs: the prompt tokens scored so far. */
  promptScored: TokenLogprobs[];
  /** The sampling settings' penalties and biases (null: none). */
  penalties: Penalties | null;
  /** The ids that end it when picked: the model's EOS ones unless it ignores them, and its own stop ids. */
  endings: ReadonlySet<number>;
  /** Prompt tokens in the cache so far; the sequence decodes once all are. */
  prefilled: number;
  decoding: boolean;
  newTokens: number;
  /** The tokens generated so far, in order (all but the last are in the cache once it ends). */
  generated: number[];
  reserved: number;
  cancelled: boolean;
  ended: boolean;
  queuedAt: number;
  admittedAt: number;
  prefillMs: number;
}

/** A spec's limit field as refusals name it (absent: max_tokens, sent). */
const limitOf = (spec: SequenceSpec): TokenLimitName => spec.limit ?? { key: "max_tokens", sent: true };

/** `s` takes the most likely token of its logits as they are: greedy, no penalties or biases, no end token held back by min_tokens, no log-probabilities asked. */
const pickedAsIs = (s: Sequence): boolean => s.spec.sampling.temperature <= 0 && !s.penalties && s.spec.logprobs === undefined && (s.newTokens >= (s.spec.minTokens ?? 0) || !s.endings.size);

/** "the prompt's N tokens + max_tokens M", naming the request's limit field, or the default it got. */
function tokenSum(spec: SequenceSpec): string {
  const limit = limitOf(spec);
  return `the prompt's ${countOf(spec.prompt.length, "token")} + ${limit.key} ${spec.maxTokens}${limit.sent ? "" : " (the default: it was not sent)"}`;
}

/** What would fit `most` tokens: a lower limit where the prompt leaves room, else a shorter prompt. */
function roomHint(spec: SequenceSpec, most: number, tail: string): string {
  const key = limitOf(spec).key, room = most - spec.prompt.length;
  const least = spec.maxTokens === 0 ? 0 : 1; // a prompt only scored (echo) needs no reply room
  if (room >= least && room < spec.maxTokens) return `send ${key} ≤ ${room}, or shorten the prompt${tail}`;
  return most - least >= 1 ? `shorten the prompt to at most ${countOf(most - least, "token")} (it has ${spec.prompt.length})${tail}` : `no prompt fits the server's KV budget${tail}`;
}

/** What submit() returns: a way to end the sequence early. */
export interface SequenceHandle {
  /** Ends it at the next turn (reason "cancelled"), freeing its place and cache. */
  cancel(): void;
}

export class Batcher {
  private readonly waiting: Sequence[] = [];
  private running: Sequence[] = [];
  private session: DecodeSession | null = null;
  /** The running sequences the session was made over (any change makes a new one). */
  private sessionOver: Sequence[] = [];
  private looping = false;
  private idle: (() => void)[] = [];
  /** Bytes per token a cache holds in memory (heldBytesPerToken): what admission reserves. */
  private readonly perToken: number;
  /** Bytes per token in the cache's dtype, as reported. */
  private readonly dtypePerToken: number;
  /** How the caches hold their rows on this backend (why perToken may pass dtypePerToken). */
  readonly heldRows: HeldRows;
  private readonly stops: ReadonlySet<number>;
  private readonly prefix: PrefixCache | null;
  /** Prompts whose prefill ended without being kept: their other choices prefill on their own. */
  private readonly unkept = new WeakSet<readonly number[]>();
  private readonly ended = { stop: 0, length: 0, cancelled: 0, error: 0 };
  private newTokens = 0;
  private decodeTokens = 0;
  private decodeMs = 0;
  private decodeSteps = 0;
  private replayedSteps = 0;
  private readonly latency = { timeToFirstToken: new Histogram(), timePerOutputToken: new Histogram(), endToEnd: new Histogram(), queue: new Histogram() };

  constructor(readonly model: LlamaModel, readonly opts: BatcherOptions) {
    // From a script: no options failed as "reading 'maxBatch'", a folder's name for the model and an
    // unknown kvCache deep inside (or not at all: "zz" was taken).
    checkModelArg("new Batcher()", model);
    checkOptionTypes<BatcherOptions>("new Batcher()", opts, { maxBatch: "number", kvCache: "string", kvBudgetBytes: "number", prefixCacheBytes: "number", prefillChunk: "number" }, ["maxBatch", "kvCache"]);
    if (!(KV_CACHE_DTYPES as readonly string[]).includes(opts.kvCache)) throw new MlaError("BAD_ARGUMENT", `new Batcher(): option kvCache is ${JSON.stringify(opts.kvCache)}, not a cache type`, `pass one of ${KV_CACHE_DTYPES.join(", ")} (defaultKvCache(model) picks one)`);
    checkBatcherOptions(opts, OPTION_NAMES);
    this.heldRows = heldRows(model.backend, opts.kvCache);
    this.perToken = heldBytesPerToken(model.config, model.backend, opts.kvCache);
    this.dtypePerToken = kvBytesPerToken(model.config, opts.kvCache);
    // Below two tokens (BOS and one more) every request would be refused, with a hint of no length at all.
    if (opts.kvBudgetBytes !== undefined && opts.kvBudgetBytes < 2 * this.perToken) {
      const why = this.heldRows.why ? `, not the ${this.dtypePerToken} of ${opts.kvCache}: ${this.heldRows.why}` : "";
      // Serve's flag and a script's option both: new Batcher() is the library's, and serve's budget goes through it.
      const mbFor4k = Math.max(1, Math.ceil((4096 * this.perToken) / 2 ** 20));
      throw new MlaError("BAD_ARGUMENT", `a KV-cache budget of ${mb(opts.kvBudgetBytes)} MB holds ${countOf(Math.floor(opts.kvBudgetBytes / this.perToken), "token")} of this model's ${opts.kvCache} cache (${this.perToken} bytes held in memory per token${why}): no request fits`, `start the server with a budget for the prompts and replies it should serve, e.g. --kv-budget-mb ${mbFor4k} for 4,096 tokens (from a script, kvBudgetBytes ${mbFor4k * 2 ** 20})`);
    }
    this.stops = stopTokenIds(model.config);
    this.prefix = opts.prefixCacheBytes ? new PrefixCache(opts.prefixCacheBytes, this.perToken) : null;
  }

  /** Bytes of cache a sequence of `tokens` tokens (prompt + new) reserves: what its cache holds in memory. */
  cacheBytes(tokens: number): number {
    return tokens * this.perToken;
  }

  /** The most tokens (prompt and reply) one sequence's cache may hold within the KV budget; Infinity without one. */
  fitsTokens(): number {
    return this.opts.kvBudgetBytes === undefined ? Infinity : Math.floor(this.opts.kvBudgetBytes / this.perToken);
  }

  /**
   * Refuses a sequence submit() would refuse (it can never start, or its ids are not the model's),
   * queueing nothing. Returns the cache bytes it would reserve.
   */
  check(spec: SequenceSpec): number {
    const c = this.model.config;
    if (spec.prompt.length === 0) throw new MlaError("BAD_ARGUMENT", "the prompt has no tokens", "send a non-empty prompt");
    // Typed arrays downstream would truncate 1.5 to 1 (and wrap 2^32 + 1): a wrong token, silently.
    const badId = (ids: readonly number[]) => ids.findIndex((t) => !(Number.isInteger(t) && t >= 0 && t < c.vocabSize));
    const at = badId(spec.prompt);
    if (at >= 0) throw new MlaError("BAD_ARGUMENT", `the prompt's token ${at} is ${spec.prompt[at]}, not a token id`, `token ids are whole numbers from 0 to ${c.vocabSize - 1} (the model's vocabulary)`);
    const stopAt = spec.stopTokenIds ? badId(spec.stopTokenIds) : -1;
    if (stopAt >= 0) throw new MlaError("BAD_ARGUMENT", `stop token id ${stopAt} is ${spec.stopTokenIds![stopAt]}, not a token id`, `token ids are whole numbers from 0 to ${c.vocabSize - 1} (the model's vocabulary)`);
    if (!(Number.isInteger(spec.maxTokens) && spec.maxTokens >= 0)) throw new MlaError("BAD_ARGUMENT", `max_tokens ${spec.maxTokens} is not a token count`, "pass a whole number ≥ 0");
    const total = spec.prompt.length + spec.maxTokens;
    // The hint's limit fits the KV budget too, so following it is not refused next for that.
    const budgetBinds = this.fitsTokens() < c.maxPositions;
    if (total > c.maxPositions) throw refusal("BAD_ARGUMENT", `${tokenSum(spec)} = ${total} pass the model's ${c.maxPositions} positions`, roomHint(spec, Math.min(c.maxPositions, this.fitsTokens()), budgetBinds ? ` (the server's KV budget holds ${this.fitsTokens()} tokens)` : ""), { param: limitOf(spec).key });
    const reserved = this.cacheBytes(total);
    if (this.opts.kvBudgetBytes !== undefined && reserved > this.opts.kvBudgetBytes)
      throw refusal("BAD_ARGUMENT", `${tokenSum(spec)} = ${total} tokens of cache take ${mb(reserved)} MB, more than the server's whole KV budget of ${mb(this.opts.kvBudgetBytes)} MB`, roomHint(spec, this.fitsTokens(), " (or start the server with a larger --kv-budget-mb)"), { param: limitOf(spec).key });
    return reserved;
  }

  /**
   * Queues a sequence; it starts once a place (and cache budget) is free. Throws, before queueing, for a
   * sequence that can never start: longer than the model's positions, or needing more cache than the budget.
   */
  submit(spec: SequenceSpec): SequenceHandle {
    return this.enqueue(spec, this.check(spec));
  }

  /**
   * Queues all of `specs` (a request's sequences) or none: each is checked, as submit() checks it, before
   * the first is queued, so a refusal of a later one cancels none of the earlier (which stats() would
   * count as cancelled sequences of a request that never ran). They are taken and checked in order; the
   * first refusal is thrown as `refusal` makes it from its index and error (where `specs` is a generator,
   * an error making a spec is that spec's refusal).
   */
  submitAll(specs: Iterable<SequenceSpec>, refusal: (index: number, e: unknown) => unknown = (_, e) => e): SequenceHandle[] {
    const checked: [SequenceSpec, number][] = [];
    try {
      for (const spec of specs) checked.push([spec, this.check(spec)]);
    } catch (e) {
      throw refusal(checked.length, e);
    }
    return checked.map(([spec, reserved]) => this.enqueue(spec, reserved));
  }

  /** Queues `spec`, which check() has passed, reserving `reserved` bytes. */
  private enqueue(spec: SequenceSpec, reserved: number): SequenceHandle {
    const s: Sequence = { spec, cache: null, rand: seededRandom(spec.seed), next: -1, promptScored: [], penalties: Penalties.of(spec.prompt, spec.sampling), endings: new Set([...((spec.stopAtEos ?? true) ? this.stops : []), ...(spec.stopTokenIds ?? [])]), prefilled: 0, decoding: false, newTokens: 0, generated: [], reserved, cancelled: false, ended: false, queuedAt: performance.now(), admittedAt: 0, prefillMs: 0 };
    this.waiting.push(s);
    this.kick();
    return {
      cancel: () => {
        if (s.ended) return;
        s.cancelled = true;
        const i = this.waiting.indexOf(s);
        if (i >= 0) {
          this.waiting.splice(i, 1);
          this.end(s, "cancelled");
        }
      },
    };
  }

  stats(): BatcherStats {
    const cached = this.running.reduce((n, s) => n + (s.cache?.bytes ?? 0), 0);
    return {
      running: this.running.length,
      prefilling: this.running.filter((s) => !s.decoding).length,
      waiting: this.waiting.length,
      ended: { ...this.ended },
      newTokens: this.newTokens,
      decodeTokens: this.decodeTokens,
      decodeSeconds: this.decodeMs / 1000,
      decodeSteps: this.decodeSteps,
      replayedSteps: this.replayedSteps,
      kvReservedBytes: this.reservedBytes(),
      kvCachedBytes: cached,
      kvHeldBytes: cached,
      kvBudgetBytes: this.opts.kvBudgetBytes ?? null,
      kvBytesPerToken: this.dtypePerToken,
      kvHeldBytesPerToken: this.perToken,
      prefixCache: this.prefix?.stats() ?? null,
      latency: { timeToFirstToken: this.latency.timeToFirstToken.snapshot(), timePerOutputToken: this.latency.timePerOutputToken.snapshot(), endToEnd: this.latency.endToEnd.snapshot(), queue: this.latency.queue.snapshot() },
    };
  }

  /** Cache bytes the admitted sequences reserve (prompt + token limit each). */
  private reservedBytes(): number {
    return this.running.reduce((n, s) => n + s.reserved, 0);
  }

  /** Resolves once no sequence runs or waits. */
  whenIdle(): Promise<void> {
    if (!this.looping && !this.waiting.length && !this.running.length) return Promise.resolve();
    return new Promise((r) => this.idle.push(r));
  }

  /** Frees the kept prompts (the prefix cache); the batcher still serves, starting with none. */
  clearPrefixCache(): void {
    this.prefix?.clear();
  }

  /** Cancels every sequence, waiting or running. */
  cancelAll(): void {
    for (const s of [...this.waiting]) {
      s.cancelled = true;
      this.end(s, "cancelled");
    }
    this.waiting.length = 0;
    for (const s of this.running) s.cancelled = true;
  }

  private kick(): void {
    if (this.looping) return;
    this.looping = true;
    setImmediate(() => void this.loop());
  }

  private async loop(): Promise<void> {
    try {
      while (this.waiting.length || this.running.length) {
        try {
          this.retire();
          this.admit();
          this.prefillChunks();
          this.step();
          this.retire();
        } catch (e) {
          // A failure outside a prefill or a step (freeing a cache, a recording): every sequence ends
          // with it rather than hang, and the batcher stays usable (the recording freed now, not by the collector).
          this.session?.dispose();
          this.session = null;
          this.sessionOver = [];
          this.fail([...this.running, ...this.waiting.splice(0)], e);
          this.running = [];
        }
        // Requests, cancels and the streamed text go out between steps.
        await new Promise((r) => setImmediate(r));
      }
    } finally {
      this.session?.dispose();
      this.session = null;
      this.sessionOver = [];
      this.looping = false;
      for (const r of this.idle.splice(0)) r();
    }
  }

  /** Admits waiting sequences while there are places and budget: each gets its cache (from a kept prompt where one begins the same way). */
  private admit(): void {
    const budget = this.opts.kvBudgetBytes ?? Infinity;
    let reserved = this.reservedBytes();
    let held = 0;
    for (let i = 0; i < this.waiting.length && this.running.length + held < this.opts.maxBatch; ) {
      const s = this.waiting[i]!;
      if (reserved + s.reserved > budget) break;
      // A request's other choices (the same prompt) wait for its first to be prefilled and kept: they
      // then start from its cache, and the prompt is prefilled once. They hold their places and budget
      // meanwhile, so later requests do not pass them. A prompt that was not kept (no room) is not waited for.
      if (this.prefix?.keeps(s.spec.prompt) && !this.unkept.has(s.spec.prompt) && this.running.some((x) => !x.decoding && x.spec.prompt === s.spec.prompt)) {
        held++;
        reserved += s.reserved;
        i++;
        continue;
      }
      this.waiting.splice(i, 1);
      reserved += s.reserved;
      s.admittedAt = performance.now();
      const prompt = s.spec.prompt, capacity = prompt.length + s.spec.maxTokens;
      try {
        const seed = this.prefix?.seed(prompt, capacity, s.spec.promptLogprobs) ?? null;
        s.cache = seed?.cache ?? this.model.newCache(this.opts.kvCache, { capacity });
        s.prefilled = seed?.tokens ?? 0;
        if (seed?.scores) s.promptScored = seed.scores;
        this.running.push(s);
        if (seed?.logits) this.prefilledAll(s, seed.logits, false);
      } catch (e) {
        this.fail([s], e);
      }
    }
  }

  /** Prefills admitted prompts in arrival order, at most prefillChunk tokens in all (0: each whole). */
  private prefillChunks(): void {
    let left = this.opts.prefillChunk || Infinity;
    for (const s of this.running) {
      if (left <= 0) break;
      if (s.decoding || s.ended || s.cancelled) continue;
      const prompt = s.spec.prompt;
      const n = Math.min(prompt.length - s.prefilled, left);
      try {
        const ids = Int32Array.from(prompt.slice(s.prefilled, s.prefilled + n));
        let logits: FloatArray;
        if (s.spec.promptLogprobs !== undefined) {
          // Row j scores the prompt token after it; the prompt's last row has none (it gives the first new token).
          const next = Int32Array.from({ length: n }, (_, j) => prompt[s.prefilled + j + 1] ?? -1);
          const out = this.model.prefillScored(ids, s.cache!, next, s.spec.promptLogprobs);
          for (const x of out.scored) if (x) s.promptScored.push(x);
          logits = out.logits;
        } else {
          const out = this.model.prefill(ids, s.cache!);
          logits = out.toArray();
          out.dispose();
        }
        s.prefilled += n;
        left -= n;
        if (s.prefilled === prompt.length) this.prefilledAll(s, logits, true);
      } catch (e) {
        this.fail([s], e);
      }
    }
  }

  /** The whole prompt is in the cache: kept for later prompts, its first token taken, and on to decoding. */
  private prefilledAll(s: Sequence, logits: FloatArray, keep: boolean): void {
    const scores = s.spec.promptLogprobs === undefined ? null : { top: s.spec.promptLogprobs, rows: s.promptScored };
    if (keep && this.prefix && !this.prefix.store(s.spec.prompt, s.cache!, logits, scores)) this.unkept.add(s.spec.prompt);
    s.prefillMs = performance.now() - s.admittedAt;
    s.decoding = true;
    if (s.spec.promptLogprobs !== undefined)
      try {
        s.spec.onPrompt?.(s.promptScored);
      } catch (e) {
        return this.fail([s], e);
      }
    if (s.spec.maxTokens === 0) return this.end(s, "length");
    this.take(s, logits);
  }

  /** One decode step for every running sequence that goes on. */
  private step(): void {
    const live = this.running.filter((s) => s.decoding && !s.ended && !s.cancelled);
    if (!live.length) return;
    const V = this.model.config.vocabSize;
    try {
      if (!this.session || live.length !== this.sessionOver.length || live.some((s, i) => s !== this.sessionOver[i])) {
        this.session?.dispose();
        this.session = null;
        this.session = new DecodeSession(this.model, live.map((s) => s.cache!));
        this.sessionOver = live;
      }
      const t0 = performance.now();
      const out = this.session.step(Int32Array.from(live, (s) => s.next));
      // Where every sequence takes the most likely token as it is, the device picks them where it can.
      const picked = live.every(pickedAsIs) ? greedyIds(this.model.backend, out) : null;
      const logits = picked ? null : out.toArray();
      this.decodeMs += performance.now() - t0;
      this.decodeTokens += live.length;
      this.decodeSteps++;
      if (this.session.graphed) this.replayedSteps++;
      // A sequence ended or cancelled earlier in this pass (a sibling choice failed) takes no token.
      live.forEach((s, k) => !s.ended && !s.cancelled && (picked ? this.accept(s, picked[k]!, undefined) : this.take(s, logits!.subarray(k * V, (k + 1) * V))));
    } catch (e) {
      this.session?.dispose();
      this.session = null;
      this.sessionOver = [];
      this.fail(live, e);
    }
  }

  /** The next token of `s`, drawn from its `logits` [V]. */
  private take(s: Sequence, logits: FloatArray): void {
    let row = s.penalties?.apply(logits) ?? logits;
    if (s.newTokens < (s.spec.minTokens ?? 0)) {
      if (row === logits) row = logits.slice();
      for (const t of s.endings) row[t] = -Infinity;
    }
    const id = pickToken(row, s.spec.sampling, s.rand);
    s.penalties?.add(id);
    // The model's own distribution, before penalties and biases (as vLLM reports them by default).
    this.accept(s, id, s.spec.logprobs === undefined ? undefined : tokenLogprobs(logits, id, s.spec.logprobs));
  }

  /** `s` takes token `id` (with its log-probabilities `lp` where asked): it ends there or goes on from it. */
  private accept(s: Sequence, id: number, lp: ReturnType<typeof tokenLogprobs> | undefined): void {
    s.newTokens++;
    s.generated.push(id);
    this.newTokens++;
    let more: boolean;
    try {
      if (s.endings.has(id)) {
        s.spec.onEndToken?.(id, lp);
        return this.end(s, "stop");
      }
      more = s.spec.onToken(id, lp);
    } catch (e) {
      return this.fail([s], e);
    }
    if (!more) return this.end(s, "stop");
    if (s.newTokens >= s.spec.maxTokens) return this.end(s, "length");
    s.next = id;
  }

  /** Removes ended and cancelled sequences from the batch. */
  private retire(): void {
    for (const s of this.running) if (s.cancelled && !s.ended) this.end(s, "cancelled");
    if (this.running.some((s) => s.ended)) this.running = this.running.filter((s) => !s.ended);
  }

  private fail(seqs: Sequence[], e: unknown): void {
    const error = isMlaError(e) ? e : new MlaError("UNSUPPORTED", `internal error: ${(e as Error)?.message ?? String(e)}`, "this is a bug; report it with the request that caused it", { cause: e });
    for (const s of seqs) this.end(s, "error", error);
  }

  /**
   * A finished sequence's cache, prompt and reply (all but the last token, which no step fed), kept
   * for later prompts: a chat's next turn renders the earlier turns and this reply before its new
   * message, so it starts from here and prefills only the new message. It replaces the kept prompt it
   * extends.
   */
  private keepFinished(s: Sequence, cache: DecodeCache): void {
    const ids = [...s.spec.prompt, ...s.generated];
    if (!this.prefix || cache.length <= s.spec.prompt.length || cache.length !== ids.length - 1) return;
    this.prefix.store(ids.slice(0, cache.length), cache, null);
  }

  private end(s: Sequence, reason: SequenceEnd["reason"], error?: MlaError): void {
    if (s.ended) return;
    s.ended = true;
    const cache = s.cache;
    s.cache = null;
    if (cache) {
      // The session holds the cache's buffers in a recording: it goes first.
      if (this.sessionOver.includes(s)) {
        const session = this.session;
        this.session = null;
        this.sessionOver = [];
        session?.dispose();
      }
      if (reason === "stop" || reason === "length") this.keepFinished(s, cache);
      cache.dispose();
    }
    this.ended[reason]++;
    const now = performance.now();
    const admitted = s.admittedAt || now;
    if (reason === "stop" || reason === "length") {
      const queued = (admitted - s.queuedAt) / 1000, decode = (now - admitted) / 1000 - s.prefillMs / 1000;
      this.latency.queue.observe(queued);
      this.latency.endToEnd.observe((now - s.queuedAt) / 1000);
      if (s.newTokens > 0) this.latency.timeToFirstToken.observe(queued + s.prefillMs / 1000);
      if (s.newTokens > 1) this.latency.timePerOutputToken.observe(decode / (s.newTokens - 1));
    }
    try {
      s.spec.onEnd({ reason, ...(error ? { error } : {}), promptTokens: s.spec.prompt.length, newTokens: s.newTokens, queuedMs: admitted - s.queuedAt, prefillMs: s.prefillMs, totalMs: now - admitted });
    } catch {
      // A listener's failure must not stop the other sequences.
    }
  }
}

/** MB with enough digits to tell a reservation from a budget (0.0 MB against 0.0 MB said nothing). */
function mb(bytes: number): string {
  const v = bytes / 2 ** 20;
  return v >= 1 ? v.toFixed(1) : v.toPrecision(2);
}
