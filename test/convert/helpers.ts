/** Conversion test helpers: converting a fixture into a temporary folder, the PyTorch goldens. */
import fs from "node:fs";
import path from "node:path";
import { convert, ConvertOptions } from "../../src/convert/pipeline.js";
import { FIXTURES, GOLDEN, MODELS, tmpDir } from "../helpers.js";

export interface GoldenSetting {
  strategy: "high" | "low" | "uniform" | "2-norm";
  rope_pairs: number;
  rank: number;
  selection: number[][][];
  nll: number;
  ppl: number;
}

export interface ConversionGolden {
  calib: { file: string; samples: number; len: number };
  eval: { file: string; ctx: number };
  models: Record<string, { two_norm: { q_norm: number[][][]; k_norm: number[][][]; scores: number[][][] }; original_nll: number; settings: GoldenSetting[] }>;
}

export const conversionGolden = JSON.parse(fs.readFileSync(path.join(GOLDEN, "conversion.json"), "utf8")) as ConversionGolden;

export async function convertFixture(model: string, opts: Omit<ConvertOptions, "out">): Promise<string> {
  const out = path.join(tmpDir(), `${model}-mla`);
  // The PyTorch goldens factor without BKV (the paper's plain SVD).
  // Unbalanced K/V by default, as the PyTorch goldens; the split SVD has nothing to balance (refused).
  await convert(path.join(MODELS, model), { progress: null, ...(opts.svd === "split" ? {} : { balanceKv: false }), ...opts, out });
  return out;
}

/** A budget on stories260K (head dim 8) at which --kv-split per-layer gives layers different splits. */
export const PER_LAYER_BUDGET = { rank: 8, ropePairs: 1 } as const;
export const PER_LAYER_CALIB = path.join(FIXTURES, "text", "tinystories_25k.txt");

let perLayer: Promise<string> | null = null;

/** stories260K converted with `--kv-split per-layer` (2-norm, BKV) at PER_LAYER_BUDGET, once per test process. */
export function perLayerFixture(): Promise<string> {
  perLayer ??= (async () => {
    const out = path.join(tmpDir(), "stories260K-per-layer");
    await convert(path.join(MODELS, "stories260K"), { ...PER_LAYER_BUDGET, ropeStrategy: "2-norm", calib: PER_LAYER_CALIB, calibSamples: 8, kvSplit: "per-layer", out, progress: null });
    return out;
  })();
  return perLayer;
}
