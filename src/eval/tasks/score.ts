/**
 * Log-likelihood scoring with lm-evaluation-harness semantics: input = [BOS] + tokens(context +
 * continuation); the continuation's tokens are those past len(tokens(context)); the score is the
 * sum of their log-probabilities, and `greedy` says whether each was the argmax.
 */
import type { LlamaModel } from "../../model/llama.js";
import type { TextTokenizer } from "../../io/tokenizer.js";

export interface Loglikelihood {
  logprob: number;
  greedy: boolean;
  tokens: number;
}

export function loglikelihood(model: LlamaModel, tok: TextTokenizer, context: string, continuation: string): Loglikelihood {
  const ctx = tok.encode(context);
  const all = tok.encode(context + continuation);
  const n = all.length;
  const c = Math.min(ctx.length, n);
  if (c === n) return { logprob: 0, greedy: true, tokens: 0 };
  const input = new Int32Array(n);
  input[0] = model.config.bosTokenId ?? 1;
  input.set(all.slice(0, n - 1), 1);
  // Rows c … n−1 predict the continuation tokens all[c … n−1]; earlier rows are computed for context only.
  // In the backend's step arena where it has one (CUDA): the forward's device tensors are freed here.
  const b = model.backend;
  const run = () => model.forward(input).toArray();
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
  return { logprob, greedy, tokens: n - c };
}
