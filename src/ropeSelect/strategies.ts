/**
 * Which RoPE frequency pairs each (layer, KV head) keeps. Pair i = dims i and i + Dh/2.
 * high: pairs 0…R−1 (fastest rotating); low: the last R; uniform: ⌊k·Dh/(2R)⌋ for k = 0…R−1;
 * 2-norm: the R pairs with the largest calibration score (ties to the lower index).
 */
import { MlaError } from "../errors.js";
import { checkFloatsArg, checkHeadDimArg, checkWholeArg, shown } from "../util/numericArgs.js";

export const ROPE_STRATEGIES = ["high", "low", "uniform", "2-norm"] as const;
export type RopeStrategy = (typeof ROPE_STRATEGIES)[number];

export function parseStrategy(s: string): RopeStrategy {
  if ((ROPE_STRATEGIES as readonly string[]).includes(s)) return s as RopeStrategy;
  throw new MlaError("BAD_ARGUMENT", `--rope-strategy ${s} is not known`, `use one of ${ROPE_STRATEGIES.join(", ")}`);
}

/** The paper's default: R = Dh/16, at least 1. */
export function defaultRopePairs(headDim: number): number {
  // A script's NaN or odd head_dim would come back as a pair count no head has (the CLI reads it from config.json, checked).
  if (!(Number.isInteger(headDim) && headDim >= 2 && headDim % 2 === 0)) throw new MlaError("BAD_ARGUMENT", `defaultRopePairs' head_dim ${headDim} is not an even whole number ≥ 2`, "pass the model's head_dim (hidden_size / num_attention_heads), whose halves are the rotary pairs");
  return Math.max(1, Math.floor(headDim / 16));
}

/**
 * Refuses a --rope-pairs that is not a whole number from `lo` to head_dim/2, naming which it is (convert
 * keeps 0 pairs, --format deepseek at least 1); `hint`: what to pass instead.
 */
export function checkRopePairs(R: number, lo: number, headDim: number, hint: string): void {
  if (Number.isInteger(R) && R >= lo && R <= headDim / 2) return;
  throw new MlaError("BAD_ARGUMENT", Number.isInteger(R) ? `--rope-pairs ${R} is out of range for head_dim ${headDim}` : `--rope-pairs ${R} is not a whole number`, hint);
}

/** Pairs kept by a position-independent strategy, ascending. */
export function fixedPairs(strategy: "high" | "low" | "uniform", R: number, headDim: number): number[] {
  // From a script: an unknown strategy ran as uniform, a NaN count kept none, R past head_dim/2 kept negative pairs.
  if (strategy !== "high" && strategy !== "low" && strategy !== "uniform") throw new MlaError("BAD_ARGUMENT", `fixedPairs(): the strategy is ${shown(strategy)}, not "high", "low" or "uniform"`, "pass one of them; 2-norm pairs come from topPairs(twoNormScores(…), R)");
  checkHeadDimArg("fixedPairs()", "headDim", headDim, "pass the model's head_dim, an even number");
  checkWholeArg("fixedPairs()", "R", R, 0, `pass the pairs to keep per head, from 0 to ${headDim / 2}`);
  if (R > headDim / 2) throw new MlaError("BAD_ARGUMENT", `fixedPairs(): R ${R} is more than the ${headDim / 2} pairs of headDim ${headDim}`, `pass R from 0 to ${headDim / 2}`);
  const half = headDim / 2;
  if (strategy === "high") return Array.from({ length: R }, (_, k) => k);
  if (strategy === "low") return Array.from({ length: R }, (_, k) => half - R + k);
  return Array.from({ length: R }, (_, k) => Math.floor((k * headDim) / (2 * R)));
}

/** The R highest-scoring pairs (ties to the lower index), returned ascending. */
export function topPairs(scores: ArrayLike<number>, R: number): number[] {
  // A string's characters sorted as scores, a NaN R kept none, a negative one all but the last.
  if (!(Array.isArray(scores) || (ArrayBuffer.isView(scores) && !(scores instanceof DataView)))) throw new MlaError("BAD_ARGUMENT", `topPairs(): the scores are ${shown(scores)}, not an array of numbers`, "pass one score per pair, e.g. a head's slice of twoNormScores(…)");
  for (let i = 0; i < scores.length; i++) if (typeof scores[i] !== "number") throw new MlaError("BAD_ARGUMENT", `topPairs(): scores[${i}] is ${shown(scores[i])}, not a number`, "pass one score per pair, e.g. a head's slice of twoNormScores(…)");
  checkWholeArg("topPairs()", "R", R, 0, "pass the number of pairs to keep");
  if (R > scores.length) throw new MlaError("BAD_ARGUMENT", `topPairs(): R ${R} is more than the ${scores.length} pairs scored`, `pass R from 0 to ${scores.length}`);
  // NaN scores matter only where R keeps some pairs but not all (convert passes them at R 0 or every pair): a NaN
  // compares as neither more nor less, so the sort would keep an arbitrary set.
  if (R > 0 && R < scores.length)
    for (let i = 0; i < scores.length; i++)
      if (Number.isNaN(scores[i])) throw new MlaError("BAD_ARGUMENT", `topPairs(): scores[${i}] is NaN, so the ${R} highest of ${scores.length} pairs are not defined`, "pass finite scores (a NaN score comes from a NaN in the qNorm or kNorm given to twoNormScores)");
  const idx = Array.from({ length: scores.length }, (_, i) => i);
  idx.sort((a, b) => scores[b]! - scores[a]! || a - b);
  return idx.slice(0, R).sort((a, b) => a - b);
}

/**
 * `--rope-disjoint`: R pairs per KV head with no frequency kept by two heads of the layer, which is
 * what lets DeepSeek-V3's one shared rope key hold every head's pairs exactly (`export --format
 * deepseek`, docs/deepseek.md). The heads take turns, R rounds, each taking its most preferred pair
 * not yet taken. `prefs[g]` lists head g's pairs, most preferred first. Returns [Hkv][R] ascending.
 */
export function disjointPairs(prefs: number[][], R: number, half: number, snake = false): number[][] {
  const G = prefs.length;
  checkDisjoint(G, R, half);
  const taken = new Set<number>();
  const out: number[][] = prefs.map(() => []);
  // snake: 0…G−1, then G−1…0, … so that no head always chooses first (scores); otherwise the same
  // order every round (a shared preference list then deals every G-th entry to each head).
  for (let round = 0; round < R; round++)
    for (let k = 0; k < G; k++) {
      const g = snake && round % 2 === 1 ? G - 1 - k : k;
      const i = prefs[g]!.find((p) => !taken.has(p))!;
      taken.add(i);
      out[g]!.push(i);
    }
  return out.map((p) => p.sort((a, b) => a - b));
}

/** `--rope-disjoint` needs Hkv·R distinct pairs out of Dh/2. */
export function checkDisjoint(kvHeads: number, R: number, half: number): void {
  if (kvHeads * R <= half) return;
  const most = Math.floor(half / kvHeads);
  throw new MlaError(
    "BAD_ARGUMENT",
    `--rope-disjoint needs KV heads × rope pairs ≤ head_dim/2, but ${kvHeads} × ${R} > ${half}`,
    most >= 1 ? `use --rope-pairs ≤ ${most}, or leave --rope-disjoint out` : `${kvHeads} KV heads cannot each keep a frequency of their own among ${half}: leave --rope-disjoint out (convert --format deepseek writes a deepseek_v3 model directly)`,
  );
}

/**
 * The preference order behind a strategy's pairs, for `disjointPairs`: high from the fastest pair,
 * low from the slowest, uniform G·R pairs a constant step ⌊(Dh/2)/(G·R)⌋ apart (so the turns give
 * each head an even spread, and the export's rope ladder has exactly G·R slots), 2-norm by score
 * (ties to the lower index).
 */
export function pairPreferences(strategy: RopeStrategy, kvHeads: number, R: number, half: number, scores: Float64Array | null): number[][] {
  const all = Array.from({ length: half }, (_, i) => i);
  return Array.from({ length: kvHeads }, (_, g) => {
    if (strategy === "high") return all;
    if (strategy === "low") return [...all].reverse();
    if (strategy === "uniform") {
      const step = Math.max(1, Math.floor(half / (kvHeads * R)));
      const even = Array.from({ length: Math.min(kvHeads * R, half) }, (_, j) => j * step);
      return [...even, ...all.filter((i) => !even.includes(i))];
    }
    const s = scores!.subarray(g * half, (g + 1) * half);
    return [...all].sort((a, b) => s[b]! - s[a]! || a - b);
  });
}

/**
 * 2-norm score per (KV head, pair) of one layer: Σ over the query heads h of group g of
 * q̄[h, i] · k̄[g, i]. qNorm [H, Dh/2], kNorm [Hkv, Dh/2] → [Hkv, Dh/2].
 */
export function twoNormScores(qNorm: Float64Array, kNorm: Float64Array, heads: number, kvHeads: number, half: number): Float64Array {
  // From a script: no sizes gave an empty result, short norms NaN scores, heads not a multiple of kvHeads groups that do not exist.
  const where = "twoNormScores()", hint = "pass calibration's qNorm [heads·half] and kNorm [kvHeads·half] of one layer, then heads, kvHeads and half (head_dim/2)";
  checkWholeArg(where, "heads", heads, 1, hint);
  checkWholeArg(where, "kvHeads", kvHeads, 1, hint);
  checkWholeArg(where, "half", half, 1, hint);
  if (heads % kvHeads !== 0) throw new MlaError("BAD_ARGUMENT", `${where}: heads ${heads} is not a multiple of kvHeads ${kvHeads}`, hint);
  checkFloatsArg(where, "qNorm", qNorm, Float64Array, heads * half, hint);
  checkFloatsArg(where, "kNorm", kNorm, Float64Array, kvHeads * half, hint);
  const out = new Float64Array(kvHeads * half);
  const group = heads / kvHeads;
  for (let h = 0; h < heads; h++) {
    const g = Math.floor(h / group);
    for (let i = 0; i < half; i++) out[g * half + i] += qNorm[h * half + i]! * kNorm[g * half + i]!;
  }
  return out;
}
