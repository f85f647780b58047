/** Conversion test helpers: converting a fixture into a temporary folder, the PyTorch goldens. */
import fs from "node:fs";
import path from "node:path";
import { convert, ConvertOptions } from "../../src/convert/pipeline.js";
import { GOLDEN, MODELS, tmpDir } from "../helpers.js";

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
  await convert(path.join(MODELS, model), { progress: null, balanceKv: false, ...opts, out });
  return out;
}
