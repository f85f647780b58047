/**
 * The splits of one layer's KV budget between rope pairs and latent dims that `convert --kv-split
 * per-layer` chooses from. A token caches, per layer and KV head, 2R rope values and the latent
 * (rank dims with the joint SVD, 2·rank with the split SVD), so `--rope-pairs R --rank r` sets a
 * budget of 2R + r (joint) values per KV head and every candidate (R', r') spends exactly as much:
 * r' = r + 2(R − R') joint, r' = r + R − R' split. The total cache is then that of the uniform
 * conversion whatever each layer picks.
 */
import { MlaError } from "../errors.js";
import { latentWidth, MlaSplit } from "../model/config.js";
import { maxRank } from "./factor.js";

export type KvSplitMode = "uniform" | "per-layer";
export const KV_SPLIT_MODES: readonly KvSplitMode[] = ["uniform", "per-layer"];

/** The shapes a candidate must fit. */
export interface SplitShape {
  kvHeads: number;
  headDim: number;
  hidden: number;
}

/** The budget: the uniform conversion's R and rank, its SVD, and whether frequencies must be disjoint across KV heads. */
export interface SplitBudget {
  ropePairs: number;
  rank: number;
  svd: "joint" | "split";
  ropeDisjoint: boolean;
}

/** The rank that gives R' rope pairs the budget's bytes: r + 2(R − R') joint, r + (R − R') split. */
export function equalBudgetRank(b: SplitBudget, ropePairs: number): number {
  return b.rank + ((b.svd === "split" ? 1 : 2) * (b.ropePairs - ropePairs));
}

/**
 * Default candidate R': R + k·s for whole k, s = max(1, round(R/2)), from 1 (0 only when R is 0) to
 * Dh/2. At R = 4 that is 2, 4, 6, 8, 10… (the grid of bench/per-layer-split.ts); a step of R/2 keeps
 * the number of candidates (each costs one factorization and one calibration pass per layer) about
 * Dh/R whatever the head size.
 */
export function defaultSplitPairs(ropePairs: number, headDim: number): number[] {
  const step = Math.max(1, Math.round(ropePairs / 2));
  const low = Math.min(1, ropePairs);
  const out: number[] = [];
  for (let r = ropePairs - step * Math.floor((ropePairs - low) / step); r <= headDim / 2; r += step) out.push(r);
  return out;
}

/** Why R' cannot spend the budget (null if it can). */
function unfit(s: SplitShape, b: SplitBudget, ropePairs: number): string | null {
  const half = s.headDim / 2;
  if (!Number.isInteger(ropePairs) || ropePairs < 0 || ropePairs > half) return `it is not an integer in 0…${half}`;
  const rank = equalBudgetRank(b, ropePairs);
  const top = maxRank(b.svd, s.kvHeads, s.headDim, ropePairs, s.hidden);
  if (rank < 1) return `the budget leaves it rank ${rank}, no latent`;
  if (rank > top) return `rank ${rank} would exceed ${top}, the most its SVD can keep`;
  if (b.ropeDisjoint && s.kvHeads * ropePairs > half) return `--rope-disjoint needs KV heads × rope pairs ≤ ${half}`;
  return null;
}

/**
 * The candidates at the budget, ascending in R'. `pairs` (`--kv-split-pairs`) lists the R' to try; a
 * listed one that cannot spend the budget is an error, a default one that cannot is dropped. The
 * budget's own split is always among them.
 */
export function budgetSplits(s: SplitShape, b: SplitBudget, pairs?: readonly number[]): MlaSplit[] {
  const asked = pairs ?? defaultSplitPairs(b.ropePairs, s.headDim);
  if (pairs) {
    if (pairs.length === 0) throw new MlaError("BAD_ARGUMENT", "--kv-split-pairs is empty", "list the rope pairs to try per layer, e.g. --kv-split-pairs 2,4,6,8");
    for (const r of pairs) {
      const why = unfit(s, b, r);
      if (why) throw new MlaError("BAD_ARGUMENT", `--kv-split-pairs ${r} cannot spend the budget of --rope-pairs ${b.ropePairs} --rank ${b.rank} (${2 * b.ropePairs + (b.svd === "split" ? 2 : 1) * b.rank} values per KV head): ${why}`, "list rope pairs whose equal-bytes rank stays between 1 and the SVD's limit");
    }
  }
  const fit = new Set(asked.filter((r) => unfit(s, b, r) === null));
  fit.add(b.ropePairs);
  return [...fit].sort((x, y) => x - y).map((ropePairs) => {
    const rank = equalBudgetRank(b, ropePairs);
    return { ropePairs, rank, latentDim: latentWidth(rank, s.kvHeads, b.svd) };
  });
}
