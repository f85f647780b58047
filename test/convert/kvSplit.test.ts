/**
 * `convert --kv-split per-layer`: the candidates spend exactly the budget's bytes; the chooser keeps,
 * per layer, the candidate with the lowest attention error, and that error is the one the written
 * conversion at that split has (measured independently, as bench/per-layer-split.ts does); bad
 * options are refused with the culprit named.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { budgetSplits, defaultSplitPairs, equalBudgetRank } from "../../src/convert/kvSplit.js";
import { convert } from "../../src/convert/pipeline.js";
import { loadModel, LlamaModel } from "../../src/model/llama.js";
import { calibrationWindows } from "../../src/ropeSelect/calibrate.js";
import { readText } from "../../src/eval/perplexity.js";
import { MlaError } from "../../src/errors.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { fastCpu, MODELS, tmpDir } from "../helpers.js";
import { PER_LAYER_BUDGET, PER_LAYER_CALIB, perLayerFixture } from "./helpers.js";

const STORIES = path.join(MODELS, "stories260K");
const bad = (re: RegExp) => (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message);

test("candidates: equal bytes per KV head (joint 2R + rank, split 2R + 2·rank), the bench's grid at R 4 rank 16, the budget's own split always in", () => {
  const joint = { ropePairs: 4, rank: 16, svd: "joint" as const, ropeDisjoint: false };
  assert.deepEqual(defaultSplitPairs(4, 64).slice(0, 5), [2, 4, 6, 8, 10]);
  assert.deepEqual(defaultSplitPairs(1, 8), [1, 2, 3, 4]);
  assert.deepEqual(defaultSplitPairs(0, 8), [0, 1, 2, 3, 4]);
  assert.deepEqual(defaultSplitPairs(3, 64).slice(0, 3), [1, 3, 5]);
  const shape26m = { kvHeads: 6, headDim: 64, hidden: 384 };
  assert.deepEqual(budgetSplits(shape26m, joint).map((s) => [s.ropePairs, s.rank]), [[2, 20], [4, 16], [6, 12], [8, 8], [10, 4]]);
  for (const s of budgetSplits(shape26m, joint)) assert.equal(6 * 2 * s.ropePairs + s.latentDim, 6 * 24);
  const split = { ...joint, svd: "split" as const };
  assert.equal(equalBudgetRank(split, 6), 14);
  for (const s of budgetSplits(shape26m, split)) assert.equal(s.latentDim, 2 * 6 * s.rank) ;
  assert.ok(budgetSplits(shape26m, split).every((s) => 2 * s.ropePairs + 2 * s.rank === 2 * 4 + 2 * 16));
  // stories260K (Hkv 4, Dh 8): every pair kept still leaves values to factor jointly.
  assert.deepEqual(budgetSplits({ kvHeads: 4, headDim: 8, hidden: 64 }, { ropePairs: 1, rank: 8, svd: "joint", ropeDisjoint: false }).map((s) => [s.ropePairs, s.rank]), [[1, 8], [2, 6], [3, 4], [4, 2]]);
  assert.deepEqual(budgetSplits(shape26m, joint, [8]).map((s) => s.ropePairs), [4, 8], "an explicit list, plus the budget's split");
  assert.throws(() => budgetSplits(shape26m, joint, [13]), bad(/--kv-split-pairs 13 .*budget leaves it rank -2/));
  assert.throws(() => budgetSplits(shape26m, joint, [33]), bad(/--kv-split-pairs 33 .*not an integer in 0…32/));
  assert.throws(() => budgetSplits(shape26m, { ...joint, ropeDisjoint: true }, [6]), bad(/--rope-disjoint/));
});

test("--kv-split options: per-layer needs --calib, --kv-split-pairs needs per-layer, --format deepseek refuses both", async () => {
  const out = path.join(tmpDir(), "x");
  await assert.rejects(convert(STORIES, { rank: 4, kvSplit: "per-layer", out, progress: null }), bad(/--kv-split per-layer needs calibration text/));
  await assert.rejects(convert(STORIES, { rank: 4, kvSplitPairs: [1, 2], out, progress: null }), bad(/^--kv-split-pairs has no effect without --kv-split per-layer \(the rope pairs it tries per layer\)\n {2}hint: add --kv-split per-layer, or leave --kv-split-pairs out$/));
  await assert.rejects(convert(STORIES, { rank: 4, kvSplit: "sideways" as never, out, progress: null }), bad(/--kv-split sideways is not known/));
  const { deepseekSettings } = await import("../../src/deepseek/export.js");
  assert.throws(() => deepseekSettings({ rank: 4, kvSplit: "per-layer" }), bad(/^--kv-split per-layer has no effect without --format mha2mla \(deepseek_v3 has one kv_lora_rank and one rope dim for every layer\)/));
  const dry = await convert(STORIES, { ...PER_LAYER_BUDGET, calib: PER_LAYER_CALIB, kvSplit: "per-layer", dryRun: true, progress: null });
  assert.deepEqual(dry.plan.settings.kvSplitPairs, [1, 2, 3, 4]);
});

/** Per layer, ‖converted − original‖/‖original‖ of the attention output with the original's hidden states as input (bench/per-layer-split.ts). */
function layerErrors(original: LlamaModel, converted: LlamaModel, windows: Int32Array[]): number[] {
  const c = original.config;
  const num = new Float64Array(c.layers), den = new Float64Array(c.layers);
  for (const ids of windows) {
    let h: Tensor = original.embedTokens(ids);
    for (let l = 0; l < c.layers; l++) {
      const x = original.backend.rmsnorm(h, original.weights.layers[l]!.inputNorm, c.rmsEps);
      const [a, y] = [original.attentionOf(l, ids, x).toArray(), converted.attentionOf(l, ids, x).toArray()];
      for (let j = 0; j < a.length; j++) [num[l], den[l]] = [num[l]! + (a[j]! - y[j]!) ** 2, den[l]! + a[j]! ** 2];
      h = original.layerForward(l, ids, h);
    }
  }
  return Array.from(num, (n, l) => Math.sqrt(n / den[l]!));
}

test("the chooser keeps each layer's lowest-error split, with the error the written conversion at that split has", async () => {
  const dir = await perLayerFixture();
  const record = JSON.parse(fs.readFileSync(path.join(dir, "mla_conversion.json"), "utf8")).kv_split as { candidates: { rope_pairs: number; rank: number }[]; chosen: { rope_pairs: number }[]; relative_error: number[][]; mean_error: { chosen: number; uniform: number } };
  assert.deepEqual(record.candidates.map((x) => [x.rope_pairs, x.rank]), [[1, 8], [2, 6], [3, 4], [4, 2]]);
  record.relative_error.forEach((errors, l) => {
    const best = errors.indexOf(Math.min(...errors));
    assert.equal(record.chosen[l]!.rope_pairs, record.candidates[best]!.rope_pairs, `layer ${l}: errors ${errors}`);
  });
  assert.ok(record.mean_error.chosen < record.mean_error.uniform);
  // Each candidate converted uniformly, the usual way, and measured from outside: the same errors
  // (measured on fastCpu()).
  const on = fastCpu();
  const original = loadModel(STORIES, on);
  const windows = calibrationWindows(original.tokenizer, readText(PER_LAYER_CALIB), 8, 256, 1);
  for (const [k, cand] of record.candidates.entries()) {
    if (k % 2 === 1) continue; // half of them keeps the test fast; the others are the same code
    const out = path.join(tmpDir(), `r${cand.rope_pairs}`);
    await convert(STORIES, { rank: cand.rank, ropePairs: cand.rope_pairs, ropeStrategy: "2-norm", calib: PER_LAYER_CALIB, calibSamples: 8, out, progress: null });
    const measured = layerErrors(original.model, loadModel(out, on).model, windows);
    measured.forEach((e, l) => assert.ok(Math.abs(e - record.relative_error[l]![k]!) < 1e-4, `R ${cand.rope_pairs}, layer ${l}: chooser ${record.relative_error[l]![k]} vs written ${e}`));
  }
  // The written per-layer model's layers are those conversions' layers.
  const measured = layerErrors(original.model, loadModel(dir, on).model, windows);
  measured.forEach((e, l) => assert.ok(Math.abs(e - Math.min(...record.relative_error[l]!)) < 1e-4, `layer ${l}: ${e}`));
});
