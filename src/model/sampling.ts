/**
 * Choosing the next token from a row of logits: greedy, or sampled at a temperature from the top-k
 * tokens and the nucleus (top-p), each sequence with its own seeded generator so that what it draws
 * does not depend on the other sequences decoded beside it.
 */
import type { FloatArray } from "../tensor/tensor.js";

export interface SamplingOptions {
  /** 0 = greedy (the other settings are then unused). */
  temperature: number;
  /** Sample among the k most likely tokens only; 0 = all. */
  topK?: number;
  /** Sample from the smallest set of most likely tokens whose probability reaches p; 1 = all. */
  topP?: number;
}

/** Mulberry32: a small seeded generator of uniform numbers in [0, 1), so sampled output is reproducible. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function argmax(logits: FloatArray): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
  return best;
}

/**
 * The ids holding the most probability: as few as cover `want` of it, and at most `topK` (0: no limit),
 * in no particular order (a draw among them does not need one). `p` [V] are unnormalized probabilities.
 * Sorting all V ids for every token would cost more than a decode step at small models and a flat
 * distribution, so this is a quickselect: partition around a pivot value, and keep only the side where
 * the boundary lies, O(V) on average. Ids of equal probability at the boundary go in index order.
 */
function nucleus(p: Float64Array, topK: number, want: number): Int32Array {
  const limit = topK > 0 ? topK : p.length;
  let set: Int32Array = new Int32Array(p.length);
  for (let i = 0; i < set.length; i++) set[i] = i;
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

/**
 * The next token from `logits` [V]: the most likely at temperature 0, else a draw from
 * softmax(logits / temperature) restricted to the top-k ids and the nucleus, renormalized.
 */
export function pickToken(logits: FloatArray, opts: SamplingOptions, rand: () => number): number {
  const best = argmax(logits);
  if (opts.temperature <= 0) return best;
  const topK = opts.topK ?? 0, topP = opts.topP ?? 1;
  const max = logits[best]!;
  const p = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += p[i] = Math.exp((logits[i]! - max) / opts.temperature);
  if (topK === 0 && topP >= 1) {
    let r = rand() * sum;
    for (let i = 0; i < p.length; i++) if ((r -= p[i]!) <= 0) return i;
    return p.length - 1;
  }
  const ids = nucleus(p, topK, topP * sum);
  let kept = 0;
  for (const i of ids) kept += p[i]!;
  let r = rand() * kept;
  for (const i of ids) if ((r -= p[i]!) <= 0) return i;
  return ids[ids.length - 1]!;
}
