/**
 * `convert --kv-split per-layer` factors each layer's chosen split once: the search keeps its winner's
 * factors (LayerSource.keep) and the writer takes them (LayerSource.take) instead of factoring the
 * layer again, and writes the very bytes it wrote when it did (MHA2MLA_KEPT_FACTORS_MB=0 is that
 * path; a golden is also made here the old way, one fresh factorization per layer). The search
 * disposes its activations and candidate blocks however it ends: a stop, or an error while scoring.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { referenceBackend } from "../../src/backends/reference/index.js";
import type { Backend } from "../../src/tensor/backend.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { encodeFromF32 } from "../../src/io/dtype.js";
import { readHfConfig } from "../../src/io/hfConfig.js";
import { factorTensors } from "../../src/convert/factor.js";
import { LayerSource } from "../../src/convert/layerSource.js";
import { convert, type ConvertOptions } from "../../src/convert/pipeline.js";
import { chooseKvSplits } from "../../src/convert/splitChoice.js";
import type { ConversionSettings } from "../../src/convert/plan.js";
import { loadModel } from "../../src/model/llama.js";
import { calibrationWindows } from "../../src/ropeSelect/calibrate.js";
import { readText } from "../../src/eval/perplexity.js";
import { MlaError } from "../../src/errors.js";
import { silentLogger } from "../../src/util/log.js";
import { MODELS, tmpDir } from "../helpers.js";
import { PER_LAYER_BUDGET, PER_LAYER_CALIB } from "./helpers.js";
import { trackLive } from "./liveTensors.js";

const STORIES = path.join(MODELS, "stories260K");
const LAYERS = readHfConfig(STORIES).layers;

/** Converts with `keptMb` (MHA2MLA_KEPT_FACTORS_MB; undefined = default), counting LayerSource.factor calls. */
async function convertCounting(opts: Omit<ConvertOptions, "out">, keptMb: string | undefined): Promise<{ out: string; factored: number; candidates: number }> {
  const out = path.join(tmpDir(), "mla");
  const factor = LayerSource.prototype.factor;
  const saved = process.env["MHA2MLA_KEPT_FACTORS_MB"];
  let factored = 0;
  LayerSource.prototype.factor = function (this: LayerSource, ...args: Parameters<typeof factor>) {
    factored++;
    return factor.apply(this, args);
  };
  if (keptMb === undefined) delete process.env["MHA2MLA_KEPT_FACTORS_MB"];
  else process.env["MHA2MLA_KEPT_FACTORS_MB"] = keptMb;
  try {
    await convert(STORIES, { ...opts, out, device: "cpu", progress: null });
  } finally {
    LayerSource.prototype.factor = factor;
    if (saved === undefined) delete process.env["MHA2MLA_KEPT_FACTORS_MB"];
    else process.env["MHA2MLA_KEPT_FACTORS_MB"] = saved;
  }
  const record = JSON.parse(fs.readFileSync(path.join(out, "mla_conversion.json"), "utf8")) as { kv_split: { candidates: unknown[] } };
  return { out, factored, candidates: record.kv_split.candidates.length };
}

/** The folder's files, mla_conversion.json without its timings and date. */
function contents(dir: string): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  for (const f of fs.readdirSync(dir).sort()) {
    let bytes = fs.readFileSync(path.join(dir, f));
    if (f === "mla_conversion.json") {
      const j = JSON.parse(bytes.toString("utf8")) as Record<string, unknown>;
      delete j["timings"];
      delete j["created"];
      bytes = Buffer.from(JSON.stringify(j));
    }
    files.set(f, bytes);
  }
  return files;
}

const CASES: { what: string; opts: Omit<ConvertOptions, "out"> }[] = [
  { what: "2-norm, joint SVD with BKV", opts: { ...PER_LAYER_BUDGET, ropeStrategy: "2-norm", calib: PER_LAYER_CALIB, calibSamples: 8, kvSplit: "per-layer" } },
  { what: "activation-aware split SVD", opts: { rank: 4, ropePairs: 1, svd: "split", svdInit: "activations", calib: PER_LAYER_CALIB, calibSamples: 4, calibLen: 64, kvSplit: "per-layer" } },
];

for (const { what, opts } of CASES)
  test(`per-layer split (${what}): each layer's chosen split is factored once, and the bytes written are those of factoring it again in the writer`, async () => {
    const reuse = await convertCounting(opts, undefined);
    const again = await convertCounting(opts, "0");
    assert.equal(reuse.factored, LAYERS * reuse.candidates, "the search's factorizations only");
    assert.equal(again.factored, LAYERS * reuse.candidates + LAYERS, "with nothing kept the writer factors every layer again (the old path)");
    const [a, b] = [contents(reuse.out), contents(again.out)];
    assert.deepEqual([...a.keys()], [...b.keys()]);
    for (const [f, bytes] of a) assert.ok(bytes.equals(b.get(f)!), `${f} differs`);
  });

test("per-layer split: the written attention tensors are byte for byte one fresh factorization of each layer's chosen split (the writer's old path)", async () => {
  const { out } = await convertCounting(CASES[0]!.opts, undefined);
  const src = Checkpoint.open(STORIES);
  const written = Checkpoint.open(out);
  try {
    const config = readHfConfig(STORIES);
    const record = JSON.parse(fs.readFileSync(path.join(out, "mla_conversion.json"), "utf8")) as { selection: number[][][]; kv_split: { chosen: { rank: number }[] } };
    // The weight SVD needs no calibration statistics: the recorded selection stands for the 2-norm scores.
    const fresh = new LayerSource(src, config, { ropeStrategy: "2-norm", ropeDisjoint: false, svd: "joint", balanceKv: true }, null);
    const ranks = new Set<number>();
    for (let l = 0; l < config.layers; l++) {
      const rank = record.kv_split.chosen[l]!.rank;
      ranks.add(rank);
      const tensors = factorTensors(await fresh.factor(l, rank, record.selection[l]!));
      for (const [name, values] of Object.entries(tensors)) {
        const full = `model.layers.${l}.self_attn.${name}`;
        if (!values) {
          assert.equal(written.has(full), false, full);
          continue;
        }
        const expected = encodeFromF32(written.entry(full).dtype, values);
        assert.ok(Buffer.from(written.readBytes(full)).equals(Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength)), `${full} differs`);
      }
    }
    assert.ok(ranks.size > 1, "the layers chose different splits");
  } finally {
    src.close();
    written.close();
  }
});

/**
 * `base` with the storage of the tensors the split search owns counted live from their making to their
 * free: the rmsnorm outputs and uploads it makes itself (not inside a model method), and what the
 * model methods it calls return (`watch`). The forward passes' own intermediates are left to the
 * garbage collector on the reference backend and are not counted. `failDownload` makes download throw
 * once, at its `at`-th call.
 */
function countingBackend(base: Backend): { backend: Backend; live: Set<unknown>; failDownload: { at: number; seen: number }; watch: (model: object, methods: string[]) => void } {
  const failDownload = { at: -1, seen: 0 };
  let inside = 0;
  const { backend, live, add } = trackLive(base, {
    counted: (key) => key === "rmsnorm" || key === "upload",
    inside: () => inside > 0,
    wrap: (key, f, receiver) =>
      key === "download"
        ? (t: unknown) => {
            if (++failDownload.seen === failDownload.at) throw new Error("download failed");
            return f.call(receiver, t);
          }
        : undefined,
  });
  const watch = (model: object, methods: string[]) => {
    const m = model as Record<string, (...a: unknown[]) => unknown>;
    for (const name of methods) {
      const f = m[name]!.bind(model);
      m[name] = (...args: unknown[]) => {
        inside++;
        try {
          return add(f(...args));
        } finally {
          inside--;
        }
      };
    }
  };
  return { backend, live, failDownload, watch };
}

test("the split search disposes its activations and candidate blocks when it ends normally, on a stop, and on an error while scoring", async () => {
  const { backend, live, failDownload, watch } = countingBackend(referenceBackend);
  const loaded = loadModel(STORIES, { backend });
  const original = loaded.model;
  watch(original, ["embedTokens", "layerForward", "attentionOf"]);
  const windows = calibrationWindows(loaded.tokenizer, readText(PER_LAYER_CALIB), 3, 32, 1);
  const src = Checkpoint.open(STORIES);
  const settings = { ...PER_LAYER_BUDGET, ropeStrategy: "high", ropeDisjoint: false, svd: "joint", balanceKv: true, kvSplitPairs: null } as unknown as ConversionSettings;
  const source = new LayerSource(src, original.config, settings, null, undefined, 2 ** 30);
  const before = new Set(live); // the model's weights
  const leaked = () => [...live].filter((s) => !before.has(s)).length;
  await chooseKvSplits(original, windows, source, settings, silentLogger, { progress: null });
  assert.equal(leaked(), 0, "a whole run");
  // A stop in layer 1, between a candidate's factorization and its scoring.
  const c = new AbortController();
  let factored = 0;
  const stopping = { pairs: source.pairs.bind(source), factor: async (l: number, rank: number, sel: number[][]) => (++factored === 6 && c.abort(new Error("enough")), source.factor(l, rank, sel)) };
  await assert.rejects(chooseKvSplits(original, windows, stopping, settings, silentLogger, { progress: null, signal: c.signal }), (e) => e instanceof MlaError && e.code === "INTERRUPTED");
  assert.equal(factored, 6);
  assert.equal(leaked(), 0, "a stop");
  // An error in the scoring pass of a candidate (its block uploaded) in layer 1: downloads are the
  // targets (one per window) then one per window and candidate.
  failDownload.seen = 0;
  failDownload.at = 2 * windows.length + 4 * windows.length + 2;
  await assert.rejects(chooseKvSplits(original, windows, source, settings, silentLogger, { progress: null }), /download failed/);
  failDownload.at = -1;
  assert.equal(leaked(), 0, "an error while scoring");
  src.close();
});
