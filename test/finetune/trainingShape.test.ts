/**
 * The fine-tune's memory check made before a conversion (pipeline) estimates from the shapes the
 * conversion settings give (mlaShapes, deepseekShapes): configShape counts the weights the converted
 * model loads, all and the attention's, as trainableCount does on it (for --kv-split per-layer, no
 * more: a lower bound), and counts their float32 bytes as taken from the free memory.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { convert } from "../../src/convert/pipeline.js";
import { mlaShapes, resolveSettings, type SettingsInput } from "../../src/convert/plan.js";
import { convertDeepseek, deepseekShape, deepseekShapes } from "../../src/deepseek/export.js";
import { MlaError } from "../../src/errors.js";
import { checkFits, configShape, trainableCount } from "../../src/finetune/trainState.js";
import { readHfConfig } from "../../src/io/hfConfig.js";
import { loadModel } from "../../src/model/llama.js";
import { silentLogger } from "../../src/util/log.js";
import { GOLDEN, MODELS, tmpDir } from "../helpers.js";
import { PER_LAYER_BUDGET, PER_LAYER_CALIB, perLayerFixture } from "../convert/helpers.js";

const b = new ReferenceBackend("f32");

/** The element counts trainableCount gives the converted model in `dir` (--train all, --train attention). */
function loadedCounts(dir: string): { all: number; attention: number } {
  const { model } = loadModel(dir, { backend: b, weights: "f32" });
  try {
    return { all: trainableCount(model, () => true), attention: trainableCount(model, (p) => p.includes(".attn.")) };
  } finally {
    model.dispose();
  }
}

test("configShape on the conversion's shapes counts the converted model's weights (MLA with biases, EG-MLA, split SVD, deepseek_v3; per-layer splits no more than they hold)", async () => {
  const tiny = path.join(GOLDEN, "tiny-llama3");
  const settings: SettingsInput[] = [
    { rank: 2, ropePairs: 2, ropeStrategy: "uniform" },
    { rank: 2, ropePairs: 2, ropeStrategy: "uniform", attention: "eg-mla", gateDim: 4 },
    { rank: 2, ropePairs: 1, ropeStrategy: "uniform", svd: "split" },
  ];
  const c = readHfConfig(tiny);
  for (const s of settings) {
    const out = path.join(tmpDir(), "mla");
    await convert(tiny, { ...s, out, progress: null });
    assert.deepEqual(configShape(mlaShapes(c, resolveSettings(c, s, silentLogger)), b).params, loadedCounts(out), JSON.stringify(s));
  }

  const stories = path.join(MODELS, "stories260K");
  const sc = readHfConfig(stories);
  const ds = path.join(tmpDir(), "deepseek");
  await convertDeepseek(stories, { rank: 2, ropePairs: 1, balanceKv: false, out: ds, progress: null, device: "cpu" });
  const { ropeDim: dr, kvLoraRank: rk } = deepseekShape(sc, { rank: 2, ropePairs: 1 });
  assert.deepEqual(configShape(deepseekShapes(sc, { dr, rk, attentionBias: true }), b).params, loadedCounts(ds), "deepseek_v3");

  // Per layer: the candidate with the most rope pairs, which no layer's choice has more weights than.
  const s = resolveSettings(sc, { ...PER_LAYER_BUDGET, ropeStrategy: "2-norm", calib: PER_LAYER_CALIB, calibSamples: 8, kvSplit: "per-layer" }, silentLogger);
  const low = configShape(mlaShapes(sc, s, s.kvSplitPairs!.at(-1)), b).params;
  const chosen = loadedCounts(await perLayerFixture());
  assert.ok(low.all <= chosen.all && low.attention <= chosen.attention, `${JSON.stringify(low)} ≤ ${JSON.stringify(chosen)}`);
});

test("the memory check of a model not loaded yet counts its float32 weights as taken, and says so", () => {
  const dev = new ReferenceBackend("f32");
  const withFree = (free: number) => Object.assign(dev, { memory: () => ({ free, total: 2 * free, live: 0, peak: 0 }) });
  const choice = { train: "all" as const, checkpoint: false };
  const fits = (m: Parameters<typeof checkFits>[0]) => {
    try {
      checkFits(m, choice, "f32", 255);
      return true;
    } catch {
      return false;
    }
  };
  /** The least free memory (bytes) in which `m`'s run fits. */
  const least = (m: Parameters<typeof checkFits>[0]) => {
    let [lo, hi] = [0, 2 ** 40];
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      withFree(mid);
      if (fits(m)) hi = mid;
      else lo = mid;
    }
    return hi;
  };
  const stories = path.join(MODELS, "stories260K");
  const shape = configShape(readHfConfig(stories), dev);
  assert.equal(shape.unloaded, 4 * shape.params.all);
  const { model } = loadModel(stories, { backend: dev, weights: "f32" });
  try {
    assert.equal(least(shape), least(model) + shape.unloaded, "the same need, with the weights still to load");
  } finally {
    model.dispose();
  }
  withFree(least(shape) - 1);
  assert.throws(
    () => checkFits(shape, choice, "f32", 255),
    (e: unknown) => e instanceof MlaError && e.code === "OUT_OF_MEMORY" && /beyond the float32 weights it will load \([\d.]+ GiB\)/.test(e.message) && /free of [\d.]+ GiB once they are loaded/.test(e.message),
  );
});
