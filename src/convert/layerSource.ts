/**
 * What converting one layer reads, shared by the writer (pipeline.ts) and the per-layer split choice
 * (splitChoice.ts), so both factor a layer the same way: the layer's rope pairs for R (the settings'
 * strategy on the calibration scores) and the inputs of factorLayer (the source's key/value
 * projections, the whitening roots, BKV).
 */
import type { Checkpoint } from "../io/checkpoint.js";
import type { ModelConfig } from "../model/config.js";
import { layerPrefix } from "../model/weights.js";
import type { CalibrationStats } from "../ropeSelect/calibrate.js";
import { disjointPairs, fixedPairs, pairPreferences, topPairs, twoNormScores } from "../ropeSelect/strategies.js";
import { covarianceRoots, CovarianceRoots } from "../svd/truncated.js";
import { factorLayer, LayerFactors } from "./factor.js";
import type { ConversionSettings } from "./plan.js";

export class LayerSource {
  /** The last layer's whitening roots (a D×D eigendecomposition): the split choice factors one layer several times in a row. */
  private roots: { layer: number; value: CovarianceRoots | null } | null = null;

  constructor(
    private readonly src: Checkpoint,
    private readonly c: ModelConfig,
    private readonly s: Pick<ConversionSettings, "ropeStrategy" | "ropeDisjoint" | "svd" | "balanceKv">,
    private readonly stats: CalibrationStats | null,
  ) {}

  /** [Hkv] → the R pairs `layer` keeps, ascending. */
  pairs(layer: number, R: number): number[][] {
    const { c, s, stats } = this;
    const half = c.headDim / 2;
    const scores = s.ropeStrategy === "2-norm" ? twoNormScores(stats!.qNorm[layer]!, stats!.kNorm[layer]!, c.heads, c.kvHeads, half) : null;
    if (s.ropeDisjoint) return disjointPairs(pairPreferences(s.ropeStrategy, c.kvHeads, R, half, scores), R, half, s.ropeStrategy === "2-norm");
    if (!scores) return Array.from({ length: c.kvHeads }, () => fixedPairs(s.ropeStrategy as "high" | "low" | "uniform", R, c.headDim));
    return Array.from({ length: c.kvHeads }, (_, g) => topPairs(scores.subarray(g * half, (g + 1) * half), R));
  }

  /** `layer` factored at `rank` latent dims per KV head, keeping RoPE on `selection` ([Hkv] → pairs). */
  factor(layer: number, rank: number, selection: number[][]): Promise<LayerFactors> {
    const { src, c, s } = this;
    const p = layerPrefix(layer) + "self_attn.";
    return factorLayer({
      wk: src.readF32(p + "k_proj.weight"),
      wv: src.readF32(p + "v_proj.weight"),
      bk: c.qkvBias ? src.readF32(p + "k_proj.bias") : null,
      bv: c.qkvBias ? src.readF32(p + "v_proj.bias") : null,
      kvHeads: c.kvHeads,
      headDim: c.headDim,
      hidden: c.hiddenSize,
      selection,
      rank,
      svd: s.svd,
      whiten: this.whitening(layer),
      balance: s.balanceKv,
    });
  }

  private whitening(layer: number): CovarianceRoots | null {
    const cov = this.stats?.covariance;
    if (!cov) return null;
    if (this.roots?.layer !== layer) this.roots = { layer, value: covarianceRoots(cov[layer]!, this.c.hiddenSize) };
    return this.roots.value;
  }
}
