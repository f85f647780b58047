/**
 * Log-likelihood scoring with lm-evaluation-harness semantics: input = [BOS] + tokens(context +
 * continuation); the continuation's tokens are those past len(tokens(context)); the score is the
 * sum of their log-probabilities, and `greedy` says whether each was the argmax. A multiple-choice
 * item's continuations share their context: choiceLoglikelihoods prefills it once.
 */
import type { LlamaModel } from "../../model/llama.js";
import type { KvCacheDtype } from "../../model/kvQuant.js";
import type { TextTokenizer } from "../../io/tokenizer.js";
import { requireBos } from "../perplexity.js";

export interface Loglikelihood {
  logprob: number;
  greedy: boolean;
  tokens: number;
  /** Positions the scoring used: BOS + the context's and continuation's tokens, less the last. */
  positions: number;
}

/** `kvCache`: the keys/values as a decode cache of that type serves them (default f32: exact). */
export function loglikelihood(model: LlamaModel, tok: TextTokenizer, context: string, continuation: string, kvCache?: KvCacheDtype): Loglikelihood {
  const { all, input, c } = scoringInput(model, tok, tok.encode(context), context, continuation);
  const n = all.length;
  if (c === n) return { logprob: 0, greedy: true, tokens: 0, positions: n };
  // Rows c … n−1 predict the continuation tokens all[c … n−1]; earlier rows are computed for context only.
  // In the backend's step arena where it has one (CUDA): the forward's device tensors are freed here.
  const b = model.backend;
  const run = () => model.forward(input, undefined, kvCache ? { kvCache } : {}).toArray();
  const logits = b.arena ? b.arena(run) : run();
  const V = model.config.vocabSize;
  let logprob = 0;
  let greedy = true;
  for (let r = c; r < n; r++) {
    const o = r * V;
    let max = -Infinity;
    let arg = 0;
    for (let i = 0; i < V; i++)
      if (logits[o + i]! > max) {
        max = logits[o + i]!;
        arg = i;
      }
    let z = 0;
    for (let i = 0; i < V; i++) z += Math.exp(logits[o + i]! - max);
    logprob += logits[o + all[r]!]! - max - Math.log(z);
    if (arg !== all[r]) greedy = false;
  }
  return { logprob, greedy, tokens: n - c, positions: n };
}

/** One continuation's scoring inputs: [BOS] + tokens(context + continuation) less the last, and where its own tokens start. */
interface Scored {
  all: number[];
  input: Int32Array;
  /** Rows c … n − 1 predict the continuation's tokens all[c … n − 1]. */
  c: number;
}

function scoringInput(model: LlamaModel, tok: TextTokenizer, ctx: number[], context: string, continuation: string): Scored {
  const all = tok.encode(context + continuation);
  const input = new Int32Array(all.length);
  input[0] = requireBos(model.config.bosTokenId);
  input.set(all.slice(0, all.length - 1), 1);
  return { all, input, c: Math.min(ctx.length, all.length) };
}

/**
 * loglikelihood of each of `continuations` after `context`, the same numbers up to rounding: the rows
 * the choices' inputs share, up to the first continuation row, are prefilled once into a cache; each
 * choice prefills the rest on a copy of it, and the LM head runs over its continuation's rows alone
 * (where loglikelihood runs a whole forward per choice, the head over every row). `kvCache`: the caches'
 * type, so the choices score as a server with such a cache would (default f32: exact).
 */
export function choiceLoglikelihoods(model: LlamaModel, tok: TextTokenizer, context: string, continuations: readonly string[], kvCache: KvCacheDtype = "f32"): Loglikelihood[] {
  const ctx = tok.encode(context);
  const items = continuations.map((x) => scoringInput(model, tok, ctx, context, x));
  const live = items.filter((it) => it.c < it.all.length);
  // The shared rows: the inputs' common beginning, cut before the first row any choice scores.
  let p = Math.min(...live.map((it) => it.c));
  for (const it of live) {
    let k = 0;
    while (k < p && it.input[k] === live[0]!.input[k]) k++;
    p = k;
  }
  const shared = live.length ? model.newCache(kvCache, { capacity: p }) : null;
  try {
    if (shared && p > 0) model.fill(live[0]!.input.subarray(0, p), shared);
    return items.map((it) => {
      const n = it.all.length;
      if (it.c === n) return { logprob: 0, greedy: true, tokens: 0, positions: n };
      const cache = p > 0 ? shared!.clone({ capacity: n }) : model.newCache(kvCache, { capacity: n });
      try {
        const next = Int32Array.from({ length: n - p }, (_, i) => (p + i >= it.c ? it.all[p + i]! : -1));
        const { scored } = model.prefillScored(it.input.subarray(p), cache, next, 1);
        let logprob = 0, greedy = true;
        for (let r = it.c; r < n; r++) {
          const s = scored[r - p]!;
          logprob += s.logprob;
          // The most likely token, ties to the lower id, as the argmax above takes the first maximum.
          if (s.top[0]!.id !== it.all[r]) greedy = false;
        }
        return { logprob, greedy, tokens: n - it.c, positions: n };
      } finally {
        cache.dispose();
      }
    });
  } finally {
    shared?.dispose();
  }
}
