// `convert --format deepseek` of a Llama with attention_bias whose q bias is zero in every layer: exact
// where the conversion is (every KV head equal, full rank, every frequency on the ladder). DeepseekV3
// (q_lora_rank null) has no q_proj bias, so the zero q bias needs none; the k bias's rope part goes in
// kv_a_proj_with_mqa's bias, its position-free part cancels in softmax, and the v and o biases fold into
// o_proj's bias. A non-zero q element is refused before anything is written, naming its tensor; the
// bias-free form refuses non-zero k/v/o biases it has no tensor for.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { convertDeepseek } from "../../src/deepseek/export.js";
import { pipeline } from "../../src/pipeline.js";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { loadModel } from "../../src/model/llama.js";
import { expectedTensors, layerPrefix } from "../../src/model/weights.js";
import { readHfConfig } from "../../src/io/hfConfig.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { writeSafetensorsSync } from "../../src/io/safetensors.js";
import { MlaError } from "../../src/errors.js";
import { FIXTURES, MODELS, maxRelDiff, seededRand, tmpDir } from "../helpers.js";
import { stockAttention } from "./stockAttention.js";
import { capture, f64Logits } from "./folderProbes.js";

const STORIES = path.join(MODELS, "stories260K");
const CALIB = path.join(FIXTURES, "text", "tinystories.txt");
const TEXT = path.join(FIXTURES, "text", "tinystories_25k.txt");
const IDS = Int32Array.from([1, 403, 57, 22, 301, 9, 77, 120, 5, 260, 13, 99]);
// stories260K: D 64, 8 heads, 4 KV heads, head_dim 8, 5 layers. ropeDim 8 puts every frequency on the
// ladder and kv_lora_rank 9 holds the 8 value dims and the constant channel: exact with equal KV heads.
const EXACT = { rank: 2, ropeDim: 8, kvLoraRank: 9, progress: null, device: "cpu" as const };

interface Biases {
  /** q_proj.bias: zero, unless [layer, element, value] sets one element. */
  q?: [number, number, number];
  /** false: k, v and o biases zero too. */
  kvo?: boolean;
}

/**
 * stories260K with every KV head a copy of head 0 (k and v rows), attention_bias true and q/k/v/o
 * biases: q zero (but `b.q`), k random and the same for every KV head (as the heads are), v random per
 * KV head, o random.
 */
function biasedLlama(b: Biases = {}): string {
  const dir = path.join(tmpDir(), "biased-llama");
  fs.cpSync(STORIES, dir, { recursive: true });
  const rand = seededRand(7, Float32Array);
  const ck = Checkpoint.open(dir);
  const G = 4, Dh = 8;
  const tensors = ck.names().flatMap((name) => {
    const e = ck.entry(name);
    const data = ck.readF32(name);
    if (/self_attn\.[kv]_proj\.weight$/.test(name)) for (let h = 1; h < G; h++) data.copyWithin((h * data.length) / G, 0, data.length / G);
    const t = [{ name, dtype: "F32" as const, shape: [...e.shape], data: new Uint8Array(data.buffer) }];
    const m = /^model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.weight$/.exec(name);
    if (!m) return t;
    const n = e.shape[0]!;
    let bias = new Float32Array(n);
    if (m[2] === "q" && b.q && b.q[0] === Number(m[1])) bias[b.q[1]] = b.q[2];
    if (m[2] !== "q" && b.kvo !== false) bias = rand(n, 0.5);
    if (m[2] === "k") for (let h = 1; h < G; h++) bias.copyWithin(h * Dh, 0, Dh);
    return [...t, { name: name.replace(/weight$/, "bias"), dtype: "F32" as const, shape: [n], data: new Uint8Array(bias.buffer) }];
  });
  ck.close();
  writeSafetensorsSync(path.join(dir, "model.safetensors"), tensors, { format: "pt" });
  const file = path.join(dir, "config.json");
  fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, "utf8")), attention_bias: true }, null, 2));
  return dir;
}

const logits = (dir: string) => f64Logits(dir, IDS);

/** Our runtime's attention on folder `dir` equals the float64 transcription of DeepseekV3Attention, layer by layer, on the layer's real input. */
function assertStockAttention(dir: string): void {
  const B = new ReferenceBackend("f64");
  const { model } = loadModel(dir, { backend: B });
  const T = IDS.length, D = model.config.hiddenSize;
  let h = model.embedTokens(IDS);
  for (let layer = 0; layer < model.config.layers; layer++) {
    const x = B.rmsnorm(h, model.weights.layers[layer]!.inputNorm, model.config.rmsEps);
    const got = model.attentionOf(layer, IDS, x).toArray();
    const want = stockAttention(dir, layer, Float64Array.from(x.toArray()), T);
    let diff = 0, scale = 0;
    for (let i = 0; i < T * D; i++) [diff, scale] = [Math.max(diff, Math.abs(got[i]! - want[i]!)), Math.max(scale, Math.abs(want[i]!))];
    assert.ok(diff / scale < 1e-7, `layer ${layer}: max |Δ| ${diff} against ${scale}`);
    h = model.layerForward(layer, IDS, h);
  }
}

test("a Llama with attention_bias and a zero q bias converts exactly: k's rope bias in kv_a_proj_with_mqa's bias, v and o in o_proj's, no q bias tensor", async () => {
  const src = biasedLlama();
  const want = logits(src);
  const w = capture();
  const out = path.join(tmpDir(), "ds");
  await convertDeepseek(src, { ...EXACT, out, logger: w.logger });
  const cfg = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8"));
  assert.equal(cfg.attention_bias, true);
  assert.equal(cfg.q_lora_rank, null);
  // Exactly the tensors stock DeepseekV3ForCausalLM builds from that config: no q/k/v bias, kv_a and o_proj ones.
  const ck = Checkpoint.open(out);
  assert.deepEqual([...ck.names()].sort(), expectedTensors(readHfConfig(out)).map((t) => t.name).sort());
  assert.deepEqual(ck.names().filter((n) => n.endsWith(".bias")).map((n) => n.replace(/^model\.layers\.\d+\./, "")).sort(), [...Array(5)].flatMap(() => ["self_attn.kv_a_proj_with_mqa.bias", "self_attn.o_proj.bias"]).sort());
  // The biases are really there: the rope rows of kv_a's bias and o_proj's bias are not zero.
  const kvABias = ck.readF32(layerPrefix(0) + "self_attn.kv_a_proj_with_mqa.bias");
  assert.ok(kvABias.subarray(9).some((v) => v !== 0), "the k bias's rope part");
  assert.ok(ck.readF32(layerPrefix(0) + "self_attn.o_proj.bias").every((v) => v !== 0), "the folded v and o biases");
  ck.close();
  assert.ok(w.infos.some((m) => /attention biases: the q bias is zero in every layer \(no tensor\)/.test(m)), w.infos.join("\n"));
  // Our runtime computes DeepseekV3's formula on this folder (biases included), and that is the source's function.
  assertStockAttention(out);
  const d = maxRelDiff(logits(out), want);
  assert.ok(d < 1e-5, `the folder computes the source model: max relative logit difference ${d}`);
  // Without the biases the logits move far more than that: the test sees them.
  const plain = path.join(tmpDir(), "ds-nobias-src");
  const unbiased = biasedLlama({ kvo: false });
  assert.ok(maxRelDiff(logits(unbiased), want) > 1e-2, "the biases change the source");
  await convertDeepseek(unbiased, { ...EXACT, out: plain });
  assert.ok(maxRelDiff(logits(plain), logits(unbiased)) < 1e-5);
});

test("with --refit-output the folded o_proj bias is not counted twice: the exact conversion stays exact", async () => {
  const src = biasedLlama();
  const out = path.join(tmpDir(), "ds-refit");
  await convertDeepseek(src, { ...EXACT, calib: CALIB, calibSamples: 4, calibLen: 64, refitOutput: true, out });
  const record = JSON.parse(fs.readFileSync(path.join(out, "mla_conversion.json"), "utf8"));
  // The moments' float32 products leave a floor near 1e-4 on this measure; a bias counted twice gave 0.93.
  record.output_refit.relative_error_before.forEach((b: number, i: number) => assert.ok(b < 1e-3, `layer ${i}: output error ${b} before the refit`));
  const d = maxRelDiff(logits(out), logits(src));
  assert.ok(d < 1e-4, `max relative logit difference ${d}`);
});

test("one non-zero q bias element is refused before anything is written (a dry run and pipeline too), naming the tensor and element", async () => {
  const src = biasedLlama({ q: [2, 5, 1e-3] });
  const refused = (e: unknown) =>
    e instanceof MlaError &&
    e.code === "UNSUPPORTED" &&
    /--format deepseek: the model has q\/k\/v biases \(attention_bias: true in config\.json: model\.layers\.2\.self_attn\.q_proj\.bias is not zero \(element 5: 0\.001\d*\)\), and DeepseekV3 has no q_proj bias .*softmax does not cancel/.test(e.message) &&
    /hint: convert it in our format \(without --format deepseek\), which keeps the biases/.test(String(e));
  const out = path.join(tmpDir(), "refused");
  for (const dryRun of [false, true]) await assert.rejects(convertDeepseek(src, { ...EXACT, dryRun, out }), refused);
  assert.equal(fs.existsSync(out), false);
  await assert.rejects(pipeline(src, { out, format: "deepseek", convert: { rank: 2, ropePairs: 1 }, device: "cpu", progress: null }), refused);
  assert.equal(fs.existsSync(out), false);
});

test("the bias-free form: zero k/v/o biases convert (no bias tensor), a non-zero one is refused naming it", async () => {
  const zero = biasedLlama({ kvo: false });
  const out = path.join(tmpDir(), "free");
  await convertDeepseek(zero, { rank: 2, ropePairs: 1, calib: CALIB, calibSamples: 4, calibLen: 64, attentionBias: false, out, progress: null, device: "cpu" });
  const ck = Checkpoint.open(out);
  assert.deepEqual(ck.names().filter((n) => n.endsWith(".bias")), []);
  assert.deepEqual([...ck.names()].sort(), expectedTensors(readHfConfig(out)).map((t) => t.name).sort());
  ck.close();
  const refusedOut = path.join(tmpDir(), "free-refused");
  await assert.rejects(
    convertDeepseek(biasedLlama(), { rank: 2, ropePairs: 1, calib: CALIB, attentionBias: false, out: refusedOut, progress: null, device: "cpu" }),
    (e: unknown) => e instanceof MlaError && /--no-attention-bias: model\.layers\.0\.self_attn\.k_proj\.bias is not zero \(element 0: .*\), and the bias-free form has no kv_a_proj_with_mqa or o_proj bias to hold it/.test(e.message) && /hint: drop --no-attention-bias/.test(String(e)),
  );
  assert.equal(fs.existsSync(refusedOut), false);
  // The exact form, NLL: the folded biases keep the source's NLL on text too.
  const src = biasedLlama();
  const exact = path.join(tmpDir(), "exact-eval");
  const r = await convertDeepseek(src, { ...EXACT, evalText: TEXT, evalTokens: 1000, out: exact });
  assert.ok(Math.abs(r.eval!.after - r.eval!.before) < 2e-5, `NLL ${r.eval!.before} → ${r.eval!.after}`);
});
