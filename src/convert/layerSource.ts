/**
 * What converting one layer reads, shared by the writer (pipeline.ts) and the per-layer split choice
 * (splitChoice.ts), so both factor a layer the same way: the layer's rope pairs for R (the settings'
 * strategy on the calibration scores) and the inputs of factorLayer (the source's key/value
 * projections, the whitening roots, BKV). A layer's independent factorizations (the whitening roots'
 * eigendecomposition, then one SVD jointly or one each for keys and values) are where a stop asked
 * for through the source's signal lands: after a turn of the event loop at each boundary between
 * them, never inside one. The split choice's winning factors of a layer can be kept (`keep`) for the
 * writer to take (`take`) instead of factoring that layer again, within a byte budget.
 */
import type { Checkpoint } from "../io/checkpoint.js";
import type { ModelConfig } from "../model/config.js";
import { layerPrefix } from "../model/weights.js";
import type { CalibrationStats } from "../ropeSelect/calibrate.js";
import { disjointPairs, fixedPairs, pairPreferences, topPairs, twoNormScores } from "../ropeSelect/strategies.js";
import { covarianceRoots, CovarianceRoots } from "../svd/truncated.js";
import { nextTurn } from "../util/abort.js";
import { factorLayer, LayerFactors } from "./factor.js";
import { finiteForFactoring } from "./sourceTensors.js";
import type { ConversionSettings } from "./plan.js";

export class LayerSource {
  /** The last layer's whitening roots (a D×D eigendecomposition): the split choice factors one layer several times in a row. */
  private roots: { layer: number; value: CovarianceRoots | null } | null = null;
  /** [layer] → factors made ahead (the split choice's winner), until the writer takes them. */
  private readonly kept = new Map<number, { rank: number; selection: number[][]; f: LayerFactors }>();
  private keptBytes = 0;
  /** The tensors finiteForFactoring passed already: the split choice factors a layer once per candidate, and the writer may again. */
  private readonly finite = new Set<string>();

  constructor(
    private readonly src: Checkpoint,
    private readonly c: ModelConfig,
    private readonly s: Pick<ConversionSettings, "ropeStrategy" | "ropeDisjoint" | "svd" | "balanceKv">,
    private readonly stats: CalibrationStats | null,
    /** The conversion's: aborting it stops a layer's factoring at its next boundary (MlaError INTERRUPTED). */
    private readonly signal?: AbortSignal,
    /** The most bytes of factors `keep` holds at once (all layers together); past it a layer is left to be factored again. */
    private readonly keepBytes = 0,
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
  async factor(layer: number, rank: number, selection: number[][]): Promise<LayerFactors> {
    const { src, c, s, signal } = this;
    const p = layerPrefix(layer) + "self_attn.";
    const fresh = this.stats?.covariance && this.roots?.layer !== layer;
    const whiten = this.whitening(layer);
    // The roots (a D×D eigendecomposition, as long as a factorization) are done: a stop asked for
    // meanwhile spares the layer's SVDs.
    if (fresh) await nextTurn(signal);
    const read = (field: string) => {
      const name = p + field;
      const values = src.readF32(name);
      if (!this.finite.has(name)) {
        finiteForFactoring(src.dir, name, values);
        this.finite.add(name);
      }
      return values;
    };
    return factorLayer({
      wk: read("k_proj.weight"),
      wv: read("v_proj.weight"),
      bk: c.qkvBias ? read("k_proj.bias") : null,
      bv: c.qkvBias ? read("v_proj.bias") : null,
      kvHeads: c.kvHeads,
      headDim: c.headDim,
      hidden: c.hiddenSize,
      selection,
      rank,
      svd: s.svd,
      whiten,
      balance: s.balanceKv,
      signal,
    });
  }

  /**
   * Keeps `layer`'s factors at `rank` and `selection` for `take`, if they fit the byte budget beside
   * those kept already (else they are dropped, and `take` factors the layer again: the same result).
   */
  keep(layer: number, rank: number, selection: number[][], f: LayerFactors): void {
    this.drop(layer);
    const bytes = factorBytes(f);
    if (this.keptBytes + bytes > this.keepBytes) return;
    this.kept.set(layer, { rank, selection, f });
    this.keptBytes += bytes;
  }

  /** `layer` factored as `factor` does: the kept factors if they are of this rank and selection (no longer kept after), else made now. */
  take(layer: number, rank: number, selection: number[][]): Promise<LayerFactors> {
    const k = this.kept.get(layer);
    this.drop(layer);
    if (k && k.rank === rank && JSON.stringify(k.selection) === JSON.stringify(selection)) return Promise.resolve(k.f);
    return this.factor(layer, rank, selection);
  }

  private drop(layer: number): void {
    const k = this.kept.get(layer);
    if (!k) return;
    this.kept.delete(layer);
    this.keptBytes -= factorBytes(k.f);
  }

  private whitening(layer: number): CovarianceRoots | null {
    const cov = this.stats?.covariance;
    if (!cov) return null;
    if (this.roots?.layer !== layer) this.roots = { layer, value: covarianceRoots(cov[layer]!, this.c.hiddenSize) };
    return this.roots.value;
  }
}

/** The bytes of a layer's factor arrays. */
function factorBytes(f: LayerFactors): number {
  return [f.kRope, f.kRopeBias, f.kvDown, f.kUp, f.kUpBias, f.vUp, f.vUpBias].reduce((n, a) => n + (a?.byteLength ?? 0), 0);
}
