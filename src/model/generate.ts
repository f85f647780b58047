/** Text generation with the KV cache: prefill the prompt once, then one token per step. */
import { MlaError, refuseInert } from "../errors.js";
import type { LlamaModel } from "./llama.js";
import { DecodeSession } from "./decodeSession.js";
import type { KvCacheDtype } from "./kvQuant.js";
import type { DecodeCache } from "./kvCache.js";
import { nextTurn, throwIfAborted } from "../util/abort.js";
import { checkOptionTypes, describe, type OptionKinds } from "../util/optionTypes.js";
import { checkModelArg } from "../util/argTypes.js";
import { greedyIds, pickToken, SAMPLING_RANGES, seededRandom, type SamplingOptions } from "./sampling.js";
import { checkPenalties, Penalties, type PenaltyOptions } from "./penalties.js";
import { stopTokenIds } from "./config.js";
import type { FloatArray, Tensor } from "../tensor/tensor.js";

export interface GenerateOptions extends PenaltyOptions {
  maxTokens: number;
  /** 0 = greedy (the default), which refuses topK, topP and minP: it reads none of them. */
  temperature?: number;
  /** With temperature > 0: sample among the k most likely tokens only (default 0: all). */
  topK?: number;
  /** With temperature > 0: sample from the smallest set of most likely tokens holding this much probability (default 1: all). */
  topP?: number;
  /** With temperature > 0: drop tokens less likely than this fraction of the most likely one (default 0: none). */
  minP?: number;
  seed?: number;
  /** Stop at the model's EOS token (default true). */
  stopAtEos?: boolean;
  /**
   * How the decode cache stores keys/values or latents (default f32); "auto" is the CLI's default,
   * defaultKvCache(model): bf16 for bf16 weights on the GPU, else f32.
   */
  kvCache?: KvCacheDtype | "auto";
  /** Called with each new token as it is picked: the index of its prompt and its id (a stop token too). Text streamed as it is generated. */
  onToken?: (sequence: number, id: number) => void;
}

export interface GenerateResult {
  ids: number[];
  cacheElements: number;
  /** Bytes the cache takes as its dtype (scales included). */
  cacheBytes: number;
}

/**
 * The decode cache a model serves with by default: bf16 where its linear weights are held in bf16
 * (a bf16 checkpoint on the GPU: what HF transformers stores for such a model, half the bytes, and
 * on CUDA the fused latent-attention kernel for MLA), float32 elsewhere (exact, as evaluation computes).
 */
export function defaultKvCache(model: LlamaModel): KvCacheDtype {
  checkModelArg("defaultKvCache()", model);
  return model.bf16Weights ? "bf16" : "f32";
}

/** What a batch of prompts produced (generateBatch). */
export interface GenerateBatchResult {
  /** One per prompt, in order. */
  sequences: GenerateResult[];
  /** Tokens the decode steps produced (after each prompt's first new token) and the seconds they took. */
  decodeTokens: number;
  decodeSeconds: number;
  /** How the steps ran: "CUDA graph", or why op by op (DecodeSession.why). */
  steps: string;
}

/** Continues `prompt` (token ids, BOS included if wanted) by up to maxTokens tokens. */
export function generate(model: LlamaModel, prompt: readonly number[], opts: GenerateOptions): GenerateResult {
  checkModelArg("generate()", model);
  return runBatch(model, [prompt], opts).sequences[0]!;
}

/**
 * Continues each of `prompts` by up to maxTokens tokens, decoding them together: one step for all
 * unfinished sequences reads every weight once (MLA's small caches let more sequences share a step).
 * Each prompt is prefilled on its own cache; a sequence that ends (EOS) leaves the batch. Sampling
 * draws from a generator per sequence (seed + its index), so a prompt's output does not depend on the
 * others in its batch.
 */
export function generateBatch(model: LlamaModel, prompts: readonly (readonly number[])[], opts: GenerateOptions): GenerateBatchResult {
  checkModelArg("generateBatch()", model);
  return runBatch(model, prompts, opts);
}

/** generateBatch past its model check, which generate() makes under its own name. */
function runBatch(model: LlamaModel, prompts: readonly (readonly number[])[], opts: GenerateOptions): GenerateBatchResult {
  // yieldMs, onStep and signal need turns of the event loop, which a synchronous call never gives.
  const asyncOnly = ["yieldMs", "onStep", "signal"].filter((k) => (opts as unknown as Record<string, unknown> | null)?.[k] !== undefined);
  if (asyncOnly.length) throw new MlaError("BAD_ARGUMENT", `generate() and generateBatch() take no ${asyncOnly.join(", ")}: they never give the event loop a turn`, "call generateBatchAsync(model, prompts, opts), which takes them");
  checkOptionTypes("generate()", opts, SYNC_KINDS, ["maxTokens"]);
  const run = decodeSteps(model, prompts, opts);
  for (;;) {
    const r = run.next();
    if (r.done) return r.value;
  }
}

export interface GenerateAsyncOptions extends GenerateOptions {
  /** The longest the event loop waits for a turn, in ms (default 50). */
  yieldMs?: number;
  /** Called after every decode step with the tokens it produced (progress). */
  onStep?: (tokens: number) => void;
  /** Aborting it stops the generation at its next turn (MlaError INTERRUPTED). */
  signal?: AbortSignal;
}

/**
 * generateBatch that gives the event loop a turn between decode steps (at least every `yieldMs`),
 * so a signal handler or an abort can run during a long generation, and reports each step's
 * tokens to `onStep`. Same results as generateBatch.
 */
export async function generateBatchAsync(model: LlamaModel, prompts: readonly (readonly number[])[], opts: GenerateAsyncOptions): Promise<GenerateBatchResult> {
  checkModelArg("generateBatchAsync()", model);
  checkOptionTypes("generateBatchAsync()", opts, ASYNC_KINDS, ["maxTokens"]);
  // NaN (and Infinity) never gave the event loop a turn: an abort or a signal handler went unheard to the last token.
  const yieldMs = opts.yieldMs ?? 50;
  if (!(Number.isFinite(yieldMs) && yieldMs >= 0)) throw new MlaError("BAD_ARGUMENT", `generateBatchAsync(): yieldMs ${yieldMs} is not a number of milliseconds ≥ 0`, "pass e.g. yieldMs: 50 (0 gives the event loop a turn after every step), or leave it out (50)");
  throwIfAborted(opts.signal);
  const run = decodeSteps(model, prompts, opts);
  let last = performance.now();
  try {
    for (;;) {
      const r = run.next();
      if (r.done) return r.value;
      opts.onStep?.(r.value);
      if (performance.now() - last >= yieldMs) {
        await nextTurn(opts.signal);
        last = performance.now();
      }
    }
  } finally {
    // An abort (or a throwing onStep) leaves the loop between steps: finish the generator so that its
    // caches and recorded step are freed now. A no-op once it has returned.
    run.return(undefined as unknown as GenerateBatchResult);
  }
}

const SYNC_KINDS: OptionKinds<GenerateOptions> = { maxTokens: "number", temperature: "number", topK: "number", topP: "number", minP: "number", seed: "number", stopAtEos: "boolean", kvCache: "string", onToken: "function", presencePenalty: "number", frequencyPenalty: "number", repetitionPenalty: "number", logitBias: "object" };
const ASYNC_KINDS: OptionKinds<GenerateAsyncOptions> = { ...SYNC_KINDS, yieldMs: "number", onStep: "function", signal: "object" };

/** The CLI flags the penalty options are named by in refusals. */
const PENALTY_FLAGS = { presencePenalty: "--presence-penalty", frequencyPenalty: "--frequency-penalty", repetitionPenalty: "--repetition-penalty", logitBias: "logitBias" };

/** The sampling settings of `opts`, checked (a bad one named as the CLI's flag); with `vocabSize`, the penalties too. */
export function checkSampling(opts: { temperature?: number; topK?: number; topP?: number; minP?: number } & PenaltyOptions, vocabSize = Infinity): SamplingOptions {
  const temperature = opts.temperature ?? 0, topK = opts.topK ?? 0, topP = opts.topP ?? 1, minP = opts.minP ?? 0;
  if (!(Number.isFinite(temperature) && temperature >= 0)) throw new MlaError("BAD_ARGUMENT", `--temperature ${temperature} is not a sampling temperature`, "pass 0 for greedy decoding or a positive number (1 samples the model's own distribution)");
  // Greedy decoding takes the most likely token and draws nothing: these would be dropped unseen
  // (refuseInert's policy, as the CLI has it; serve takes them at temperature 0 and ignores them, as vLLM does).
  if (temperature === 0) refuseInert([["--top-k", opts.topK], ["--top-p", opts.topP], ["--min-p", opts.minP]], "--temperature T > 0", "settings of sampling; --temperature 0, the default, is greedy", "add e.g. --temperature 0.8");
  if (!SAMPLING_RANGES.topK(topK)) throw new MlaError("BAD_ARGUMENT", `--top-k ${topK} is not a token count`, "pass a whole number ≥ 1 to sample among that many most likely tokens, or 0 for all");
  if (!SAMPLING_RANGES.topP(topP)) throw new MlaError("BAD_ARGUMENT", `--top-p ${topP} is not a probability in (0, 1]`, "pass e.g. 0.9 to sample from the tokens holding 90% of the probability, or 1 for all");
  if (!SAMPLING_RANGES.minP(minP)) throw new MlaError("BAD_ARGUMENT", `--min-p ${minP} is not a fraction in [0, 1]`, "pass e.g. 0.05 to drop tokens under 5% as likely as the most likely one, or 0 for none");
  const { presencePenalty, frequencyPenalty, repetitionPenalty, logitBias } = checkPenalties(opts, vocabSize, PENALTY_FLAGS);
  return { temperature, topK, topP, ...(minP > 0 ? { minP } : {}), ...(presencePenalty !== undefined ? { presencePenalty } : {}), ...(frequencyPenalty !== undefined ? { frequencyPenalty } : {}), ...(repetitionPenalty !== undefined ? { repetitionPenalty } : {}), ...(logitBias ? { logitBias } : {}) };
}

/** An array (or typed array) of integers; a string (text, not token ids) would read as ids 0, 0, … and be continued. */
function isTokenIds(p: unknown): boolean {
  return (Array.isArray(p) || p instanceof Int32Array || p instanceof Uint32Array) && Array.prototype.every.call(p, (t: unknown) => Number.isInteger(t));
}

/** Prompt tokens per prefill call of generate (longer prompts take several, each on the cache the last filled). */
const PREFILL_CHUNK = 2048;

/**
 * Refuses a seed the generators cannot take: they take 32 bits, and prompt i draws from seed + i, so a
 * fraction, a negative, or a seed whose last prompt's passes 2^32 would alias another seed's draws.
 * The CLI asks before it loads the model.
 */
export function checkSeed(seed: number | undefined, prompts: number): void {
  if (seed === undefined) return;
  const most = 2 ** 32 - Math.max(prompts, 1);
  if (!(Number.isInteger(seed) && seed >= 0 && seed <= most)) throw new MlaError("BAD_ARGUMENT", `--seed ${seed} is not a whole number in ${prompts > 1 ? `[0, 2^32 − ${prompts}] (prompt i draws from seed + i, and there are ${prompts} prompts)` : "[0, 2^32)"}`, "pass e.g. --seed 0");
}

/** The decode loop of generateBatch, yielding the number of new tokens after each step (0 between a long prompt's prefill chunks). */
function* decodeSteps(model: LlamaModel, prompts: readonly (readonly number[])[], opts: GenerateOptions): Generator<number, GenerateBatchResult> {
  // A string or one prompt's ids unwrapped read as "no prompts" before, which sent the reader looking for an empty list.
  if (!Array.isArray(prompts)) throw new MlaError("BAD_ARGUMENT", `the prompts are ${typeof prompts === "object" && prompts !== null ? "an object" : describe(prompts)}, not an array of prompts`, "pass an array with one array of token ids per prompt: [tokenizer.encode(text, { addSpecialTokens: true })]");
  if (prompts.length === 0) throw new MlaError("BAD_ARGUMENT", "no prompts to continue", "pass at least one prompt (an array of token ids; --prompt on the command line)");
  // One prompt's ids given where the list of prompts goes: each id reads as a prompt.
  const unwrapped = prompts.every((p) => Number.isInteger(p));
  prompts.forEach((p, i) => {
    if (!isTokenIds(p))
      throw new MlaError("BAD_ARGUMENT", `${prompts.length > 1 ? `prompt ${i + 1}` : "the prompt"} is ${typeof p === "number" ? describe(p) : "not an array of token ids"}${typeof p === "number" ? ", not an array of token ids" : ""}`, unwrapped ? "the prompts are an array of prompts, each an array of token ids: pass [ids] for one prompt" : "encode the text first: tokenizer.encode(text, { addSpecialTokens: true })");
    if (p.length === 0) throw new MlaError("BAD_ARGUMENT", prompts.length > 1 ? `prompt ${i + 1} has no tokens` : "the prompt has no tokens", "pass a non-empty --prompt");
  });
  if (!Number.isInteger(opts.maxTokens) || opts.maxTokens < 0) throw new MlaError("BAD_ARGUMENT", `--max-tokens ${opts.maxTokens} is not a token count`, "pass a whole number ≥ 0");
  checkSeed(opts.seed, prompts.length);
  const sampling = checkSampling(opts, model.config.vocabSize);
  const c = model.config;
  const V = c.vocabSize;
  const stops = stopTokenIds(c);
  // Room for each whole sequence up front (it never moves while generating), up to the model's context
  // length: a larger --max-tokens that EOS may cut short grows the cache as it is used instead.
  const caches: DecodeCache[] = [];
  const rands = prompts.map((_, i) => seededRandom((opts.seed ?? 0) + i));
  const penalties = prompts.map((p) => Penalties.of(p, sampling));
  const outs: number[][] = prompts.map(() => []);
  let live = opts.maxTokens > 0 ? prompts.map((_, i) => i) : [];
  let session: DecodeSession | null = null;
  let steps = "";
  let decodeTokens = 0;
  let t0 = 0;
  // The caches are freed here, not left to the collector: on the GPU they are most of the memory
  // (one made before another's allocation failed included).
  try {
    const kvCache = opts.kvCache === "auto" ? defaultKvCache(model) : opts.kvCache;
    for (const p of prompts) caches.push(model.newCache(kvCache, { capacity: Math.min(p.length + opts.maxTokens, Math.max(p.length, c.maxPositions)) }));
    // Each prompt's last row gives its first new token. A long prompt is prefilled in chunks with a
    // yield between them: the GPU backend's intermediates of a cached forward are freed by the garbage
    // collector, whose callbacks run only between event-loop turns (generateBatchAsync gives one), so
    // a 16k-token prompt on a 32-layer 7B model held every layer's q, k, v and attention output at once.
    let lasts: FloatArray[] = [];
    // Greedy decoding without penalties takes each step's tokens on the device where the backend can
    // (T ids to the host instead of T·V logits); null: the rows come to the host and pickToken picks.
    let picked: Int32Array | null = null;
    const asIs = sampling.temperature <= 0 && penalties.every((p) => !p);
    for (const [i, p] of prompts.entries()) {
      let out: Tensor | null = null;
      for (let s = 0; s < p.length; s += PREFILL_CHUNK) {
        out?.dispose();
        out = model.prefill(Int32Array.from(p.slice(s, s + PREFILL_CHUNK)), caches[i]!);
        if (s + PREFILL_CHUNK < p.length) yield 0;
      }
      lasts.push(out!.toArray());
      out!.dispose();
    }
    t0 = performance.now();
    while (live.length) {
      const still: number[] = [], next: number[] = [];
      live.forEach((i, k) => {
        const t = picked ? picked[k]! : pickToken(penalties[i]?.apply(lasts[k]!) ?? lasts[k]!, sampling, rands[i]!);
        penalties[i]?.add(t);
        outs[i]!.push(t);
        opts.onToken?.(i, t);
        if (((opts.stopAtEos ?? true) && stops.has(t)) || outs[i]!.length >= opts.maxTokens) return;
        still.push(i);
        next.push(t);
      });
      yield live.length;
      if (!still.length) break;
      // A sequence left the batch: a session over the others (recorded again where steps are recorded).
      if (!session || still.length !== live.length) {
        session?.dispose();
        session = new DecodeSession(model, still.map((i) => caches[i]!));
      }
      live = still;
      const out = session.step(Int32Array.from(next));
      decodeTokens += live.length;
      steps = session.graphed ? "CUDA graph" : `op by op (${session.why ?? "not recorded yet"})`;
      picked = asIs ? greedyIds(model.backend, out) : null;
      if (!picked) {
        const logits = out.toArray();
        lasts = live.map((_, k) => logits.subarray(k * V, (k + 1) * V));
      }
    }
    return {
      sequences: prompts.map((_, i) => ({ ids: outs[i]!, cacheElements: caches[i]!.elements, cacheBytes: caches[i]!.bytes })),
      decodeTokens,
      decodeSeconds: (performance.now() - t0) / 1000,
      steps,
    };
  } finally {
    session?.dispose();
    for (const c of caches) c.dispose();
  }
}
