/** `eval`: perplexity of a model on a text under the DESIGN.md protocol, as one JSON-able record. */
import path from "node:path";
import { loadModel } from "../model/llama.js";
import { selectBackend, DeviceName } from "../backends/select.js";
import { kvElemsPerToken } from "../model/config.js";
import { perplexity, readText, tokenizeForEval } from "./perplexity.js";
import type { ProgressSink } from "../util/progress.js";
import type { Logger } from "../util/log.js";
import { silentLogger } from "../util/log.js";

export interface EvalOptions {
  text: string;
  ctx?: number;
  tokens?: number;
  device?: DeviceName;
  progress?: ProgressSink | null;
  logger?: Logger;
}

export interface EvalResult {
  model: string;
  dir: string;
  text: string;
  ctx: number;
  tokens: number;
  windows: number;
  nll: number;
  ppl: number;
  seconds: number;
  tokens_per_second: number;
  backend: string;
  kv_elems_per_token: number;
}

export async function evaluate(spec: string, opts: EvalOptions): Promise<EvalResult> {
  const log = opts.logger ?? silentLogger;
  const backend = selectBackend(opts.device ?? "auto", log);
  const t0 = performance.now();
  const text = readText(opts.text);
  const lm = loadModel(spec, { backend });
  const ids = tokenizeForEval(lm.tokenizer, text, opts.tokens);
  if (opts.tokens !== undefined && ids.length < opts.tokens) log.warn(`${opts.text} holds only ${ids.length} tokens, fewer than --tokens ${opts.tokens}: scoring all of them`);
  const r = await perplexity(lm.model, ids, { ctx: opts.ctx ?? 256, progress: opts.progress });
  return {
    model: spec,
    dir: lm.dir,
    text: path.resolve(opts.text),
    ctx: r.ctx,
    tokens: r.tokens,
    windows: r.windows,
    nll: r.nll,
    ppl: r.ppl,
    seconds: (performance.now() - t0) / 1000,
    tokens_per_second: r.tokens / r.seconds,
    backend: backend.name,
    kv_elems_per_token: kvElemsPerToken(lm.config),
  };
}
