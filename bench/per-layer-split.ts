/**
 * Does the best split of a KV budget between rope pairs and latent dims differ from layer to layer?
 * For each split (R, rank) at equal KV bytes (2R + rank per KV head), the conversion of MODEL (2-norm,
 * BKV, calibrated on CALIB) is scored layer by layer: each layer's converted attention is fed the
 * ORIGINAL model's hidden states (so the error is the layer's own, not inherited), and its output
 * compared with the original attention's, ‖Δ‖/‖A‖ over held-out windows of VAL. Prints a Markdown
 * table (rows: splits; columns: layers) and each layer's best split.
 * Run: npm run build && node dist/bench/per-layer-split.js [MODEL] [CALIB] [VAL] [--splits 2:20,4:16,…] [--windows 16]
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { convert } from "../src/convert/pipeline.js";
import { loadModel, type LlamaModel } from "../src/model/llama.js";
import { calibrationWindows } from "../src/ropeSelect/calibrate.js";
import { readText } from "../src/eval/perplexity.js";
import { packageRoot } from "../src/io/modelDir.js";
import type { Tensor } from "../src/tensor/tensor.js";

const args = process.argv.slice(2);
const flag = (name: string, fallback: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : fallback);
const positional = args.filter((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
const shared = path.resolve(packageRoot(), "..", "shared");
const [model, calib, val] = [positional[0] ?? path.join(shared, "models/mha26m-debian"), positional[1] ?? path.join(shared, "data/text/debian_train.txt"), positional[2] ?? path.join(shared, "data/text/debian_dev_val.txt")];
const splits = flag("--splits", "2:20,4:16,6:12,8:8,10:4").split(",").map((s) => s.split(":").map(Number) as [number, number]);
const orig = loadModel(model);
const windows = calibrationWindows(orig.tokenizer, readText(val), Number(flag("--windows", "16")), 256, orig.config.bosTokenId ?? 1, val);
const L = orig.config.layers;
// The original model's hidden states before every layer, per window.
const hidden: Tensor[][] = windows.map((ids) => {
  const hs = [orig.model.embedTokens(ids)];
  for (let l = 0; l < L; l++) hs.push(orig.model.layerForward(l, ids, hs[l]!));
  return hs;
});
const normed = (m: LlamaModel, l: number, h: Tensor) => m.backend.rmsnorm(h, m.weights.layers[l]!.inputNorm, m.config.rmsEps);
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "mha2mla-split-"));
const rows: { R: number; rank: number; errors: number[] }[] = [];
for (const [R, rank] of splits) {
  const out = path.join(scratch, `r${R}`);
  await convert(model, { rank, ropePairs: R, ropeStrategy: "2-norm", calib, out, force: true, progress: null, device: "cpu" });
  const conv = loadModel(out).model;
  const errors = Array.from({ length: L }, (_, l) => {
    let num = 0, den = 0;
    windows.forEach((ids, i) => {
      const x = normed(orig.model, l, hidden[i]![l]!);
      const [a, c] = [orig.model.attentionOf(l, ids, x).toArray(), conv.attentionOf(l, ids, x).toArray()];
      for (let j = 0; j < a.length; j++) [num, den] = [num + (a[j]! - c[j]!) ** 2, den + a[j]! ** 2];
    });
    return Math.sqrt(num / den);
  });
  rows.push({ R, rank, errors });
}
fs.rmSync(scratch, { recursive: true, force: true });
const mean = (e: number[]) => e.reduce((s, x) => s + x, 0) / e.length;
console.log(`| R, rank | ${Array.from({ length: L }, (_, l) => `layer ${l}`).join(" | ")} | mean |`);
console.log(`| --- | ${Array.from({ length: L + 1 }, () => "---").join(" | ")} |`);
for (const r of rows) console.log(`| ${r.R}, ${r.rank} | ${r.errors.map((e) => e.toFixed(3)).join(" | ")} | ${mean(r.errors).toFixed(3)} |`);
const best = Array.from({ length: L }, (_, l) => rows.reduce((a, r) => (r.errors[l]! < a.errors[l]! ? r : a)));
console.log(`| best per layer | ${best.map((r, l) => `${r.errors[l]!.toFixed(3)} (R ${r.R})`).join(" | ")} | ${mean(best.map((r, l) => r.errors[l]!)).toFixed(3)} |`);
