/**
 * Choosing the next token from a row of logits: greedy, or sampled at a temperature from the top-k
 * tokens and the nucleus (top-p), each sequence with its own seeded generator so that what it draws
 * does not depend on the other sequences decoded beside it.
 */
import type { FloatArray, Tensor } from "../tensor/tensor.js";
import type { Backend } from "../tensor/backend.js";
import { MlaError } from "../errors.js";
import { describe } from "../util/optionTypes.js";
import type { PenaltyOptions } from "./penalties.js";

/** How the next token is chosen; the penalties (penalties.ts) adjust the logits before, where a caller applies them. */
export interface SamplingOptions extends PenaltyOptions {
  /** 0 = greedy (the other settings are then unused). */
  temperature: number;
  /** Sample among the k most likely tokens only; 0 = all. */
  topK?: number;
  /** Sample from the smallest set of most likely tokens whose probability reaches p; 1 = all. */
  topP?: number;
  /** Drop tokens less likely than this fraction of the most likely one (after temperature, before top-k and top-p, as vLLM); 0 = none. */
  minP?: number;
}

/**
 * Mulberry32: a small seeded generator of uniform numbers in [0, 1), so sampled output is reproducible.
 * It takes 32 bits: any other seed (a negative, a fraction, NaN, 2^32 and above) would be wrapped into
 * one of them and draw as another seed does (-1 as 2^32 − 1, NaN and 2^32 as 0), so it is refused.
 */
export function seededRandom(seed: number): () => number {
  if (!(Number.isInteger(seed) && seed >= 0 && seed < 2 ** 32)) throw new MlaError("BAD_ARGUMENT", `seededRandom(): the seed ${typeof seed === "number" ? seed : describe(seed)} is not a whole number in [0, 2^32)`, "pass e.g. seededRandom(0); the generator takes 32 bits");
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Greedy decoding's next tokens, one per row of logits [B, V], picked on the device where `backend`
 * can (B ids to the host instead of B·V logits), as argmax below picks them; null where it cannot, or
 * where a row holds no number (the caller then brings the rows home, and pickToken reports the row).
 */
export function greedyIds(backend: Backend, logits: Tensor): Int32Array | null {
  const ids = backend.rowArgmax?.(logits) ?? null;
  return ids && !ids.includes(-1) ? ids : null;
}

/** The first largest logit's id; NaN counts as −∞. Refuses logits with no finite or +∞ value (a diverged model). */
function argmax(logits: FloatArray): number {
  let best = -1, max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) (max = logits[i]!), (best = i);
  if (best < 0) throw new MlaError("UNSUPPORTED", `the model's logits for the next token hold no number (${logits.length ? `e.g. ${logits[0]}` : "none"})`, "the weights or the computation diverged: check the model with `mha2mla eval`");
  return best;
}

/**
 * The ids of `among` holding the most probability: as few as cover `want` of it, and at most `topK`
 * (0: no limit), in no particular order (a draw among them does not need one). `p` [V] are
 * unnormalized probabilities, none NaN.
 * Sorting all V ids for every token would cost more than a decode step at small models and a flat
 * distribution, so this is a quickselect: partition around a pivot value, and keep only the side where
 * the boundary lies, O(V) on average. Ids of equal probability at the boundary go in index order.
 */
function nucleus(p: Float64Array, among: Int32Array, topK: number, want: number): Int32Array {
  const limit = topK > 0 ? topK : among.length;
  let set: Int32Array = among;
  const kept: number[] = [];
  let mass = 0;
  // Only the side holding the boundary is copied out of each pass: the first pass over a flat tail then
  // copies the few ids above it, not the whole vocabulary.
  const take = (from: Int32Array, keep: (x: number) => boolean, n: number): Int32Array => {
    const out = new Int32Array(n);
    let k = 0;
    for (let j = 0; j < from.length; j++) if (keep(p[from[j]!]!)) out[k++] = from[j]!;
    return out;
  };
  while (set.length) {
    const a = p[set[0]!]!, b = p[set[set.length >> 1]!]!, c = p[set[set.length - 1]!]!;
    const pivot = Math.max(Math.min(a, b), Math.min(Math.max(a, b), c));
    let hi = 0, hiMass = 0, eq = 0;
    for (let j = 0; j < set.length; j++) {
      const v = p[set[j]!]!;
      if (v > pivot) (hi++, (hiMass += v));
      else if (v === pivot) eq++;
    }
    if (eq === 0) throw new Error("nucleus: the pivot is not a value of the set (NaN probabilities)");
    // The boundary lies among the ids above the pivot: look there only. (They are fewer than the set:
    // the pivot is one of its values.)
    if (kept.length + hi >= limit || mass + hiMass >= want) {
      set = take(set, (v) => v > pivot, hi);
      continue;
    }
    for (let j = 0; j < set.length; j++) if (p[set[j]!]! > pivot) kept.push(set[j]!);
    mass += hiMass;
    for (let j = 0; j < set.length; j++)
      if (p[set[j]!] === pivot) {
        kept.push(set[j]!);
        mass += pivot;
        if (kept.length >= limit || mass >= want) return Int32Array.from(kept);
      }
    set = take(set, (v) => v < pivot, set.length - hi - eq);
  }
  // Every id kept (a topP of 1 that rounding kept the sum from reaching).
  return Int32Array.from(kept);
}

/** The ranges of the sampling settings past temperature, shared by pickToken's check and generate's checkSampling (each in its own words). */
export const SAMPLING_RANGES = {
  topK: (v: unknown) => Number.isInteger(v) && (v as number) >= 0,
  topP: (v: unknown) => typeof v === "number" && v > 0 && v <= 1,
  minP: (v: unknown) => typeof v === "number" && v >= 0 && v <= 1,
};

/**
 * pickToken's arguments, for a script that calls it directly (generate and serve check the settings
 * first, in their flags' words): a NaN temperature or a top-p of 0 would otherwise weigh every id
 * zero and draw one silently.
 */
function checkPickArgs(logits: FloatArray, opts: SamplingOptions, rand: () => number): void {
  if (!(logits instanceof Float32Array || logits instanceof Float64Array) || logits.length === 0) throw new MlaError("BAD_ARGUMENT", `pickToken's logits are ${logits instanceof Float32Array || logits instanceof Float64Array ? "empty" : describe(logits)}`, "pass one row of logits, a Float32Array of the vocabulary's size");
  if (typeof opts !== "object" || opts === null) throw new MlaError("BAD_ARGUMENT", `pickToken's options are ${describe(opts)}`, "pass { temperature: 0 } for greedy decoding, or e.g. { temperature: 0.8, topP: 0.9 }");
  const { temperature, topK = 0, topP = 1, minP = 0 } = opts;
  const bad = !(typeof temperature === "number" && temperature >= 0 && temperature <= Infinity) ? `temperature ${describe(temperature)} (a number ≥ 0; 0 is greedy)`
    : !SAMPLING_RANGES.topK(topK) ? `topK ${describe(topK)} (a whole number ≥ 0; 0 keeps all)`
    : !SAMPLING_RANGES.topP(topP) ? `topP ${describe(topP)} (in (0, 1]; 1 keeps all)`
    : !SAMPLING_RANGES.minP(minP) ? `minP ${describe(minP)} (in [0, 1]; 0 keeps all)` : null;
  if (bad) throw new MlaError("BAD_ARGUMENT", `pickToken's ${bad}`, "pass e.g. { temperature: 0.8, topP: 0.9 } (generate() and serve take the same settings and check them in their own words)");
  if (typeof rand !== "function") throw new MlaError("BAD_ARGUMENT", `pickToken's rand is ${describe(rand)}, not a function`, "pass seededRandom(seed), or Math.random");
}

/**
 * The next token from `logits` [V]: the most likely at temperature 0, else a draw from
 * softmax(logits / temperature) restricted to the ids at least min-p as likely as the most likely,
 * then to the top-k ids and the nucleus, renormalized.
 */
export function pickToken(logits: FloatArray, opts: SamplingOptions, rand: () => number): number {
  checkPickArgs(logits, opts, rand);
  const best = argmax(logits);
  const max = logits[best]!;
  if (opts.temperature <= 0 || max === Infinity) return best;
  const topK = opts.topK ?? 0, topP = opts.topP ?? 1, minP = opts.minP ?? 0;
  const p = new Float64Array(logits.length);
  let sum = 0;
  // NaN logits weigh nothing (exp of NaN would poison every sum). The most likely id weighs 1, so
  // min-p drops the ids below minP itself.
  for (let i = 0; i < logits.length; i++) {
    const w = Math.exp((logits[i]! - max) / opts.temperature) || 0;
    sum += p[i] = w < minP ? 0 : w;
  }
  if (topK === 0 && topP >= 1) return draw(p, null, sum, rand);
  // As vLLM and HF apply them: the top k first (ids tied with the k-th kept too), then the nucleus of
  // what they hold, renormalized.
  let ids: Int32Array | null = null, mass = sum;
  if (topK > 0 && topK < p.length) {
    const top = nucleus(p, allIds(p.length), topK, Infinity);
    let kth = Infinity;
    for (const i of top) kth = Math.min(kth, p[i]!);
    ids = allIds(p.length).filter((i) => p[i]! >= kth);
    mass = 0;
    for (const i of ids) mass += p[i]!;
  }
  if (topP < 1) {
    ids = nucleus(p, ids ?? allIds(p.length), 0, topP * mass);
    mass = 0;
    for (const i of ids) mass += p[i]!;
  }
  return draw(p, ids, mass, rand);
}

function allIds(n: number): Int32Array {
  const ids = new Int32Array(n);
  for (let i = 0; i < n; i++) ids[i] = i;
  return ids;
}

/** A draw among `ids` (null: all) in proportion to p, whose sum over them is `mass`. */
function draw(p: Float64Array, ids: Int32Array | null, mass: number, rand: () => number): number {
  let r = rand() * mass;
  const n = ids ? ids.length : p.length;
  for (let j = 0; j < n; j++) {
    const i = ids ? ids[j]! : j;
    if ((r -= p[i]!) <= 0 && p[i]! > 0) return i;
  }
  // Rounding left r above 0: the last id with any weight.
  for (let j = n - 1; j >= 0; j--) if (p[ids ? ids[j]! : j]! > 0) return ids ? ids[j]! : j;
  return ids ? ids[0]! : 0;
}

/** A chosen token's log-probability and the `top` most likely tokens' (most likely first). */
export interface TokenLogprobs {
  logprob: number;
  top: { id: number; logprob: number }[];
}

/**
 * Log-probabilities under the model's own distribution, softmax(logits) before temperature, top-k or
 * top-p (as vLLM reports them by default): of token `id`, and of the `top` most likely tokens, ties
 * broken by the lower id. `logits` [V].
 */
export function tokenLogprobs(logits: FloatArray, id: number, top: number): TokenLogprobs {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i]! - max);
  return withTop(logits, id, top, max + Math.log(sum));
}

/**
 * tokenLogprobs where the cross-entropy of `id` (−log softmax, e.g. from Backend.crossEntropy, which
 * a native backend computes faster than this thread) is known: the log-normalizer is then logits[id] +
 * loss, and the alternatives take one pass without an exp.
 */
export function tokenLogprobsFromLoss(logits: FloatArray, id: number, top: number, loss: number): TokenLogprobs {
  return withTop(logits, id, top, logits[id]! + loss);
}

/** The log-probabilities of `id` and of the `top` largest logits, given the log-normalizer `norm`. */
function withTop(logits: FloatArray, id: number, top: number, norm: number): TokenLogprobs {
  // The `top` largest by insertion into a short sorted list: top ≤ 20 against a vocabulary of 32k–128k.
  const best: number[] = [];
  if (top > 0)
    for (let i = 0; i < logits.length; i++) {
      const x = logits[i]!;
      if (best.length === top && !(x > logits[best[top - 1]!]!)) continue;
      let at = best.length;
      while (at > 0 && x > logits[best[at - 1]!]!) at--;
      best.splice(at, 0, i);
      if (best.length > top) best.pop();
    }
  return { logprob: logits[id]! - norm, top: best.map((i) => ({ id: i, logprob: logits[i]! - norm })) };
}
