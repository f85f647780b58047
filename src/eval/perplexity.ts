/**
 * Perplexity protocol (DESIGN.md): tokenize the whole text without special tokens, keep the first N
 * tokens, score windows of [BOS] + the next ctx−1 tokens (stride ctx−1), so every kept token is
 * predicted exactly once; mean NLL in nats/token and ppl = exp(NLL).
 */
import { MlaError, ioError } from "../errors.js";
import type { LlamaModel } from "../model/llama.js";
import { encodePrefix, TextTokenizer } from "../io/tokenizer.js";
import { readTextFile } from "../io/text.js";
import { Progress, ProgressSink } from "../util/progress.js";

export interface PerplexityResult {
  nll: number;
  ppl: number;
  /** Tokens scored (the first N of the text, or all of them if the text is shorter). */
  tokens: number;
  windows: number;
  ctx: number;
  seconds: number;
}

export function readText(file: string): string {
  let text: string;
  try {
    text = readTextFile(file);
  } catch (e) {
    throw ioError("cannot read text", file, e);
  }
  if (text.length === 0) throw new MlaError("BAD_TEXT", `text file ${file} is empty`, "pass a UTF-8 text file with some content");
  return text;
}

/** The first `maxTokens` token ids of `text` (all when maxTokens is undefined). */
export function tokenizeForEval(tokenizer: TextTokenizer, text: string, maxTokens?: number): Int32Array {
  return Int32Array.from(maxTokens === undefined ? tokenizer.encode(text, { addSpecialTokens: false }) : encodePrefix(tokenizer, text, maxTokens));
}

export async function perplexity(model: LlamaModel, ids: Int32Array, opts: { ctx: number; progress?: ProgressSink | null }): Promise<PerplexityResult> {
  const { ctx } = opts;
  const bos = model.config.bosTokenId;
  if (bos === null) throw new MlaError("BAD_CONFIG", "the model's config has no bos_token_id", "the perplexity protocol starts every window with BOS; set bos_token_id in config.json");
  if (!Number.isInteger(ctx) || ctx < 2) throw new MlaError("BAD_ARGUMENT", `--ctx ${ctx} is too small`, "use at least 2 (BOS + one token)");
  if (ids.length === 0) throw new MlaError("BAD_TEXT", "the text has no tokens", "pass a non-empty text");
  const stride = ctx - 1;
  const windows = Math.ceil(ids.length / stride);
  const progress = new Progress("eval", ids.length, "tok", opts.progress === undefined ? process.stderr : opts.progress);
  const t0 = performance.now();
  let sum = 0;
  for (let w = 0; w < windows; w++) {
    const chunk = ids.subarray(w * stride, Math.min(ids.length, (w + 1) * stride));
    const input = new Int32Array(chunk.length + 1);
    input[0] = bos;
    input.set(chunk, 1);
    // Logits at position j predict input[j+1] = chunk[j]; the last position predicts nothing kept.
    const logits = model.forward(input.subarray(0, chunk.length));
    const nll = model.backend.crossEntropy(logits, chunk);
    for (const x of nll) sum += x;
    logits.dispose();
    progress.tick(chunk.length);
    // Yield so that SIGINT/SIGTERM handlers can run during long evaluations.
    await new Promise((r) => setImmediate(r));
  }
  const nll = sum / ids.length;
  return { nll, ppl: Math.exp(nll), tokens: ids.length, windows, ctx, seconds: (performance.now() - t0) / 1000 };
}
