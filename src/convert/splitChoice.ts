/**
 * `convert --kv-split per-layer`: for each layer, the split of the KV budget (kvSplit.ts) whose
 * converted attention best reproduces the original's on the calibration windows. Each candidate's
 * layer is factored as the writer will factor it (LayerSource), fed the ORIGINAL model's normed
 * hidden states, so that the error is the layer's own and not inherited from the layers below, and
 * scored by ‖Δ‖/‖A‖ of the attention block's output over all windows (the measure of
 * bench/per-layer-split.ts). Layers go in order with every window's hidden state advanced one layer
 * at a time: one forward of the original model in all, plus one factorization and one attention pass
 * per (layer, candidate); memory holds one layer's activations for all windows, and of its candidates'
 * factors only the best so far (kept for the writer once the layer is chosen: LayerSource.keep). A stop (the
 * signal) lands between candidates, between a candidate's factorization and its scoring, and inside
 * the factorization at its boundaries (LayerSource), never at the end of the layer only.
 */
import { MlaSplit, ModelConfig } from "../model/config.js";
import type { LlamaModel } from "../model/llama.js";
import { MlaBlock } from "../model/attention/mla.js";
import { attentionTensors, MhaWeights, MlaWeights } from "../model/weights.js";
import { nodesOf } from "../model/params.js";
import { Ops } from "../tensor/autograd.js";
import type { FloatArray, Tensor } from "../tensor/tensor.js";
import type { Logger } from "../util/log.js";
import { Progress, ProgressSink } from "../util/progress.js";
import { nextTurn } from "../util/abort.js";
import { factorTensors, LayerFactors } from "./factor.js";
import { budgetSplits } from "./kvSplit.js";
import type { ConversionSettings } from "./plan.js";

/** How a candidate layer is made: its rope pairs for R, and its factors (LayerSource). */
export interface LayerMaker {
  pairs(layer: number, R: number): number[][];
  factor(layer: number, rank: number, selection: number[][]): Promise<LayerFactors>;
  /** Keeps the chosen candidate's factors of `layer`, which the writer then need not make again (LayerSource.take). */
  keep?(layer: number, rank: number, selection: number[][], factors: LayerFactors): void;
}

export interface SplitChoice {
  /** The splits tried, ascending in R (each at the budget's bytes). */
  candidates: MlaSplit[];
  /** The index in `candidates` of the uniform conversion's split. */
  uniform: number;
  /** [layer] → the index of its split in `candidates`. */
  chosen: number[];
  /** [layer][candidate] → ‖converted − original‖ / ‖original‖ of the attention output on the calibration windows. */
  errors: number[][];
  /** [layer][kvHead] → the chosen split's rope pairs. */
  selection: number[][][];
  seconds: number;
}

export interface SplitChoiceOptions {
  /** The index in `candidates` of the uniform conversion's split: ties go to it. */
  uniform: number;
  svd: "joint" | "split";
  logger: Logger;
  progress?: ProgressSink | null;
  signal?: AbortSignal;
}

/** Chooses every layer's split of `original` (the MHA/GQA model) on calibration `windows` ([T] ids each, from BOS). */
export async function chooseSplits(original: LlamaModel, windows: Int32Array[], candidates: MlaSplit[], make: LayerMaker, o: SplitChoiceOptions): Promise<SplitChoice> {
  const t0 = performance.now();
  const c = original.config;
  const b = original.backend;
  const progress = new Progress("choose kv split", c.layers * candidates.length, "layer splits", o.progress);
  const choice: SplitChoice = { candidates, uniform: o.uniform, chosen: [], errors: [], selection: [], seconds: 0 };
  // Every backend tensor made here is in one of these until disposed, whichever way the loop ends (a stop throws).
  const hs: Tensor[] = []; // [T, D] per window, before the current layer
  let xs: Tensor[] = [];
  let block: CandidateBlock | null = null;
  try {
    for (const ids of windows) hs.push(original.embedTokens(ids));
    for (let l = 0; l < c.layers; l++) {
      for (const h of hs) xs.push(b.rmsnorm(h, original.weights.layers[l]!.inputNorm, c.rmsEps)); // the attention input [T, D]
      const targets = xs.map((x, i) => hostValues(original.attentionOf(l, windows[i]!, x)));
      const errors: number[] = [];
      const selections: number[][][] = [];
      // The best candidate so far and its factors, kept for the writer (make.keep); a loser's are dropped at once.
      let held: { index: number; factors: LayerFactors } | null = null;
      for (const [k, split] of candidates.entries()) {
        const selection = make.pairs(l, split.ropePairs);
        const factors = await make.factor(l, split.rank, selection);
        // The factorization and the scoring pass over every window are each long on a large layer: a
        // stop asked for during the first spares the second (LayerSource stops inside the first too).
        await nextTurn(o.signal);
        const cand = (block = candidateBlock(original, l, split, selection, factors, o.svd));
        errors.push(relativeError(targets, (i) => cand.run(xs[i]!, windows[i]!)));
        block.dispose();
        block = null;
        selections.push(selection);
        if (!held || beats(errors, k, held.index, o.uniform)) held = { index: k, factors };
        progress.tick();
        await nextTurn(o.signal);
      }
      const best = errors.reduce((k, e, i) => (e < errors[k]! ? i : k), o.uniform);
      // `beats` picks as this does but for errors that are not numbers; then the writer factors the layer again.
      if (held?.index === best) make.keep?.(l, candidates[best]!.rank, selections[best]!, held.factors);
      held = null;
      choice.chosen.push(best);
      choice.errors.push(errors);
      choice.selection.push(selections[best]!);
      const u = candidates[o.uniform]!;
      o.logger.info(`kv split, layer ${l}: R ${candidates[best]!.ropePairs} rank ${candidates[best]!.rank} (error ${errors[best]!.toFixed(4)}; uniform R ${u.ropePairs} rank ${u.rank}: ${errors[o.uniform]!.toFixed(4)})`);
      for (const x of xs.splice(0)) x.dispose();
      // advanceWindows consumes the states it is given, even when it throws: hs is emptied first.
      if (l + 1 < c.layers) hs.push(...original.advanceWindows(l, windows, hs.splice(0)));
    }
  } finally {
    block?.dispose();
    for (const x of xs) x.dispose();
    for (const h of hs) h.dispose();
  }
  choice.seconds = (performance.now() - t0) / 1000;
  return choice;
}

/** Whether candidate k's error beats the held candidate h's: lower, or equal and k is the uniform split (ties go to it). */
function beats(errors: number[], k: number, h: number, uniform: number): boolean {
  return errors[k]! < errors[h]! || (k === uniform && !(errors[h]! < errors[k]!));
}

/** A tensor's values on the host; the tensor is disposed. */
function hostValues(t: Tensor): FloatArray {
  try {
    return t.toArray();
  } finally {
    t.dispose();
  }
}

/** √(Σ‖a − y‖² / Σ‖a‖²) over windows: targets a [T·D] (host), output(i) y [T, D] made and disposed one window at a time. */
function relativeError(targets: FloatArray[], output: (window: number) => Tensor): number {
  let num = 0, den = 0;
  targets.forEach((a, i) => {
    const v = hostValues(output(i));
    for (let j = 0; j < a.length; j++) {
      const d = a[j]! - v[j]!;
      num += d * d;
      den += a[j]! * a[j]!;
    }
  });
  return Math.sqrt(num / Math.max(den, 1e-300));
}

interface CandidateBlock {
  /** The converted block's output [T, D] on one window's normed input x [T, D] (ids [T] at positions 0…T−1). */
  run(x: Tensor, ids: Int32Array): Tensor;
  dispose(): void;
}

/** Layer l of `original` converted to `split`: q_proj and o_proj the original's, the rest the factors `f`. */
function candidateBlock(original: LlamaModel, l: number, split: MlaSplit, selection: number[][], f: LayerFactors, svd: "joint" | "split"): CandidateBlock {
  const b = original.backend;
  const base = original.config;
  // A config in which every layer has this split: MlaBlock reads only layer l's entries.
  const c: ModelConfig = { ...base, attention: { kind: "mla", splits: Array.from({ length: base.layers }, () => split), selection: Array.from({ length: base.layers }, () => selection), svd, gateDim: 0 } };
  const mha = original.weights.layers[l]!.attn as MhaWeights as unknown as Record<string, Tensor | null>;
  const factors = factorTensors(f);
  const uploaded: Tensor[] = [];
  const fields: Record<string, unknown> = { kind: "mla" };
  let block: MlaBlock;
  try {
    // The shapes are the checkpoint format's (weights.ts), so the candidate is laid out as the written layer will be.
    for (const t of attentionTensors(c, l)) {
      const values = factors[t.name.slice("self_attn.".length)];
      if (!t.on) fields[t.field] = null;
      else if (values) uploaded.push((fields[t.field] = b.upload(values, t.shape)) as Tensor);
      else fields[t.field] = mha[t.field] ?? null;
    }
    block = new MlaBlock(b, c, fields as unknown as MlaWeights, original.invFreq, l);
  } catch (e) {
    for (const t of uploaded) t.dispose();
    throw e;
  }
  const w = fields as unknown as MlaWeights;
  return {
    run(x: Tensor, ids: Int32Array): Tensor {
      const ops = new Ops(b, null);
      const positions = Int32Array.from(ids, (_, i) => i);
      return block.forward(ops, nodesOf(ops, w, () => false), ops.constant(x), ids, positions, undefined, false).value;
    },
    dispose(): void {
      for (const t of uploaded) t.dispose();
    },
  };
}

/** The conversion's step: every layer's split among the budget's candidates (kvSplit.ts), logged per layer. */
export function chooseKvSplits(original: LlamaModel, windows: Int32Array[], make: LayerMaker, s: ConversionSettings, log: Logger, run: Pick<SplitChoiceOptions, "progress" | "signal"> = {}): Promise<SplitChoice> {
  const c = original.config;
  const candidates = budgetSplits({ kvHeads: c.kvHeads, headDim: c.headDim, hidden: c.hiddenSize }, s, s.kvSplitPairs ?? undefined);
  const uniform = candidates.findIndex((x) => x.ropePairs === s.ropePairs);
  log.info(`kv split per layer: trying R ${candidates.map((x) => `${x.ropePairs} rank ${x.rank}`).join(", ")} (${2 * s.ropePairs + (s.svd === "split" ? 2 : 1) * s.rank} cached values per KV head and token each) on ${windows.length} calibration windows`);
  return chooseSplits(original, windows, candidates, make, { uniform, svd: s.svd, logger: log, progress: run.progress, signal: run.signal });
}

/** The choice's record in mla_conversion.json (an empty object for a uniform conversion). */
export function kvSplitRecord(choice: SplitChoice | null): { kv_split?: { candidates: { rope_pairs: number; rank: number }[]; chosen: { rope_pairs: number; rank: number; latent_dim: number }[]; relative_error: number[][]; mean_error: { chosen: number; uniform: number } } } {
  if (!choice) return {};
  const mean = (xs: number[]) => xs.reduce((a, x) => a + x, 0) / Math.max(xs.length, 1);
  return {
    kv_split: {
      candidates: choice.candidates.map((x) => ({ rope_pairs: x.ropePairs, rank: x.rank })),
      chosen: choice.chosen.map((i) => ({ rope_pairs: choice.candidates[i]!.ropePairs, rank: choice.candidates[i]!.rank, latent_dim: choice.candidates[i]!.latentDim })),
      relative_error: choice.errors,
      mean_error: { chosen: mean(choice.errors.map((e, l) => e[choice.chosen[l]!]!)), uniform: mean(choice.errors.map((e) => e[choice.uniform]!)) },
    },
  };
}
