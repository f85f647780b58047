/**
 * Which RoPE frequency pairs each (layer, KV head) keeps. Pair i = dims i and i + Dh/2.
 * high: pairs 0…R−1 (fastest rotating); low: the last R; uniform: ⌊k·Dh/(2R)⌋ for k = 0…R−1;
 * 2-norm: the R pairs with the largest calibration score (ties to the lower index).
 */
import { MlaError } from "../errors.js";

export const ROPE_STRATEGIES = ["high", "low", "uniform", "2-norm"] as const;
export type RopeStrategy = (typeof ROPE_STRATEGIES)[number];

export function parseStrategy(s: string): RopeStrategy {
  if ((ROPE_STRATEGIES as readonly string[]).includes(s)) return s as RopeStrategy;
  throw new MlaError("BAD_ARGUMENT", `--rope-strategy ${s} is not known`, `use one of ${ROPE_STRATEGIES.join(", ")}`);
}

/** The paper's default: R = Dh/16, at least 1. */
export function defaultRopePairs(headDim: number): number {
  return Math.max(1, Math.floor(headDim / 16));
}

/** Pairs kept by a position-independent strategy, ascending. */
export function fixedPairs(strategy: "high" | "low" | "uniform", R: number, headDim: number): number[] {
  const half = headDim / 2;
  if (strategy === "high") return Array.from({ length: R }, (_, k) => k);
  if (strategy === "low") return Array.from({ length: R }, (_, k) => half - R + k);
  return Array.from({ length: R }, (_, k) => Math.floor((k * headDim) / (2 * R)));
}

/** The R highest-scoring pairs (ties to the lower index), returned ascending. */
export function topPairs(scores: ArrayLike<number>, R: number): number[] {
  const idx = Array.from({ length: scores.length }, (_, i) => i);
  idx.sort((a, b) => scores[b]! - scores[a]! || a - b);
  return idx.slice(0, R).sort((a, b) => a - b);
}

/**
 * 2-norm score per (KV head, pair) of one layer: Σ over the query heads h of group g of
 * q̄[h, i] · k̄[g, i]. qNorm [H, Dh/2], kNorm [Hkv, Dh/2] → [Hkv, Dh/2].
 */
export function twoNormScores(qNorm: Float64Array, kNorm: Float64Array, heads: number, kvHeads: number, half: number): Float64Array {
  const out = new Float64Array(kvHeads * half);
  const group = heads / kvHeads;
  for (let h = 0; h < heads; h++) {
    const g = Math.floor(h / group);
    for (let i = 0; i < half; i++) out[g * half + i] += qNorm[h * half + i]! * kNorm[g * half + i]!;
  }
  return out;
}
