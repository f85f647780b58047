// `--no-attention-bias`: the deepseek_v3 form vLLM and SGLang serve as written. No bias tensors and
// attention_bias false; our runtime runs it without biases and computes the stock DeepseekV3 formula
// (checked against a float64 transcription of transformers' DeepseekV3Attention, itself checked on the
// biased fixture folder whose stock logits we match); kv_a_layernorm's γ is the least-squares fit
// (against a float64 reference, and recomputed layer by layer from the written folder); refusals.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { convertDeepseek } from "../../src/deepseek/export.js";
import { exportDeepseek } from "../../src/deepseek/fromMla.js";
import { LatentNormMoments } from "../../src/deepseek/latentNorm.js";
import { SERVING_BIAS_NOTE, servingWarnings, convertRemedy } from "../../src/deepseek/serving.js";
import { convert } from "../../src/convert/pipeline.js";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { loadModel } from "../../src/model/llama.js";
import { layerPrefix, type DeepseekWeights } from "../../src/model/weights.js";
import { paramNodes, trainableLeaves } from "../../src/model/params.js";
import { Ops } from "../../src/tensor/autograd.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { inspectModel } from "../../src/eval/inspect.js";
import { evaluate } from "../../src/eval/evaluate.js";
import { MlaError } from "../../src/errors.js";
import type { Logger } from "../../src/util/log.js";
import { fewerWindowsNote } from "../../src/convert/calibrationNeeds.js";
import type { ProgressSink } from "../../src/util/progress.js";
import { FIXTURES, GOLDEN, MODELS, tmpDir } from "../helpers.js";
import { stockAttention } from "./stockAttention.js";

const CALIB = path.join(FIXTURES, "text", "tinystories.txt");
const TEXT = path.join(FIXTURES, "text", "tinystories_25k.txt");
const STORIES = path.join(MODELS, "stories260K");
const IDS = Int32Array.from([1, 403, 57, 22, 301, 9, 77, 120, 5, 260, 13]);
const MAIN = path.join(FIXTURES, "..", "dist", "src", "cli", "main.js");

let converted: string | null = null;
/** stories260K → deepseek_v3 without attention biases (R 1, rank 2: rope key 8 dims, kv_lora_rank 8). */
async function biasFree(): Promise<string> {
  if (converted) return converted;
  const out = path.join(tmpDir(), "bf");
  await convertDeepseek(STORIES, { rank: 2, ropePairs: 1, calib: CALIB, attentionBias: false, out, progress: null, device: "cpu" });
  return (converted = out);
}

/** The float64 γ of the brief: γ_i = E[c_i²/r] / E[c_i²/r²], r = √(mean_j c_j² + 1e-6), written out directly. */
function referenceGamma(c: ArrayLike<number>, T: number, rk: number): Float64Array {
  const num = new Float64Array(rk);
  const den = new Float64Array(rk);
  for (let t = 0; t < T; t++) {
    let s = 0;
    for (let i = 0; i < rk; i++) s += c[t * rk + i]! * c[t * rk + i]!;
    const r = Math.sqrt(s / rk + 1e-6);
    for (let i = 0; i < rk; i++) {
      num[i] += (c[t * rk + i]! * c[t * rk + i]!) / r;
      den[i] += (c[t * rk + i]! * c[t * rk + i]!) / (r * r);
    }
  }
  return Float64Array.from(num, (n, i) => (den[i]! > 0 ? n / den[i]! : 1));
}

/** Σ over tokens of (c_i − γ_i·c_i/r)² for channel i. */
function channelLoss(c: ArrayLike<number>, T: number, rk: number, i: number, g: number): number {
  let loss = 0;
  for (let t = 0; t < T; t++) {
    let s = 0;
    for (let j = 0; j < rk; j++) s += c[t * rk + j]! ** 2;
    const r = Math.sqrt(s / rk + 1e-6);
    loss += (c[t * rk + i]! - (g * c[t * rk + i]!) / r) ** 2;
  }
  return loss;
}

test("the γ fit equals a float64 reference, is the per-channel least-squares optimum, and is exact where every token has one RMS", () => {
  const T = 300, rk = 6;
  let seed = 11;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648 - 0.5) * 2;
  // Channel scales from 1e-3 to 10, token scales spread 10×, one channel always zero (padding).
  const c = new Float32Array(T * rk);
  for (let t = 0; t < T; t++) {
    const scale = 0.3 + 3 * Math.abs(rand());
    for (let i = 0; i < rk - 1; i++) c[t * rk + i] = rand() * scale * 10 ** (i - 3);
  }
  const m = new LatentNormMoments(rk);
  m.add(c.subarray(0, 100 * rk), 100);
  m.add(c.subarray(100 * rk), T - 100);
  const g = m.gamma();
  const want = referenceGamma(c, T, rk);
  for (let i = 0; i < rk; i++) assert.ok(Math.abs(g[i]! - want[i]!) <= 1e-12 * Math.abs(want[i]!), `channel ${i}: ${g[i]} vs ${want[i]}`);
  assert.equal(g[rk - 1], 1, "a channel that is always zero keeps γ 1");
  for (let i = 0; i < rk - 1; i++) {
    const best = channelLoss(c, T, rk, i, g[i]!);
    for (const d of [1e-3, -1e-3]) assert.ok(channelLoss(c, T, rk, i, g[i]! * (1 + d)) > best, `channel ${i}: γ·(1${d > 0 ? "+" : "−"}1e-3) does better`);
  }
  assert.ok(m.relativeError(g) > 0.05 && m.relativeError(g) < m.relativeError(new Float64Array(rk).fill(1)), "an RMS that varies over tokens leaves an error, smaller than γ = 1's");
  // Every token at the same RMS r0: the norm is c/r0 for every token, and γ = r0 undoes it exactly.
  const same = new Float32Array(T * rk);
  for (let t = 0; t < T; t++) {
    let s = 0;
    for (let i = 0; i < rk; i++) s += (same[t * rk + i] = rand() + (i === 0 ? 2 : 0)) ** 2;
    const k = 1.7 / Math.sqrt(s / rk);
    for (let i = 0; i < rk; i++) same[t * rk + i] = same[t * rk + i]! * k;
  }
  const e = new LatentNormMoments(rk);
  e.add(same, T);
  for (const x of e.gamma()) assert.ok(Math.abs(x - Math.sqrt(1.7 ** 2 + 1e-6)) < 1e-5, `γ ${x} vs r0 ${Math.sqrt(1.7 ** 2 + 1e-6)}`);
  assert.ok(e.relativeError(e.gamma()) < 1e-4);
});

test("convert --no-attention-bias writes no bias tensor and attention_bias false; our runtime loads it without biases (and trains no bias)", async () => {
  const dir = await biasFree();
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
  assert.equal(cfg.attention_bias, false);
  assert.equal(cfg.kv_lora_rank, 8, "the same KV bytes as the biased default: every channel is learned");
  const ck = Checkpoint.open(dir);
  assert.deepEqual(ck.names().filter((n) => n.endsWith(".bias")), []);
  assert.deepEqual(ck.entry(layerPrefix(0) + "self_attn.kv_a_proj_with_mqa.weight").shape, [8 + 8, 64]);
  ck.close();
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, "mla_conversion.json"), "utf8"));
  assert.equal(manifest.settings.attention_bias, false);
  assert.equal(manifest.constant_channel_beta, undefined);
  assert.equal(manifest.kv_a_layernorm_fit.relative_error.length, 5);
  const { model } = loadModel(dir, { backend: new ReferenceBackend("f64") });
  for (const lw of model.weights.layers) {
    const w = lw.attn as DeepseekWeights;
    assert.equal(w.kvABias, null);
    assert.equal(w.oBias, null);
  }
  const leaves = trainableLeaves(paramNodes(new Ops(model.backend, null), model.weights, (p) => p.startsWith("layers.0.attn.")));
  assert.deepEqual(leaves.map((l) => l.path.split(".").pop()).sort(), ["kvA", "kvB", "kvNorm", "o", "q"]);
  // Decode on the latent cache (kv_b absorbed) gives the prefill logits here too.
  const full = model.forward(IDS).toArray();
  const V = model.config.vocabSize;
  const cache = model.newCache();
  for (let t = 0; t < IDS.length; t++) {
    const step = model.forward(IDS.subarray(t, t + 1), cache).toArray();
    for (let v = 0; v < V; v++) assert.ok(Math.abs(step[v]! - full[t * V + v]!) < 1e-9, `token ${t}`);
  }
});

test("our runtime's attention on the bias-free folder is stock DeepseekV3's formula (the transcription matches our runtime on the biased folder too, which matches stock logits)", async () => {
  const biased = path.join(tmpDir(), "biased");
  await convertDeepseek(STORIES, { rank: 2, ropePairs: 1, calib: CALIB, out: biased, progress: null, device: "cpu" });
  assert.ok(fs.existsSync(path.join(GOLDEN, "stories260K_deepseek.safetensors")), "the stock-logits fixture the biased runtime is held to");
  for (const dir of [biased, await biasFree()]) {
    const B = new ReferenceBackend("f64");
    const { model } = loadModel(dir, { backend: B });
    const T = IDS.length, D = model.config.hiddenSize;
    for (const layer of [0, 3]) {
      // The layer's real input: the hidden states before it, through its input norm.
      let h = model.embedTokens(IDS);
      for (let l = 0; l < layer; l++) h = model.layerForward(l, IDS, h);
      const x = B.rmsnorm(h, model.weights.layers[layer]!.inputNorm, model.config.rmsEps);
      const got = model.attentionOf(layer, IDS, x).toArray();
      const want = stockAttention(dir, layer, Float64Array.from(x.toArray()), T);
      let diff = 0, scale = 0;
      for (let i = 0; i < T * D; i++) [diff, scale] = [Math.max(diff, Math.abs(got[i]! - want[i]!)), Math.max(scale, Math.abs(want[i]!))];
      assert.ok(diff / scale < 1e-7, `${path.basename(dir)} layer ${layer}: max |Δ| ${diff} against ${scale}`);
    }
  }
});

test("the written γ is the fit on the calibration latents of the bias-free model itself, layer by layer", async () => {
  const dir = await biasFree();
  const B = new ReferenceBackend("f64");
  const { model, tokenizer } = loadModel(dir, { backend: B });
  const { calibrationWindows, readTextOrJsonl } = await import("../../src/ropeSelect/calibrate.js");
  const windows = calibrationWindows(tokenizer, readTextOrJsonl(CALIB), 32, 256, model.config.bosTokenId, CALIB);
  const rk = 8;
  let hs = windows.map((w) => model.embedTokens(w));
  for (let l = 0; l < model.config.layers; l++) {
    const lw = model.weights.layers[l]!;
    const w = lw.attn as DeepseekWeights;
    const lat: number[] = [];
    let T = 0;
    for (const h of hs) {
      const kv = B.linear(B.rmsnorm(h, lw.inputNorm, model.config.rmsEps), w.kvA, null).toArray();
      for (let t = 0; t < h.shape[0]!; t++) for (let i = 0; i < rk; i++) lat.push(kv[t * (rk + 8) + i]!);
      T += h.shape[0]!;
    }
    const want = referenceGamma(lat, T, rk);
    const got = w.kvNorm.toArray();
    for (let i = 0; i < rk; i++) assert.ok(Math.abs(got[i]! - want[i]!) < 1e-5 * Math.abs(want[i]!), `layer ${l} channel ${i}: written ${got[i]}, refit ${want[i]}`);
    hs = hs.map((h, i) => model.layerForward(l, windows[i]!, h));
  }
});

test("export --no-attention-bias: no biases, kv_lora_rank = the latent (padding gets zero rows and γ 1), NLL near the exact export's", async () => {
  const mla = path.join(tmpDir(), "mla");
  await convert(STORIES, { rank: 2, ropePairs: 1, ropeDisjoint: true, calib: CALIB, out: mla, progress: null, device: "cpu" });
  const exact = path.join(tmpDir(), "ex-exact");
  const free = path.join(tmpDir(), "ex-free");
  const e = { evalText: TEXT, evalTokens: 2000, progress: null, device: "cpu" as const };
  const a = await exportDeepseek(mla, { out: exact, ...e });
  const b = await exportDeepseek(mla, { out: free, attentionBias: false, calib: CALIB, ...e });
  assert.equal(b.kvLoraRank, a.kvLoraRank - 1, "no constant channel");
  assert.equal(b.latentNormError!.length, 5);
  assert.equal(JSON.parse(fs.readFileSync(path.join(free, "config.json"), "utf8")).attention_bias, false);
  const ck = Checkpoint.open(free);
  assert.deepEqual(ck.names().filter((n) => n.endsWith(".bias")), []);
  ck.close();
  // Not exact, but far from zeroing the exact export's biases (docs/deepseek.md: 4.28 → 9.51 here).
  assert.ok(b.eval!.after > a.eval!.after && b.eval!.after < a.eval!.after + 0.5, `exact ${a.eval!.after}, bias-free ${b.eval!.after}`);
  // The records: the exact export read no text; the bias-free one says which windows its fit read.
  const manifest = (dir: string) => JSON.parse(fs.readFileSync(path.join(dir, "mla_conversion.json"), "utf8"));
  assert.deepEqual(manifest(exact).settings, { attention_bias: true });
  assert.equal(manifest(exact).calibration, undefined);
  assert.deepEqual(manifest(free).settings, { attention_bias: false, calib: CALIB, calib_samples: 32, calib_len: 256 });
  assert.equal(manifest(free).calibration.file, CALIB);
  const padded = path.join(tmpDir(), "ex-free-pad");
  await exportDeepseek(mla, { out: padded, attentionBias: false, calib: CALIB, kvLoraRank: 12, ropeDim: 10, progress: null, device: "cpu" });
  const pk = Checkpoint.open(padded);
  const kvA = pk.readF32(layerPrefix(0) + "self_attn.kv_a_proj_with_mqa.weight");
  assert.ok(kvA.subarray(8 * 64, 12 * 64).every((v) => v === 0), "padding channels have zero kv_a rows");
  assert.deepEqual([...pk.readF32(layerPrefix(0) + "self_attn.kv_a_layernorm.weight").subarray(8)], [1, 1, 1, 1]);
  pk.close();
  const nll = async (dir: string) => (await evaluate(dir, { text: TEXT, tokens: 2000, ctx: 256, progress: null, device: "cpu" })).nll!;
  assert.ok(Math.abs((await nll(padded)) - b.eval!.after) < 0.05, "padding changes the RMS's mean but γ absorbs it");
  assert.match(inspectModel(free).deepseek!.serving, /no attention biases, so vLLM and SGLang compute the model transformers does$/);
  assert.doesNotMatch(inspectModel(free).deepseek!.serving, /drop/);
  assert.match(inspectModel(exact).deepseek!.serving, /vLLM and SGLang drop its kv_a_proj_with_mqa and o_proj biases/);
});

test("with --refit-output and --svd-init activations the bias-free form still writes no bias (the norm is fitted before o_proj is refit)", async () => {
  const out = path.join(tmpDir(), "bf-refit");
  const r = await convertDeepseek(STORIES, { rank: 2, ropePairs: 1, calib: CALIB, attentionBias: false, refitOutput: true, svdInit: "activations", out, progress: null, device: "cpu" });
  assert.equal(r.latentNormError!.length, 5);
  const ck = Checkpoint.open(out);
  assert.deepEqual(ck.names().filter((n) => n.endsWith(".bias")), []);
  ck.close();
  const manifest = JSON.parse(fs.readFileSync(path.join(out, "mla_conversion.json"), "utf8"));
  assert.ok(manifest.output_refit && manifest.kv_a_layernorm_fit);
});

test("serving warnings name the dropped biases only for a folder that has them", () => {
  assert.deepEqual(servingWarnings(512, 64, 32, "", false), []);
  assert.deepEqual(servingWarnings(512, 64, 32, ""), [SERVING_BIAS_NOTE]);
  assert.match(SERVING_BIAS_NOTE, /--no-attention-bias/);
  assert.match(convertRemedy(128, 512, false), /^For the fused kernels/);
  assert.match(convertRemedy(128, 511, false), /need head_dim ≥ 64 and 512 latent dims/, "no constant channel: 512 learned dims");
  const dry = (...flags: string[]) => spawnSync(process.execPath, [MAIN, "convert", "stories260K", "--format", "deepseek", "--rank", "2", "--rope-pairs", "1", "--dry-run", "--calib", CALIB, ...flags], { encoding: "utf8" });
  const [withBias, without] = [dry(), dry("--no-attention-bias")];
  assert.equal(without.status, 0, without.stderr);
  assert.match(withBias.stderr, /skip the folder's biases on load/);
  assert.doesNotMatch(without.stderr, /biases on load/);
});

test("refused with the reason: no calibration text, --calib where nothing reads it, a latent past the hidden size, q/k/v biases, the flag without --format deepseek", async () => {
  const needsCalib = (e: unknown) => e instanceof MlaError && /--no-attention-bias needs calibration text/.test(e.message) && /--calib FILE/.test(e.message);
  for (const dryRun of [true, false]) await assert.rejects(convertDeepseek(STORIES, { rank: 2, ropePairs: 1, attentionBias: false, dryRun, out: path.join(tmpDir(), "x"), progress: null }), needsCalib);
  const mla = path.join(tmpDir(), "mla-r");
  await convert(STORIES, { rank: 2, ropePairs: 1, ropeDisjoint: true, out: mla, progress: null, device: "cpu" });
  await assert.rejects(exportDeepseek(mla, { out: path.join(tmpDir(), "x"), attentionBias: false, progress: null }), needsCalib);
  await assert.rejects(exportDeepseek(mla, { out: path.join(tmpDir(), "x"), calib: CALIB, calibLen: 64, progress: null }), (e: unknown) => e instanceof MlaError && /^--calib and --calib-len have no effect without --no-attention-bias \(calibration settings of the kv_a_layernorm fit; the exact export reads no text\)\n {2}hint: add --no-attention-bias, or leave --calib and --calib-len out$/.test(e.message));
  // stories260K: at most min(2·4·8, 64) = 64 learned latent dims; the constant channel made it 65.
  await convertDeepseek(STORIES, { rank: 2, ropePairs: 1, kvLoraRank: 65, dryRun: true, progress: null });
  await assert.rejects(convertDeepseek(STORIES, { rank: 2, ropePairs: 1, kvLoraRank: 65, attentionBias: false, calib: CALIB, dryRun: true, progress: null }), (e: unknown) => e instanceof MlaError && /kv_lora_rank 65 is out of range 2…64/.test(e.message));
  await assert.rejects(convertDeepseek(path.join(GOLDEN, "tiny-qwen2"), { rank: 2, attentionBias: false, calib: CALIB, out: path.join(tmpDir(), "q"), progress: null }), (e: unknown) => e instanceof MlaError && /q\/k\/v biases/.test(e.message));
  const r = spawnSync(process.execPath, [MAIN, "convert", "stories260K", "--rank", "2", "--no-attention-bias", "--dry-run"], { encoding: "utf8" });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /--no-attention-bias has no effect without --format deepseek/);
});

test("a --calib holding fewer windows than asked is noted by export and convert --format deepseek as convert notes it; the kv_a_layernorm fit and the o_proj refit count their progress in layers", async () => {
  const mla = path.join(tmpDir(), "mla-short");
  await convert(STORIES, { rank: 2, ropePairs: 1, ropeStrategy: "uniform", ropeDisjoint: true, out: mla, progress: null, device: "cpu" });
  const heard = async (work: (o: { logger: Logger; progress: ProgressSink }) => Promise<unknown>) => {
    const logged: string[] = [];
    const printed: string[] = [];
    await work({ logger: { info: (m) => void logged.push(m), warn: () => {} }, progress: { write: (s) => void printed.push(s) } });
    return { logged, printed };
  };
  // tinystories.txt: 5 windows of 256 tokens.
  const note = (why: string) => `note: ${CALIB} holds 5 calibration windows of 256 tokens (${why})`;
  const counts = (printed: string[], label: string) => printed.filter((l) => l.startsWith(label + " ")).map((l) => l.slice(label.length + 1).split(" (")[0]);
  const ex = await heard((o) => exportDeepseek(mla, { out: path.join(tmpDir(), "ex"), attentionBias: false, calib: CALIB, device: "cpu", ...o }));
  assert.ok(ex.logged.includes(note("the default is 32")), ex.logged.join("\n"));
  assert.deepEqual(counts(ex.printed, "fit kv_a_layernorm"), ["1/5 layers", "5/5 layers"]);
  const ds = await heard((o) => convertDeepseek(STORIES, { rank: 2, ropePairs: 1, calib: CALIB, calibSamples: 8, attentionBias: false, refitOutput: true, out: path.join(tmpDir(), "ds"), device: "cpu", ...o }));
  assert.ok(ds.logged.includes(note("asked for 8")), ds.logged.join("\n"));
  assert.deepEqual(counts(ds.printed, "fit kv_a_layernorm"), ["1/5 layers", "5/5 layers"]);
  assert.deepEqual(counts(ds.printed, "refit o_proj"), ["1/5 layers", "5/5 layers"]);
  const ours = await heard((o) => convert(STORIES, { rank: 2, ropePairs: 1, calib: CALIB, calibSamples: 8, dryRun: true, ...o }));
  assert.ok(ours.logged.includes(note("asked for 8")), ours.logged.join("\n"));
  const five = Array.from({ length: 5 }, () => new Int32Array(256));
  assert.equal(fewerWindowsNote(CALIB, five, 5, 256), null, "as many as asked: no note");
  assert.equal(fewerWindowsNote(undefined, [], undefined, 256), null, "no text: no note");
  // The pipeline's command line fills the default in: a count equal to it reads as the default.
  assert.equal(fewerWindowsNote(CALIB, five, 32, 256), note("the default is 32"));
  // The command line passes --calib-samples as given: a default is not called an ask.
  const cli = spawnSync(process.execPath, [MAIN, "convert", "stories260K", "--rank", "2", "--rope-pairs", "1", "--calib", CALIB, "--dry-run"], { encoding: "utf8" });
  assert.equal(cli.status, 0, cli.stderr);
  assert.match(cli.stderr, /\(the default is 32\)$/m);
});

test("a --calib-len past the model's positions is warned of by convert, convert --format deepseek and export alike (one readCalibrationWindows)", async () => {
  const mla = path.join(tmpDir(), "mla-long");
  await convert(STORIES, { rank: 2, ropePairs: 1, ropeStrategy: "uniform", ropeDisjoint: true, out: mla, progress: null, device: "cpu" });
  const warned = async (work: (o: { logger: Logger; progress: null }) => Promise<unknown>) => {
    const warnings: string[] = [];
    await work({ logger: { info: () => {}, warn: (m) => void warnings.push(m) }, progress: null });
    return warnings.filter((w) => w.startsWith("--calib-len 600 passes the model's 512 positions"));
  };
  // tinystories.txt holds two windows of 600 tokens; stories260K was pretrained on 512 positions.
  const long = { calib: CALIB, calibLen: 600, calibSamples: 2 };
  assert.equal((await warned((o) => convert(STORIES, { rank: 2, ropePairs: 1, ...long, dryRun: true, ...o }))).length, 1);
  assert.equal((await warned((o) => convertDeepseek(STORIES, { rank: 2, ropePairs: 1, ...long, attentionBias: false, dryRun: true, ...o }))).length, 1);
  assert.equal((await warned((o) => exportDeepseek(mla, { out: path.join(tmpDir(), "ex-long"), attentionBias: false, ...long, device: "cpu", ...o }))).length, 1);
});
