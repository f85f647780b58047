/**
 * The mha2mla section of config.json: a uniform conversion writes today's scalars under
 * format_version 1 (nothing new in its config), a per-layer one arrays under version 2; either reads
 * back to the same splits; a section that disagrees with itself or the model is refused, naming the
 * field, the layer and what was expected.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { mlaSection, parseMlaSection } from "../../src/io/mlaSection.js";
import { readHfConfig } from "../../src/io/hfConfig.js";
import type { MlaAttention } from "../../src/model/config.js";
import { MlaError } from "../../src/errors.js";
import { MODELS, tmpDir } from "../helpers.js";
import { convert } from "../../src/convert/pipeline.js";
import { perLayerFixture } from "../convert/helpers.js";

const SHAPE = { layers: 2, kvHeads: 2, headDim: 8 };
const settings = { ropeStrategy: "uniform", ropeDisjoint: false, svdInit: "weights" };
const split = (ropePairs: number, rank: number) => ({ ropePairs, rank, latentDim: rank * 2 });
const perLayer: MlaAttention = { kind: "mla", splits: [split(1, 4), split(2, 2)], selection: [[[0], [2]], [[0, 2], [1, 3]]], svd: "joint", gateDim: 0 };

test("uniform: format_version 1 with scalars, exactly the keys conversions have always written", async () => {
  const out = path.join(tmpDir(), "u");
  await convert(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, ropeStrategy: "uniform", out, progress: null });
  const m = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8")).mha2mla;
  assert.deepEqual(Object.keys(m), ["format_version", "rope_pairs", "rope_strategy", "rank", "latent_dim", "svd", "svd_init", "selection"]);
  assert.deepEqual([m.format_version, m.rope_pairs, m.rank, m.latent_dim], [1, 1, 2, 8]);
});

test("per-layer: format_version 2 with one entry per layer, read back to the same splits", async () => {
  const m = mlaSection(perLayer, settings);
  assert.equal(m["format_version"], 2);
  assert.deepEqual([m["rope_pairs"], m["rank"], m["latent_dim"]], [[1, 2], [4, 2], [8, 4]]);
  assert.deepEqual(parseMlaSection(JSON.parse(JSON.stringify(m)), "config.json", SHAPE), perLayer);
  const written = JSON.parse(fs.readFileSync(path.join(await perLayerFixture(), "config.json"), "utf8")).mha2mla;
  assert.equal(written.format_version, 2);
  assert.equal(written.rope_pairs.length, 5);
  const a = readHfConfig(await perLayerFixture()).attention as MlaAttention;
  assert.deepEqual(a.splits.map((s) => s.ropePairs), written.rope_pairs);
});

test("a section that disagrees with itself or the model is refused, naming the field and the layer", () => {
  const good = JSON.parse(JSON.stringify(mlaSection(perLayer, settings)));
  const refuses = (edit: (m: Record<string, unknown>) => void, re: RegExp) => {
    const m = JSON.parse(JSON.stringify(good));
    edit(m);
    assert.throws(() => parseMlaSection(m, "model/config.json", SHAPE), (e: unknown) => e instanceof MlaError && e.code === "BAD_CONFIG" && re.test(e.message) && /hint: /.test(e.message), re.source);
  };
  refuses((m) => (m["rope_pairs"] = [1]), /model\/config\.json: mha2mla\.rope_pairs has 1 entries, the model has 2 layers\n.*one entry per layer/);
  refuses((m) => (m["rope_pairs"] = [1, 5]), /mha2mla\.rope_pairs\[1\] 5 is not in 0…4/);
  refuses((m) => (m["rank"] = [4, 0]), /mha2mla\.rank\[1\] 0 is not a positive integer/);
  refuses((m) => (m["latent_dim"] = [8, 6]), /mha2mla\.latent_dim\[1\] 6 disagrees with rank 2 × 2 KV heads \(joint\): expected 4/);
  refuses((m) => (m["latent_dim"] = 8), /mha2mla\.latent_dim 8 disagrees with rank 2 × 2 KV heads \(joint\): expected 4/);
  refuses((m) => ((m["selection"] as number[][][])[1] = [[0], [1]]), /mha2mla\.selection\[1\] is not \[2 KV heads\]\[2 ascending pair indices < 4\] \(rope_pairs of layer 1 is 2\)/);
  refuses((m) => (m["format_version"] = 3), /format_version is 3, this version reads 1 and 2/);
  assert.equal(parseMlaSection(undefined, "config.json", SHAPE), null);
});
