// Layer tensors in a source file that its config does not declare (a q/k/v/o_proj bias beside a config
// without attention_bias; our MLA format's q/k_rope/k_up/v_up/o biases likewise) are no part of the
// source model, so no loader of it applies them: they are carried into neither deepseek_v3 form, whose
// every tensor is one stock DeepseekV3ForCausalLM loads. The exact form (attention_bias true, which
// transformers' DeepseekV3 reads as "o_proj has a bias") writes its own zero o_proj bias, the bias-free
// form none, and both warn naming them. Copied, the q/k/v biases were tensors DeepseekV3 never loads,
// and an o_proj bias was added to every layer's output: another model. Biases the config does declare
// (Qwen2; attention_bias) are refused before any work, naming the tensor.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { convert } from "../../src/convert/pipeline.js";
import { convertDeepseek } from "../../src/deepseek/export.js";
import { exportDeepseek } from "../../src/deepseek/fromMla.js";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { loadModel } from "../../src/model/llama.js";
import { expectedTensors } from "../../src/model/weights.js";
import { readHfConfig } from "../../src/io/hfConfig.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { writeSafetensorsSync } from "../../src/io/safetensors.js";
import { MlaError } from "../../src/errors.js";
import type { Logger } from "../../src/util/log.js";
import { FIXTURES, GOLDEN, maxRelDiff, MODELS, tmpDir } from "../helpers.js";

const CALIB = path.join(FIXTURES, "text", "tinystories.txt");
const IDS = Int32Array.from([1, 403, 57, 22, 301, 9, 77, 120, 5, 260, 13, 99]);
const STORIES = path.join(MODELS, "stories260K");
/** The warning for stray tensors: the fields named, and why the folder does not carry them. */
const stray = (...fields: string[]) =>
  new RegExp(`holds \\d+ tensors \\(${[...fields].sort().map((f) => `self_attn\\.${f}\\.bias`).join(", ")} in 5 layers; the first model\\.layers\\.0\\.self_attn\\.\\w+\\.bias\\) that its config\\.json does not declare, so neither transformers nor this tool applies them to the source model .*; the deepseek_v3 folder does not carry them \\(stock DeepseekV3ForCausalLM would not load them\\) and computes the source model as loaded`);

/**
 * A copy of the model folder `dir` whose file also holds a nonzero bias beside each layer's
 * `self_attn.<proj>.weight` for every proj of `projs` (its config unchanged unless `config` edits it).
 */
function withBiases(dir: string, projs: string[], config: Record<string, unknown> = {}): string {
  const copy = path.join(tmpDir(), "biased");
  fs.cpSync(dir, copy, { recursive: true });
  const ck = Checkpoint.open(copy);
  const tensors = ck.names().flatMap((name) => {
    const e = ck.entry(name);
    const t = [{ name, dtype: e.dtype, shape: [...e.shape], data: ck.readBytes(name) }];
    if (!projs.some((p) => name.endsWith(`self_attn.${p}.weight`))) return t;
    const bias = Float32Array.from({ length: e.shape[0]! }, (_, i) => 0.5 + 0.01 * i);
    return [...t, { name: name.replace(/weight$/, "bias"), dtype: "F32" as const, shape: [e.shape[0]!], data: new Uint8Array(bias.buffer) }];
  });
  ck.close();
  // One file: a sharded source's index would not list the new tensors.
  for (const f of fs.readdirSync(copy)) if (f.endsWith(".safetensors") || f.endsWith(".safetensors.index.json")) fs.rmSync(path.join(copy, f));
  writeSafetensorsSync(path.join(copy, "model.safetensors"), tensors, { format: "pt" });
  if (Object.keys(config).length) {
    const file = path.join(copy, "config.json");
    fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, "utf8")), ...config }, null, 2));
  }
  return copy;
}

function logits(dir: string): Float64Array {
  const { model } = loadModel(dir, { backend: new ReferenceBackend("f64") });
  return Float64Array.from(model.forward(IDS).toArray());
}

function capture(): { logger: Logger; warnings: string[] } {
  const warnings: string[] = [];
  return { warnings, logger: { info: () => {}, warn: (m: string) => warnings.push(m) } };
}

/** Every layer's o_proj.bias in `dir`: null where the folder has none. */
function oBiases(dir: string): Float32Array[] | null {
  const ck = Checkpoint.open(dir);
  try {
    const names = ck.names().filter((n) => n.endsWith("self_attn.o_proj.bias"));
    return names.length ? names.map((n) => ck.readF32(n)) : null;
  } finally {
    ck.close();
  }
}

/** The folder holds exactly the tensors its deepseek_v3 config gives a model (what stock DeepseekV3ForCausalLM loads), nothing else. */
function assertLoadable(dir: string): void {
  const ck = Checkpoint.open(dir);
  try {
    assert.deepEqual([...ck.names()].sort(), expectedTensors(readHfConfig(dir)).map((t) => t.name).sort(), dir);
  } finally {
    ck.close();
  }
}

let mlaDir: string | null = null;
/** stories260K in our MLA format (disjoint rope pairs: exactly exportable). */
async function mla(): Promise<string> {
  if (mlaDir) return mlaDir;
  const out = path.join(tmpDir(), "mla");
  await convert(STORIES, { rank: 2, ropePairs: 1, ropeStrategy: "uniform", ropeDisjoint: true, out, progress: null, device: "cpu" });
  return (mlaDir = out);
}

test("export --format deepseek of an MLA folder with a stray o_proj.bias: exact (zero bias, the source's logits), bias-free without one; both warn naming it", async () => {
  const src = await mla();
  const biased = withBiases(src, ["o_proj"]);
  const want = logits(src);
  // The premise: the source as loaded ignores the tensor (its config declares no attention_bias).
  assert.equal(maxRelDiff(logits(biased), want), 0, "the stray bias is no part of the source model");

  const exact = capture();
  const out = path.join(tmpDir(), "ds");
  await exportDeepseek(biased, { out, progress: null, logger: exact.logger });
  const cfg = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8"));
  assert.equal(cfg.attention_bias, true);
  const biases = oBiases(out);
  assert.ok(biases && biases.length === cfg.num_hidden_layers && biases.every((b) => b.every((x) => x === 0)), "the exact form's o_proj bias is its own zero, not the source's");
  assertLoadable(out);
  const d = maxRelDiff(logits(out), want);
  assert.ok(d < 1e-6, `the export computes the source model: max relative logit difference ${d}`);
  assert.ok(exact.warnings.some((w) => stray("o_proj").test(w) && /its own o_proj bias is zero/.test(w)), exact.warnings.join("\n"));

  const free = capture();
  const outFree = path.join(tmpDir(), "ds-free");
  await exportDeepseek(biased, { out: outFree, attentionBias: false, calib: CALIB, calibSamples: 2, calibLen: 64, progress: null, logger: free.logger });
  assert.equal(oBiases(outFree), null, "the bias-free form has no o_proj bias");
  assertLoadable(outFree);
  assert.ok(free.warnings.some((w) => stray("o_proj").test(w) && /it has no o_proj bias/.test(w)), free.warnings.join("\n"));

  // A source without one: no warning.
  const clean = capture();
  await exportDeepseek(src, { out: path.join(tmpDir(), "ds-clean"), progress: null, logger: clean.logger });
  assert.ok(!clean.warnings.some((w) => /does not declare/.test(w)), clean.warnings.join("\n"));
});

test("export --format deepseek of an MLA folder with stray q, k_rope, k_up or v_up biases: none is carried, the export computes the source, and the warning names each", async () => {
  const src = await mla();
  const want = logits(src);
  // One case at a time (q: the query; k_rope: the rope key; k_up: the position-free key; v_up: the
  // value), then all of them with the bias-free form.
  for (const projs of [["q_proj"], ["k_rope_proj"], ["k_up_proj"], ["v_up_proj"]]) {
    const biased = withBiases(src, projs);
    assert.equal(maxRelDiff(logits(biased), want), 0, `${projs}: the stray bias is no part of the source model`);
    const w = capture();
    const out = path.join(tmpDir(), `ds-${projs[0]}`);
    await exportDeepseek(biased, { out, progress: null, logger: w.logger });
    assertLoadable(out);
    const d = maxRelDiff(logits(out), want);
    assert.ok(d < 1e-6, `${projs}: the export computes the source model: max relative logit difference ${d}`);
    assert.ok(w.warnings.some((m) => stray(...projs).test(m) && !/o_proj bias/.test(m)), w.warnings.join("\n"));
  }
  const all = withBiases(src, ["q_proj", "k_rope_proj", "k_up_proj", "v_up_proj"]);
  const w = capture();
  const outFree = path.join(tmpDir(), "ds-all-free");
  await exportDeepseek(all, { out: outFree, attentionBias: false, calib: CALIB, calibSamples: 2, calibLen: 64, progress: null, logger: w.logger });
  assertLoadable(outFree);
  assert.ok(w.warnings.some((m) => stray("q_proj", "k_rope_proj", "k_up_proj", "v_up_proj").test(m)), w.warnings.join("\n"));
});

test("convert --format deepseek of a Llama folder with a stray q, k, v or o_proj bias writes the folder it writes without it, warning", async () => {
  const o = { rank: 2, ropePairs: 1, progress: null, device: "cpu" as const };
  const plain = path.join(tmpDir(), "ds-plain");
  await convertDeepseek(STORIES, { ...o, out: plain });
  assertLoadable(plain);
  for (const projs of [["q_proj"], ["k_proj"], ["v_proj"], ["o_proj"], ["q_proj", "k_proj", "v_proj"]]) {
    const biased = withBiases(STORIES, projs);
    const w = capture();
    const out = path.join(tmpDir(), `ds-${projs.join("-")}`);
    await convertDeepseek(biased, { ...o, out, logger: w.logger });
    assert.ok(w.warnings.some((m) => stray(...projs).test(m)), w.warnings.join("\n"));
    const [a, b] = [Checkpoint.open(plain), Checkpoint.open(out)];
    try {
      assert.deepEqual(b.names(), a.names(), `${projs}`);
      for (const n of a.names()) assert.deepEqual(b.readBytes(n), a.readBytes(n), n);
    } finally {
      a.close();
      b.close();
    }
  }
});

test("q/k/v biases a config declares are refused before any work, naming the tensor (convert: attention_bias and Qwen2; export: an MLA model of a Qwen2)", async () => {
  const refused = (why: string) => (e: unknown) =>
    e instanceof MlaError &&
    e.code === "UNSUPPORTED" &&
    new RegExp(`the model has q/k/v biases \\(${why} in config\\.json: model\\.layers\\.0\\.self_attn\\.q_proj\\.bias and the others\\), and DeepseekV3 has no q_proj bias .*softmax does not cancel`).test(e.message);
  const declared = withBiases(STORIES, ["q_proj", "k_proj", "v_proj", "o_proj"], { attention_bias: true });
  const out = path.join(tmpDir(), "refused");
  await assert.rejects(convertDeepseek(declared, { rank: 2, ropePairs: 1, out, progress: null, device: "cpu" }), (e: unknown) => refused("attention_bias: true")(e) && /hint: convert it in our format \(without --format deepseek\), which keeps the biases/.test(String(e)));
  await assert.rejects(convertDeepseek(path.join(GOLDEN, "tiny-qwen2"), { rank: 2, out, progress: null, device: "cpu" }), refused("model_type qwen2"));
  assert.equal(fs.existsSync(out), false);
  const qwenMla = path.join(tmpDir(), "qwen-mla");
  await convert(path.join(GOLDEN, "tiny-qwen2"), { rank: 2, ropePairs: 1, ropeStrategy: "uniform", out: qwenMla, progress: null, device: "cpu" });
  await assert.rejects(exportDeepseek(qwenMla, { out, progress: null }), refused("model_type qwen2"));
  assert.equal(fs.existsSync(out), false);
});
