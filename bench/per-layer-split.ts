/**
 * Does the best split of a KV budget between rope pairs and latent dims differ from layer to layer?
 * For each split (R', rank') at the bytes of --rope-pairs/--rank (2R + rank per KV head), MODEL's
 * layers are converted (2-norm calibrated on CALIB, BKV) and scored as `convert --kv-split per-layer`
 * scores them (src/convert/splitChoice.ts): each layer's converted attention is fed the ORIGINAL
 * model's hidden states (so the error is the layer's own, not inherited), and its output compared
 * with the original attention's, ‖Δ‖/‖A‖, here over held-out windows of VAL rather than the
 * calibration windows. Prints a Markdown table (rows: splits; columns: layers) and each layer's best.
 * Run: npm run build && node dist/bench/per-layer-split.js [MODEL] [CALIB] [VAL] [--rope-pairs 4] [--rank 16] [--pairs 2,4,6,8,10] [--windows 16]
 */
import path from "node:path";
import { Checkpoint } from "../src/io/checkpoint.js";
import { loadModel } from "../src/model/llama.js";
import { calibrate, calibrationWindows } from "../src/ropeSelect/calibrate.js";
import { readText } from "../src/eval/perplexity.js";
import { packageRoot } from "../src/io/modelDir.js";
import { resolveSettings } from "../src/convert/plan.js";
import { LayerSource } from "../src/convert/layerSource.js";
import { chooseKvSplits } from "../src/convert/splitChoice.js";
import { selectBackend, selectLinalg } from "../src/backends/select.js";
import { useLinalg } from "../src/backends/native/linalg.js";
import { silentLogger } from "../src/util/log.js";

const args = process.argv.slice(2);
const flag = (name: string, fallback: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : fallback);
const positional = args.filter((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
const shared = path.resolve(packageRoot(), "..", "shared");
const [model, calib, val] = [positional[0] ?? path.join(shared, "models/mha26m-debian"), positional[1] ?? path.join(shared, "data/text/debian_train.txt"), positional[2] ?? path.join(shared, "data/text/debian_dev_val.txt")];
// The CPU backend and float64 library, as `convert --device cpu` uses them.
const orig = loadModel(model, { backend: selectBackend("cpu", silentLogger) });
const c = orig.config;
const settings = resolveSettings(c, { rank: Number(flag("--rank", "16")), ropePairs: Number(flag("--rope-pairs", "4")), ropeStrategy: "2-norm", calib, kvSplit: "per-layer", kvSplitPairs: flag("--pairs", "2,4,6,8,10").split(",").map(Number) }, silentLogger);
const stats = await calibrate(orig.model, calibrationWindows(orig.tokenizer, readText(calib), settings.calibSamples, settings.calibLen, c.bosTokenId ?? 1, calib), { covariance: false, progress: null });
const windows = calibrationWindows(orig.tokenizer, readText(val), Number(flag("--windows", "16")), 256, c.bosTokenId ?? 1, val);
useLinalg(selectLinalg("cpu", silentLogger));
const src = Checkpoint.open(orig.dir);
const choice = await chooseKvSplits(orig.model, windows, new LayerSource(src, c, settings, stats), settings, silentLogger, { progress: null });
src.close();
const L = c.layers;
const mean = (e: number[]) => e.reduce((s, x) => s + x, 0) / e.length;
console.log(`| R, rank | ${Array.from({ length: L }, (_, l) => `layer ${l}`).join(" | ")} | mean |`);
console.log(`| --- | ${Array.from({ length: L + 1 }, () => "---").join(" | ")} |`);
choice.candidates.forEach((s, k) => {
  const row = choice.errors.map((e) => e[k]!);
  console.log(`| ${s.ropePairs}, ${s.rank} | ${row.map((e) => e.toFixed(3)).join(" | ")} | ${mean(row).toFixed(3)} |`);
});
const best = choice.chosen.map((k, l) => choice.errors[l]![k]!);
console.log(`| best per layer | ${best.map((e, l) => `${e.toFixed(3)} (R ${choice.candidates[choice.chosen[l]!]!.ropePairs})`).join(" | ")} | ${mean(best).toFixed(3)} |`);
