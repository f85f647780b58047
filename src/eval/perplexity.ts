/**
 * Perplexity protocol (DESIGN.md): tokenize the whole text without special tokens, keep the first N
 * tokens, score windows of [BOS] + the next ctx−1 tokens (stride ctx−1), so every kept token is
 * predicted exactly once; mean NLL in nats/token and ppl = exp(NLL).
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError, ioError } from "../errors.js";
import type { LlamaModel } from "../model/llama.js";
import { checkKvCacheDtype, type KvCacheDtype } from "../model/kvQuant.js";
import { checkOptionTypes, type OptionKinds } from "../util/optionTypes.js";
import { encodePrefix, TextTokenizer } from "../io/tokenizer.js";
import { readTextFile, sniffTextFile } from "../io/text.js";
import { Progress, ProgressSink } from "../util/progress.js";
import { nextTurn } from "../util/abort.js";

export interface PerplexityResult {
  nll: number;
  ppl: number;
  /** Tokens scored (the first N of the text, or all of them if the text is shorter). */
  tokens: number;
  windows: number;
  ctx: number;
  seconds: number;
  /**
   * Tokens scored and seconds taken after the first forward, which alone pays one-time costs (kernels
   * loaded on first use, library handles, the arena's first growth); null with a single forward.
   * Throughput peers time after a warm-up forward, so this is the figure to set beside theirs.
   */
  afterFirst: { tokens: number; seconds: number } | null;
}

/** Refuses a missing path, a folder or an empty file, from a stat. */
function checkTextStat(file: string, flag?: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (e) {
    throw ioError(`cannot read ${flag ?? "text"}`, file, e);
  }
  if (st.isDirectory()) throw new MlaError("BAD_ARGUMENT", `${flag ? `${flag} ` : ""}${file} is a folder, not a text file`, "pass a UTF-8 text file");
  // A pipe (`cat t.txt | … --text /dev/stdin`) has no size, and the text is read more than once (checked first, then scored).
  if (!st.isFile()) throw new MlaError("BAD_ARGUMENT", `${file} is ${st.isFIFO() || st.isSocket() ? "a pipe" : "not a regular file"}, not a text file`, `save the text to a file first (e.g. \`… > text.txt\`) and pass that file`);
  if (st.size === 0) throw new MlaError("BAD_TEXT", `text file ${file} is empty`, "pass a UTF-8 text file with some content");
}

/**
 * Refuses what readText would, reading only the file's first few KB: a missing path, a folder, an empty
 * file, binary data; `flag` (e.g. --eval-text) names the option that gave it.
 */
export function checkTextFile(file: string, flag?: string): void {
  checkTextStat(file, flag);
  try {
    sniffTextFile(file);
  } catch (e) {
    throw ioError(`cannot read ${flag ?? "text"}`, file, e);
  }
}

/**
 * The BOS id that starts every perplexity and calibration window; a model without one is refused (any
 * id taken instead would be some other token), naming the model folder `dir` where the caller knows it.
 */
export function requireBos(bos: number | null, dir?: string): number {
  if (bos === null) throw new MlaError("BAD_CONFIG", `${dir ? path.join(dir, "config.json") : "the model's config.json"} has no bos_token_id`, "scoring (perplexity windows, task items), calibration and training sequences start with BOS: set bos_token_id in config.json to the tokenizer's BOS id (1 for Llama 2's)");
  return bos;
}

export function readText(file: string): string {
  checkTextStat(file);
  try {
    // readTextFile refuses binary data from the bytes it read: no second look at the file's start.
    return readTextFile(file);
  } catch (e) {
    throw ioError("cannot read text", file, e);
  }
}

/** The first `maxTokens` token ids of `text` (all when maxTokens is undefined). */
export function tokenizeForEval(tokenizer: TextTokenizer, text: string, maxTokens?: number): Int32Array {
  return Int32Array.from(maxTokens === undefined ? tokenizer.encode(text, { addSpecialTokens: false }) : encodePrefix(tokenizer, text, maxTokens));
}

export interface PerplexityOptions {
  ctx: number;
  progress?: ProgressSink | null;
  /** What the progress lines call the scoring (default "eval"; finetune's "validation"). */
  label?: string;
  /** Aborting it stops the scoring at the next window (MlaError INTERRUPTED). */
  signal?: AbortSignal;
  /** Polled after each window: true stops the scoring as an abort does (finetune's first validation). */
  shouldStop?: () => boolean;
  /**
   * Windows scored per forward (full-length windows stacked as one micro-batch). Default: on a
   * backend with batched attention (CUDA) as many as keep the forward's activations within an eighth
   * of the free device memory, at most 16; elsewhere 1.
   */
  batch?: number;
  /**
   * Attention GEMM inputs in bf16 (float32 accumulation). Default: when the model's linear weights
   * are held in bf16 (a bf16 checkpoint on CUDA), as HF transformers runs such a model.
   */
  bf16?: boolean;
  /** Attend to keys/values as a decode cache of this type returns them (kvQuant.ts). Default f32. */
  kvCache?: KvCacheDtype;
}

/**
 * Windows per forward: 1 without batched attention; else as many as keep a forward's activations
 * (a generous float32 count per token: the residual stream and its normed copies, q/k/v and the
 * attention output, the MLP's three hidden-width tensors) within an eighth of the free device memory,
 * at most 16. The LM head runs in row chunks (LlamaModel.tokenLosses), so the vocabulary does not
 * bound it. A forward's host work is paid per forward, so fewer, larger forwards (HF's evaluation
 * peer runs 8 windows at once; the old bound, float32 logits within 2 GiB, gave 5 windows of 2k
 * tokens at smollm's 49k vocabulary) keep a small model's evaluation from being host-bound.
 */
function defaultBatch(model: LlamaModel, stride: number): number {
  const b = model.backend;
  if (!b.batchedAttention) return 1;
  const c = model.config;
  const windowBytes = 4 * stride * (12 * c.hiddenSize + 4 * c.heads * c.headDim + 3 * c.intermediateSize);
  const budget = (b.memory?.().free ?? 2 ** 34) / 8;
  return Math.max(1, Math.min(16, Math.floor(budget / windowBytes)));
}

/** Refuses a window length below BOS + one token; `flag` is the option it came from (--eval-ctx where another command evaluates). */
export function checkCtx(ctx: number, flag = "--ctx"): void {
  if (!Number.isInteger(ctx)) throw new MlaError("BAD_ARGUMENT", `${flag} ${ctx} is not a whole number of tokens`, "use a whole number ≥ 2 (BOS + one token), e.g. 256");
  if (ctx < 2) throw new MlaError("BAD_ARGUMENT", `${flag} ${ctx} is too small`, "use at least 2 (BOS + one token)");
}

const PERPLEXITY_KINDS: OptionKinds<PerplexityOptions> = { ctx: "number", progress: "object", label: "string", signal: "object", shouldStop: "function", batch: "number", bf16: "boolean", kvCache: "string" };

/**
 * `ids` as the Int32Array the forward reads, every one a token of the vocabulary. From a script, a
 * plain array crashed on `subarray`, a Float32Array's bytes reached the native cross-entropy as
 * int32 targets (a segmentation fault), and an id past the vocabulary scored NaN on the reference backend.
 */
function checkTokenIds(ids: unknown, vocabSize: number): Int32Array {
  const arrayLike = Array.isArray(ids) || ids instanceof Int32Array || ids instanceof Uint32Array || ids instanceof Uint16Array;
  if (!arrayLike) throw new MlaError("BAD_ARGUMENT", `perplexity(): ids is ${ids === null ? "null" : (ids as object)?.constructor?.name ?? typeof ids}, not token ids`, "pass an Int32Array (or an array) of token ids, e.g. tokenizeForEval(tokenizer, text)");
  const list = ids as ArrayLike<unknown>;
  for (let i = 0; i < list.length; i++) {
    const t = list[i];
    if (!(Number.isInteger(t) && (t as number) >= 0 && (t as number) < vocabSize))
      throw new MlaError("BAD_ARGUMENT", `perplexity(): ids[${i}] is ${String(t)}, not a token id of this model's vocabulary of ${vocabSize}`, "tokenize the text with the model's own tokenizer (tokenizeForEval)");
  }
  return ids instanceof Int32Array ? ids : Int32Array.from(list as ArrayLike<number>);
}

export async function perplexity(model: LlamaModel, tokenIds: Int32Array, opts: PerplexityOptions): Promise<PerplexityResult> {
  // From a script: a misspelt name or an unknown cache type ("fp8") scored with every key zeroed.
  // ctx has no default: left out, it was refused as "--ctx undefined is not a whole number of tokens".
  checkOptionTypes("perplexity()", opts, PERPLEXITY_KINDS, ["ctx"]);
  if (opts.kvCache !== undefined) checkKvCacheDtype(opts.kvCache);
  const { ctx } = opts;
  const bos = requireBos(model.config.bosTokenId);
  checkCtx(ctx);
  const ids = checkTokenIds(tokenIds, model.config.vocabSize);
  if (ids.length === 0) throw new MlaError("BAD_TEXT", "the text has no tokens", "pass a non-empty text");
  const stride = ctx - 1;
  const windows = Math.ceil(ids.length / stride);
  const batch = opts.batch ?? defaultBatch(model, stride);
  if (!Number.isInteger(batch) || batch < 1) throw new MlaError("BAD_ARGUMENT", `--batch ${batch}: the windows scored per forward must be a positive integer`, "pass e.g. --batch 8, or leave it out for the default");
  const bf16 = opts.bf16 ?? model.bf16Weights;
  const progress = new Progress(opts.label ?? "eval", ids.length, "tok", opts.progress);
  const t0 = performance.now();
  let sum = 0;
  let first: { t: number; tokens: number } | null = null;
  for (let w = 0; w < windows; ) {
    // Window w scores chunk w = ids[w·stride, (w+1)·stride) from [BOS] + the chunk without its last
    // token (logits at position j predict chunk[j]); only full-length windows share a forward.
    const n = Math.min(batch, Math.floor((ids.length - w * stride) / stride)) || 1;
    const targets = ids.subarray(w * stride, Math.min(ids.length, (w + n) * stride));
    const len = n === 1 ? targets.length : stride;
    const input = new Int32Array(n * len);
    for (let i = 0; i < n; i++) {
      input[i * len] = bos;
      input.set(targets.subarray(i * len, (i + 1) * len - 1), i * len + 1);
    }
    // In a step arena where the backend has one (CUDA): every activation of this forward is freed when
    // it returns, instead of waiting for the garbage collector (forced collections every ~1/8 of the
    // device's memory allocated outside arenas). Nothing the forward allocates outlives it here: the
    // weights are wrapped, not copied, and there is no decode cache. Nothing writes an activation after
    // making it, so each is rounded to bf16 once for all the products that read it.
    const score = () => model.tokenLosses(input, targets, { sequences: n, bf16, kvCache: opts.kvCache });
    const b = model.backend;
    for (const x of b.arena ? b.arena(score, { bf16Inputs: bf16 }) : score()) sum += x;
    // A NaN or Inf weight makes every later window's loss NaN too: a perplexity of NaN is no result.
    if (!Number.isFinite(sum)) throw new MlaError("BAD_CHECKPOINT", `the model's loss is ${sum} on the window at token ${w * stride}: its weights give non-finite logits`, "check the checkpoint for NaN or Inf values (a diverged fine-tune, a damaged file); convert or fine-tune it again");
    progress.tick(targets.length);
    // The losses above were read back, so the device has finished this forward.
    first ??= { t: performance.now(), tokens: targets.length };
    w += n;
    // Yield so that SIGINT/SIGTERM handlers (and an abort) can run during long evaluations.
    await nextTurn(opts.signal, opts.shouldStop);
  }
  const nll = sum / ids.length;
  const t1 = performance.now();
  const afterFirst = first && first.tokens < ids.length ? { tokens: ids.length - first.tokens, seconds: (t1 - first.t) / 1000 } : null;
  return { nll, ppl: Math.exp(nll), tokens: ids.length, windows, ctx, seconds: (t1 - t0) / 1000, afterFirst };
}
