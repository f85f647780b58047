/** Text generation with the KV cache: prefill the prompt once, then one token per step. */
import { MlaError } from "../errors.js";
import type { LlamaModel } from "./llama.js";
import { DecodeSession } from "./decodeSession.js";
import type { FloatArray } from "../tensor/tensor.js";
import type { KvCacheDtype } from "./kvQuant.js";

export interface GenerateOptions {
  maxTokens: number;
  /** 0 = greedy. */
  temperature?: number;
  seed?: number;
  /** Stop at the model's EOS token (default true). */
  stopAtEos?: boolean;
  /** How the decode cache stores keys/values or latents (default f32). */
  kvCache?: KvCacheDtype;
}

export interface GenerateResult {
  ids: number[];
  cacheElements: number;
  /** Bytes the cache takes as its dtype (scales included). */
  cacheBytes: number;
}

/** Mulberry32: a small seeded generator so sampled output is reproducible. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function pick(logits: FloatArray, temperature: number, rand: () => number): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
  if (temperature <= 0) return best;
  const max = logits[best]!;
  const p = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += p[i] = Math.exp((logits[i]! - max) / temperature);
  let r = rand() * sum;
  for (let i = 0; i < p.length; i++) if ((r -= p[i]!) <= 0) return i;
  return p.length - 1;
}

/**
 * The decode cache a model serves with by default: bf16 where its linear weights are held in bf16
 * (a bf16 checkpoint on the GPU: what HF transformers stores for such a model, half the bytes, and
 * on CUDA the fused latent-attention kernel for MLA), float32 elsewhere (exact, as evaluation computes).
 */
export function defaultKvCache(model: LlamaModel): KvCacheDtype {
  return model.bf16Weights ? "bf16" : "f32";
}

/** Continues `prompt` (token ids, BOS included if wanted) by up to maxTokens tokens. */
export function generate(model: LlamaModel, prompt: readonly number[], opts: GenerateOptions): GenerateResult {
  if (prompt.length === 0) throw new MlaError("BAD_ARGUMENT", "the prompt has no tokens", "pass a non-empty --prompt");
  if (!Number.isInteger(opts.maxTokens) || opts.maxTokens < 0) throw new MlaError("BAD_ARGUMENT", `--max-tokens ${opts.maxTokens} is not a token count`, "pass a whole number ≥ 0");
  const c = model.config;
  // Room for the whole sequence up front (it never moves while generating), up to the model's context
  // length: a larger --max-tokens that EOS may cut short grows the cache as it is used instead.
  const cache = model.newCache(opts.kvCache, { capacity: Math.min(prompt.length + opts.maxTokens, Math.max(prompt.length, c.maxPositions)) });
  const rand = rng(opts.seed ?? 0);
  const V = c.vocabSize;
  const logits = model.forward(Int32Array.from(prompt), cache).toArray();
  let last = logits.subarray(logits.length - V);
  const out: number[] = [];
  // Steps after the prompt replay one recorded step where the backend can (DecodeSession).
  const session = new DecodeSession(model, [cache]);
  try {
    for (let i = 0; i < opts.maxTokens; i++) {
      const next = pick(last, opts.temperature ?? 0, rand);
      out.push(next);
      if ((opts.stopAtEos ?? true) && next === c.eosTokenId) break;
      if (i + 1 === opts.maxTokens) break;
      last = session.step(Int32Array.of(next)).toArray();
    }
  } finally {
    session.dispose();
  }
  return { ids: out, cacheElements: cache.elements, cacheBytes: cache.bytes };
}
