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
import { FIXTURES, GOLDEN, MODELS, tmpDir } from "../helpers.js";

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

/**
 * transformers' DeepseekV3Attention (q_lora_rank null, eager, no cache) in float64 from a folder's
 * tensors: q = q_proj(x); [c | k_pe] = kv_a(x) (+ its bias where attention_bias); c ← RMSNorm(c, 1e-6)·γ;
 * [k_nope | v] = kv_b(c) per head; RoPE (interleaved storage read as HF does) on q_pe and the shared
 * k_pe; softmax((q·k)·(dn + dr)^−½) causal; o_proj (+ bias). x [T, D] → [T, D].
 */
function stockAttention(dir: string, layer: number, x: Float64Array, T: number): Float64Array {
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
  const { num_attention_heads: H, hidden_size: D, kv_lora_rank: rk, qk_rope_head_dim: dr, qk_nope_head_dim: dn, v_head_dim: dv, rope_theta: theta, attention_bias: bias, rope_interleave: inter } = cfg;
  const ck = Checkpoint.open(dir);
  const p = layerPrefix(layer) + "self_attn.";
  const t = (n: string) => Float64Array.from(ck.readF32(p + n));
  const [Wq, Wa, g, Wb, Wo] = ["q_proj.weight", "kv_a_proj_with_mqa.weight", "kv_a_layernorm.weight", "kv_b_proj.weight", "o_proj.weight"].map(t) as Float64Array[];
  const ba = bias ? t("kv_a_proj_with_mqa.bias") : new Float64Array(rk + dr);
  const bo = bias ? t("o_proj.bias") : new Float64Array(D);
  ck.close();
  const lin = (W: Float64Array, b: Float64Array | null, rows: number, inp: Float64Array, n: number) => {
    const out = new Float64Array(rows);
    for (let r = 0; r < rows; r++) {
      let s = b ? b[r]! : 0;
      for (let k = 0; k < n; k++) s += W[r * n + k]! * inp[k]!;
      out[r] = s;
    }
    return out;
  };
  const half = dr / 2;
  // HF: interleaved (x0, y0, x1, y1, …) is viewed as (x0, x1, …, y0, y1, …), then rotate_half.
  const rope = (v: Float64Array, pos: number) => {
    const u = inter ? Float64Array.from({ length: dr }, (_, j) => (j < half ? v[2 * j]! : v[2 * (j - half) + 1]!)) : Float64Array.from(v);
    const o = new Float64Array(dr);
    for (let k = 0; k < half; k++) {
      const a = pos * Math.pow(theta, (-2 * k) / dr);
      o[k] = u[k]! * Math.cos(a) - u[k + half]! * Math.sin(a);
      o[k + half] = u[k + half]! * Math.cos(a) + u[k]! * Math.sin(a);
    }
    return o;
  };
  const qs: Float64Array[] = [], kn: Float64Array[] = [], vs: Float64Array[] = [], kpe: Float64Array[] = [];
  for (let s = 0; s < T; s++) {
    const xs = x.subarray(s * D, (s + 1) * D);
    qs.push(lin(Wq, null, H * (dn + dr), xs, D));
    const kv = lin(Wa, ba, rk + dr, xs, D);
    let ms = 0;
    for (let i = 0; i < rk; i++) ms += kv[i]! ** 2;
    const inv = 1 / Math.sqrt(ms / rk + 1e-6);
    const cn = Float64Array.from({ length: rk }, (_, i) => kv[i]! * inv * g[i]!);
    const b = lin(Wb, null, H * (dn + dv), cn, rk);
    kn.push(b);
    vs.push(b);
    kpe.push(rope(kv.subarray(rk), s));
  }
  const out = new Float64Array(T * D);
  for (let s = 0; s < T; s++) {
    const heads = new Float64Array(H * dv);
    for (let h = 0; h < H; h++) {
      const q = qs[s]!.subarray(h * (dn + dr), (h + 1) * (dn + dr));
      const qpe = rope(q.subarray(dn), s);
      const sc = Array.from({ length: s + 1 }, (_, u) => {
        let d = 0;
        for (let j = 0; j < dn; j++) d += q[j]! * kn[u]![h * (dn + dv) + j]!;
        for (let j = 0; j < dr; j++) d += qpe[j]! * kpe[u]![j]!;
        return d / Math.sqrt(dn + dr);
      });
      const mx = Math.max(...sc);
      const e = sc.map((v) => Math.exp(v - mx));
      const z = e.reduce((a, v) => a + v, 0);
      for (let u = 0; u <= s; u++) for (let j = 0; j < dv; j++) heads[h * dv + j] += (e[u]! / z) * vs[u]![h * (dn + dv) + dn + j]!;
    }
    out.set(lin(Wo, bo, D, heads, H * dv), s * D);
  }
  return out;
}

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
  const { calibrationWindows, readCalibrationText } = await import("../../src/ropeSelect/calibrate.js");
  const windows = calibrationWindows(tokenizer, readCalibrationText(CALIB), 32, 256, model.config.bosTokenId, CALIB);
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
  await assert.rejects(exportDeepseek(mla, { out: path.join(tmpDir(), "x"), calib: CALIB, calibLen: 64, progress: null }), (e: unknown) => e instanceof MlaError && /--calib and --calib-len have no effect without --no-attention-bias/.test(e.message));
  // stories260K: at most min(2·4·8, 64) = 64 learned latent dims; the constant channel made it 65.
  await convertDeepseek(STORIES, { rank: 2, ropePairs: 1, kvLoraRank: 65, dryRun: true, progress: null });
  await assert.rejects(convertDeepseek(STORIES, { rank: 2, ropePairs: 1, kvLoraRank: 65, attentionBias: false, calib: CALIB, dryRun: true, progress: null }), (e: unknown) => e instanceof MlaError && /kv_lora_rank 65 is out of range 2…64/.test(e.message));
  await assert.rejects(convertDeepseek(path.join(GOLDEN, "tiny-qwen2"), { rank: 2, attentionBias: false, calib: CALIB, out: path.join(tmpDir(), "q"), progress: null }), (e: unknown) => e instanceof MlaError && /q\/k\/v biases/.test(e.message));
  const r = spawnSync(process.execPath, [MAIN, "convert", "stories260K", "--rank", "2", "--no-attention-bias", "--dry-run"], { encoding: "utf8" });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /--no-attention-bias has no effect without --format deepseek/);
});
