/**
 * `eval`: perplexity on a text (DESIGN.md protocol) and/or benchmark tasks, as one JSON record with
 * the model's identity (path, config hash, conversion settings), size and KV-cache accounting.
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError, refuseInert } from "../errors.js";
import type { WeightStorage } from "../model/weights.js";
import { loadModel } from "../model/llama.js";
import { selectBackend, DeviceName } from "../backends/select.js";
import { checkCtx, checkTextFile, perplexity, requireBos, tokenizeForEval } from "./perplexity.js";
import { readTextOrJsonl } from "../ropeSelect/calibrate.js";
import { checkIdsInVocab, loadTokenizer, type TextTokenizer } from "../io/tokenizer.js";
import { encodeLong } from "../io/encodeLong.js";
import { inspectModel } from "./inspect.js";
import { packageRoot } from "../io/modelDir.js";
import { checkTaskIds, checkTaskName, defaultDataDir, loadTaskItems, runTask, type TaskItems, TaskName } from "./tasks/index.js";
import type { ProgressSink } from "../util/progress.js";
import type { Logger } from "../util/log.js";
import { silentLogger } from "../util/log.js";
import { checkKvCacheDtype, type KvCacheDtype } from "../model/kvQuant.js";
import { checkOptionTypes, type OptionKinds } from "../util/optionTypes.js";
import { throwIfAborted } from "../util/abort.js";
import { kvBytesPerToken, pastPositionsWarning, type ModelConfig } from "../model/config.js";
import { countOf, requireCount } from "../util/counts.js";
import { scoredBytes, textHash, tokenizerIdentity, type TokenizerIdentity } from "./identity.js";

/** The perplexity windows' length when none is given. */
const DEFAULT_CTX = 256;

/** The options the perplexity text, its token count and its window length came from, named in messages. */
export interface EvalFlagNames {
  text: string;
  tokens: string;
  ctx: string;
}
const EVAL_FLAGS: EvalFlagNames = { text: "--text", tokens: "--tokens", ctx: "--ctx" };
/** convert, export and pipeline score their --eval-text with these. */
export const EMBEDDED_EVAL_FLAGS: EvalFlagNames = { text: "--eval-text", tokens: "--eval-tokens", ctx: "--eval-ctx" };

export interface EvalOptions {
  text?: string;
  ctx?: number;
  tokens?: number;
  tasks?: TaskName[];
  dataDir?: string;
  limit?: number;
  /** "auto" (default): a bf16 checkpoint's linear weights stay bf16 where the backend can (CUDA); "f32" decodes them. */
  weights?: WeightStorage;
  device?: DeviceName;
  progress?: ProgressSink | null;
  logger?: Logger;
  /** A name for reports (default: the model argument). */
  label?: string;
  /** Score perplexity and the tasks as a decode cache of this type would serve the keys/values (MLA: rope keys and latents). */
  kvCache?: KvCacheDtype;
  /** Perplexity windows scored per forward (default: as many as fit, up to 16, where attention is batched; else 1). */
  batch?: number;
  /** Where text, tokens and ctx came from, for messages (default eval's --text, --tokens and --ctx). */
  flags?: EvalFlagNames;
  /** Aborting it stops the evaluation at the next window or task item (MlaError INTERRUPTED). */
  signal?: AbortSignal;
  /** The caller has warned already where the ctx passes the model's positions (checkEmbeddedEval did: convert and export evaluate twice). */
  pastPositionsWarned?: boolean;
}

const EVAL_KINDS: OptionKinds<EvalOptions> = {
  text: "string",
  ctx: "number",
  tokens: "number",
  tasks: "string[]",
  dataDir: "string",
  limit: "number",
  weights: "string",
  device: "string",
  progress: "object",
  logger: "object",
  label: "string",
  kvCache: "string",
  batch: "number",
  flags: "object",
  signal: "object",
  pastPositionsWarned: "boolean",
};

/** Warns where windows of `ctx` pass the model's `maxPositions`. */
function warnPastPositions(flags: EvalFlagNames, ctx: number, maxPositions: number, log: Logger): void {
  const past = pastPositionsWarning(flags.ctx, ctx, maxPositions, "windows past them score poorly");
  if (past) log.warn(past);
}

/** Another command's --eval-text, --eval-tokens and --eval-ctx, its logger and its stop signal. */
interface EmbeddedEvalSettings {
  evalText?: string;
  evalTokens?: number;
  evalCtx?: number;
  logger?: Logger;
  signal?: AbortSignal;
}

/** Another command's --eval-text, --eval-tokens and --eval-ctx as evaluate() options. */
export function embeddedEval(o: EmbeddedEvalSettings): EvalOptions {
  return { text: o.evalText, tokens: o.evalTokens, ctx: o.evalCtx, flags: EMBEDDED_EVAL_FLAGS };
}

/**
 * convert's, export's and pipeline's optional evaluation, checked before their work: nothing to check
 * without --eval-text, unless --eval-tokens or --eval-ctx was given (they do nothing without it).
 * `dir`, `config`: the model whose conversion is scored: its tokenizer and BOS, which the result
 * shares, must load, and the ids it gives for the text (those scored) must be inside its vocabulary
 * (found by the evaluation's embedding, the conversion had been done for nothing). An --eval-ctx past
 * the source's positions is warned about here, once (a dry run too), through `o.logger`: the
 * caller's evaluations then pass pastPositionsWarned, not to repeat it.
 */
export async function checkEmbeddedEval(o: EmbeddedEvalSettings, dir: string, config: Pick<ModelConfig, "bosTokenId" | "vocabSize" | "maxPositions">): Promise<void> {
  if (o.evalText === undefined && o.evalTokens === undefined && o.evalCtx === undefined) return;
  checkEvalOptions(embeddedEval(o));
  const tokenizer = loadTokenizer(dir);
  requireBos(config.bosTokenId);
  if (o.evalText === undefined) return;
  const log = o.logger ?? silentLogger;
  warnPastPositions(EMBEDDED_EVAL_FLAGS, o.evalCtx ?? DEFAULT_CTX, config.maxPositions, log);
  // Only a tokenizer with ids past the model's vocabulary can give one: any other's text is not tokenized twice.
  if (tokenizer.vocabSize <= config.vocabSize) return;
  const ids = await evalTokens(tokenizer, readTextOrJsonl(o.evalText), { ...embeddedEval(o), signal: o.signal }, log);
  checkIdsInVocab(ids, config.vocabSize, `${EMBEDDED_EVAL_FLAGS.text} ${o.evalText}`, dir);
}

export interface TaskScore {
  n: number;
  acc: number;
  acc_stderr: number;
  acc_norm?: number;
  acc_norm_stderr?: number;
  ppl?: number;
  /** SHA-256 (16 hex digits) of the items scored, as parsed: a report compares runs on the same items only. */
  items_hash?: string;
}

export interface EvalResult {
  model: string;
  label: string;
  dir: string;
  config_hash: string;
  attention: string;
  /** The mha2mla section of a converted model's config.json (null for MHA/GQA). */
  conversion: Record<string, unknown> | null;
  params: number;
  kv_elems_per_token: number;
  /**
   * KV-cache bytes per token in the checkpoint's dtype (as `inspect` gives it: 12288 for bf16
   * mha26m-debian), whatever cache the scoring used; kv_cache says which one that was, where --kv-cache
   * names one (without it, keys and values are attended to as the forward computes them, never stored).
   */
  kv_bytes_per_token: number;
  /** The cache type perplexity was scored with (--kv-cache) and its bytes per token, all layers, scales included. */
  kv_cache?: { dtype: KvCacheDtype; bytes_per_token: number };
  backend: string;
  seconds: number;
  /** The tokenizer the text was scored with (identity.ts): NLL and ppl over another one's tokens are not comparable. */
  tokenizer?: TokenizerIdentity;
  /** The perplexity text (absolute path). */
  text?: string;
  /** sha256 of the text as scored (UTF-8, newlines normalized), first 16 hex digits: the same file name may hold another text. */
  text_hash?: string;
  /** UTF-8 bytes of the text the scored tokens cover (absent where the decoded tokens do not spell the text's start). */
  text_bytes?: number;
  ctx?: number;
  tokens?: number;
  windows?: number;
  nll?: number;
  ppl?: number;
  /** nll × tokens / (ln 2 × text_bytes): comparable across tokenizers on the same bytes (absent with text_bytes). */
  bits_per_byte?: number;
  tokens_per_second?: number;
  /** Tokens per second after the first forward (see PerplexityResult.afterFirst); absent with one forward. */
  tokens_per_second_warm?: number;
  tasks?: Record<string, TaskScore>;
}

/**
 * What evaluate() would refuse of `opts` that needs no model, so a command with work to do first
 * (convert, export and pipeline evaluate last) refuses it before that work. Returns the task data
 * folder (null without tasks).
 */
export function checkEvalOptions(opts: EvalOptions): { dataDir: string | null; items: Map<TaskName, TaskItems> } {
  const flags = opts.flags ?? EVAL_FLAGS;
  opts.tasks?.forEach(checkTaskName);
  if (opts.kvCache !== undefined) checkKvCacheDtype(opts.kvCache);
  requireCount(flags.tokens, opts.tokens);
  requireCount("--limit", opts.limit);
  if (opts.batch !== undefined && !(Number.isInteger(opts.batch) && opts.batch >= 1))
    throw new MlaError("BAD_ARGUMENT", `--batch ${opts.batch}: the windows scored per forward must be a positive integer`, "pass e.g. --batch 8, or leave it out for the default");
  if (!opts.text) refuseInert([[flags.tokens, opts.tokens], [flags.ctx, opts.ctx], ["--batch", opts.batch]], `${flags.text} FILE`, "settings of the perplexity text");
  if (!opts.text && !opts.tasks?.length) throw new MlaError("BAD_ARGUMENT", "nothing to evaluate", `pass ${flags.text} FILE for perplexity and/or --tasks a,b for benchmarks`);
  if (opts.text) {
    checkTextFile(opts.text, flags.text);
    if (opts.ctx !== undefined) checkCtx(opts.ctx, flags.ctx);
  }
  if (!opts.tasks?.length) {
    refuseInert([["--limit", opts.limit], ["--data-dir", opts.dataDir]], "--tasks a,b", "settings of the benchmark tasks");
    return { dataDir: null, items: new Map() };
  }
  const dataDir = opts.dataDir ?? defaultDataDir(packageRoot());
  if (!dataDir || !fs.existsSync(dataDir))
    throw new MlaError("NOT_FOUND", opts.dataDir !== undefined ? `task data folder ${opts.dataDir} does not exist` : `no task data folder: without --data-dir the tasks are looked for in ${path.resolve(packageRoot(), "..", "shared", "data", "eval")}, which does not exist`, "pass --data-dir with ARC-*.test.json, piqa.test.json, hellaswag_val_full.txt.bz2, lambada_test.jsonl (or set MHA2MLA_EVAL_DATA)");
  // A task file given as the folder had been named as "DIR/ARC-Easy.test.json does not exist".
  if (!fs.statSync(dataDir).isDirectory()) throw new MlaError("BAD_ARGUMENT", `task data folder ${dataDir} is a file, not a folder`, `pass --data-dir the folder that holds the task files (ARC-*.test.json, piqa.test.json, hellaswag_val_full.txt.bz2, lambada_test.jsonl), e.g. ${path.dirname(path.resolve(dataDir))}`);
  // Every task's items, parsed before the first task is scored (a pipeline: before its conversion).
  const items = new Map<TaskName, TaskItems>();
  for (const t of opts.tasks) if (!items.has(t)) items.set(t, loadTaskItems(t, dataDir, opts.limit));
  return { dataDir, items };
}

/** Characters above which the whole text is tokenized by encodeLong (progress lines, Ctrl-C, worker threads, pieces). */
const LONG_EVAL_TEXT = 1_000_000;

/**
 * The ids evaluate scores: tokenizeForEval's. A long text scored whole goes through encodeLong (the same
 * ids): one encode of a 100 MB text printed nothing for minutes, ignored Ctrl-C and ran the heap out.
 */
export async function evalTokens(tokenizer: TextTokenizer, text: string, opts: EvalOptions, log: Logger): Promise<Int32Array> {
  if (opts.tokens !== undefined || text.length <= LONG_EVAL_TEXT) return tokenizeForEval(tokenizer, text, opts.tokens);
  return encodeLong(tokenizer, text, { logger: log, label: path.basename(opts.text ?? "the text"), shouldStop: () => opts.signal?.aborted ?? false });
}

export async function evaluate(spec: string, opts: EvalOptions): Promise<EvalResult> {
  checkOptionTypes("evaluate()", opts, EVAL_KINDS);
  throwIfAborted(opts.signal);
  const log = opts.logger ?? silentLogger;
  const { dataDir, items } = checkEvalOptions(opts);
  const flags = opts.flags ?? EVAL_FLAGS;
  const backend = selectBackend(opts.device ?? "auto", log);
  const t0 = performance.now();
  const text = opts.text ? readTextOrJsonl(opts.text) : null;
  const lm = loadModel(spec, { backend, weights: opts.weights });
  // The model goes back to the backend when the evaluation ends, however it ends (convert and pipeline
  // evaluate before and after in one process; on a GPU it would otherwise wait for the collector).
  try {
    // Task items start with BOS too: refused before the perplexity runs, not after it.
    if (opts.tasks?.length || text !== null) requireBos(lm.config.bosTokenId, lm.dir);
    // A task item's ids past the vocabulary too (the perplexity before them may take minutes).
    checkTaskIds(lm.tokenizer, { dataDir, items }, lm.config.vocabSize, lm.dir);
    const info = inspectModel(lm.dir);
    const rawConfig = fs.readFileSync(path.join(lm.dir, "config.json"), "utf8");
    const raw = JSON.parse(rawConfig) as Record<string, unknown> & { mha2mla?: Record<string, unknown> };
    const conversion = raw.mha2mla ?? (raw["model_type"] === "deepseek_v3" ? { format: "deepseek_v3", kv_lora_rank: raw["kv_lora_rank"], qk_rope_head_dim: raw["qk_rope_head_dim"] } : null);
    const result: EvalResult = {
      model: spec,
      label: opts.label ?? spec,
      dir: lm.dir,
      config_hash: textHash(rawConfig),
      attention: info.attention,
      conversion: conversion ? { ...conversion, selection: undefined } : null,
      params: info.params,
      kv_elems_per_token: info.kv_elems_per_token,
      kv_bytes_per_token: info.kv_bytes_per_token,
      ...(opts.kvCache ? { kv_cache: { dtype: opts.kvCache, bytes_per_token: kvBytesPerToken(lm.config, opts.kvCache) } } : {}),
      backend: backend.name,
      seconds: 0,
    };
    if (text !== null) {
      const ids = await evalTokens(lm.tokenizer, text, opts, log);
      // Named here: perplexity() knows only ids ("the text has no tokens" did not say which file).
      if (ids.length === 0) throw new MlaError("BAD_TEXT", `${opts.text}: the text to score has no tokens`, "pass a file with text in it");
      // The model's own tokenizer gave them: an id past the vocabulary is the folder's mismatch, not the caller's ids.
      checkIdsInVocab(ids, lm.config.vocabSize, opts.text!, lm.dir);
      const whole = opts.tokens === undefined || ids.length < opts.tokens;
      if (opts.tokens !== undefined && ids.length < opts.tokens) log.warn(`${opts.text} holds only ${ids.length} tokens, fewer than ${flags.tokens} ${opts.tokens}: scoring all of them`);
      const ctx = opts.ctx ?? DEFAULT_CTX;
      // A command that checked its evaluation up front (checkEmbeddedEval) has warned already.
      if (!opts.pastPositionsWarned) warnPastPositions(flags, ctx, lm.config.maxPositions, log);
      const r = await perplexity(lm.model, ids, { ctx, progress: opts.progress, kvCache: opts.kvCache, batch: opts.batch, signal: opts.signal });
      const bytes = scoredBytes(text, ids, lm.tokenizer, whole);
      Object.assign(result, {
        tokenizer: tokenizerIdentity(lm.dir, lm.tokenizer),
        text: path.resolve(opts.text!),
        text_hash: textHash(text),
        ...(bytes !== null ? { text_bytes: bytes } : {}),
        ctx: r.ctx,
        tokens: r.tokens,
        windows: r.windows,
        nll: r.nll,
        ppl: r.ppl,
        ...(bytes ? { bits_per_byte: (r.nll * r.tokens) / (Math.LN2 * bytes) } : {}),
        tokens_per_second: r.tokens / r.seconds,
      });
      if (r.afterFirst) result.tokens_per_second_warm = r.afterFirst.tokens / r.afterFirst.seconds;
    }
    if (opts.tasks?.length) {
      result.tasks = {};
      for (const [task, loaded] of items) {
        const r = await runTask(lm.model, lm.tokenizer, task, dataDir!, opts.limit, opts.progress, opts.signal, opts.kvCache, loaded);
        if (opts.limit !== undefined && r.n < opts.limit) log.warn(`${task}: its file holds ${countOf(r.n, "item")}, fewer than --limit ${opts.limit}: scored all of them`);
        if (r.pastPositions.items > 0) log.warn(`${task}: ${r.pastPositions.items} of its ${countOf(r.n, "item")} ran past the model's ${lm.config.maxPositions} positions (the longest ${r.pastPositions.longest} tokens), scored as they are; lm-eval cuts such items from the left, so their scores may differ`);
        result.tasks[task] = { n: r.n, ...(r.metrics as Omit<TaskScore, "n" | "items_hash">), items_hash: textHash(JSON.stringify(loaded.items)) };
      }
    }
    result.seconds = (performance.now() - t0) / 1000;
    return result;
  } finally {
    lm.model.dispose();
  }
}
