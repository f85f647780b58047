// Layer tensors in a source file that its config does not declare (a q/k/v/o_proj bias beside a config
// without attention_bias; our MLA format's q/k_rope/k_up/v_up/o biases likewise) are no part of the
// source model, so no loader of it applies them: they are carried into neither deepseek_v3 form, whose
// every tensor is one stock DeepseekV3ForCausalLM loads. The exact form (attention_bias true, which
// transformers' DeepseekV3 reads as "o_proj has a bias") writes its own zero o_proj bias, the bias-free
// form none, and both warn naming them. Copied, the q/k/v biases were tensors DeepseekV3 never loads,
// and an o_proj bias was added to every layer's output: another model. Biases the config does declare
// (Qwen2; attention_bias) with a non-zero q bias are refused before any work, naming the tensor (a zero
// q bias converts: attentionBias.test.ts). Outside the layers likewise:
// an lm_head.weight beside tied embeddings (the folder keeps tie_word_embeddings; one that differs from
// the embedding is warned about by name) and unknown top-level tensors are not carried, so the folder
// holds exactly the tensors its config gives DeepseekV3ForCausalLM; an untied head is carried, a
// missing one refused.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { convert } from "../../src/convert/pipeline.js";
import { convertDeepseek } from "../../src/deepseek/export.js";
import { exportDeepseek } from "../../src/deepseek/fromMla.js";
import { expectedTensors } from "../../src/model/weights.js";
import { readHfConfig } from "../../src/io/hfConfig.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { writeSafetensorsSync } from "../../src/io/safetensors.js";
import { MlaError } from "../../src/errors.js";
import { FIXTURES, GOLDEN, maxRelDiff, MODELS, tmpDir } from "../helpers.js";
import { capture, f64Logits } from "./folderProbes.js";

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
  return withTensors(dir, (name, e) => {
    if (!projs.some((p) => name.endsWith(`self_attn.${p}.weight`))) return [];
    return [{ name: name.replace(/weight$/, "bias"), shape: [e.shape[0]!], data: Float32Array.from({ length: e.shape[0]! }, (_, i) => 0.5 + 0.01 * i) }];
  }, config);
}

type Extra = { name: string; shape: number[]; data: Float32Array };

/**
 * A copy of the model folder `dir` whose file also holds, after each tensor, the F32 tensors `extra`
 * gives for it (the last tensor's also get `after`), its config edited by `config`.
 */
function withTensors(dir: string, extra: (name: string, e: { shape: readonly number[] }, ck: Checkpoint) => Extra[], config: Record<string, unknown> = {}, after: Extra[] = []): string {
  const copy = path.join(tmpDir(), "edited");
  fs.cpSync(dir, copy, { recursive: true });
  const ck = Checkpoint.open(copy);
  const names = ck.names();
  const tensors = names.flatMap((name, i) => {
    const e = ck.entry(name);
    const added = [...extra(name, e, ck), ...(i === names.length - 1 ? after : [])].map((x) => ({ name: x.name, dtype: "F32" as const, shape: x.shape, data: new Uint8Array(x.data.buffer, x.data.byteOffset, x.data.byteLength) }));
    return [{ name, dtype: e.dtype, shape: [...e.shape], data: ck.readBytes(name) }, ...added];
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

const logits = (dir: string) => f64Logits(dir, IDS);

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

const EMBED = "model.embed_tokens.weight";
/** A head beside the embedding `e` of `ck`: the embedding itself, or moved by noise (a head that is not the embedding). */
function head(ck: Checkpoint, e: { shape: readonly number[] }, moved: boolean): Extra {
  const x = ck.readF32(EMBED);
  return { name: "lm_head.weight", shape: [...e.shape], data: moved ? Float32Array.from(x, (v, i) => v + 0.05 * Math.sin(i)) : x };
}
/** Top-level tensors no Llama or DeepseekV3 model has a place for: an old rotary buffer and an unknown name. */
const OUTER: Extra[] = [
  { name: "model.rotary_emb.inv_freq", shape: [4], data: Float32Array.from([1, 0.1, 0.01, 0.001]) },
  { name: "value_head.weight", shape: [1, 64], data: new Float32Array(64).fill(0.25) },
];
const outerStray = /holds 2 tensors outside the layers \(model\.rotary_emb\.inv_freq, value_head\.weight\) that its config\.json does not declare, so neither transformers nor this tool reads them for the source model; the deepseek_v3 folder does not carry them/;
const headDiffers = /holds lm_head\.weight, which differs from model\.embed_tokens\.weight \(\d+ of 32768 values differ, by up to [\d.e-]+\), but its config\.json has tie_word_embeddings true, so the source's loaders .* use the embedding as the output head and never read lm_head\.weight; the deepseek_v3 folder keeps tie_word_embeddings true and does not carry lm_head\.weight/;

/** Both folders hold the same tensors, byte for byte. */
function assertSameTensors(got: string, want: string, what: string): void {
  const [a, b] = [Checkpoint.open(want), Checkpoint.open(got)];
  try {
    assert.deepEqual([...b.names()].sort(), [...a.names()].sort(), what);
    for (const n of a.names()) assert.deepEqual(b.readBytes(n), a.readBytes(n), `${what}: ${n}`);
  } finally {
    a.close();
    b.close();
  }
}

const tieOf = (dir: string) => JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")).tie_word_embeddings;

test("convert --format deepseek of a tied source with an lm_head.weight: the folder keeps tie_word_embeddings and carries no lm_head (the source's loaders use the embedding); one that differs from the embedding is warned about by name", async () => {
  const o = { rank: 2, ropePairs: 1, progress: null, device: "cpu" as const };
  const plain = path.join(tmpDir(), "ds-plain");
  await convertDeepseek(STORIES, { ...o, out: plain });
  const want = logits(plain);
  for (const moved of [false, true]) {
    const src = withTensors(STORIES, (name, e, ck) => (name === EMBED ? [head(ck, e, moved)] : []));
    assert.equal(maxRelDiff(logits(src), logits(STORIES)), 0, "tied: the source as loaded never reads lm_head.weight");
    const w = capture();
    const out = path.join(tmpDir(), `ds-head-${moved}`);
    await convertDeepseek(src, { ...o, out, logger: w.logger });
    assert.equal(tieOf(out), true);
    assertLoadable(out);
    assertSameTensors(out, plain, `lm_head ${moved ? "moved" : "equal to the embedding"}`);
    assert.equal(maxRelDiff(logits(out), want), 0);
    if (moved) assert.ok(w.warnings.some((m) => headDiffers.test(m)), w.warnings.join("\n"));
    else {
      assert.ok(!w.warnings.some((m) => /lm_head/.test(m)), w.warnings.join("\n"));
      assert.ok(w.infos.some((m) => /holds lm_head\.weight beside tied embeddings \(tie_word_embeddings true\), equal to model\.embed_tokens\.weight: the deepseek_v3 folder keeps tie_word_embeddings true and does not carry it/.test(m)), w.infos.join("\n"));
    }
  }
});

test("convert --format deepseek of an untied source carries its lm_head and no other top-level tensor its config does not declare, warning naming them; a missing lm_head is refused", async () => {
  const o = { rank: 2, ropePairs: 1, progress: null, device: "cpu" as const };
  const untied = withTensors(STORIES, (name, e, ck) => (name === EMBED ? [head(ck, e, true)] : []), { tie_word_embeddings: false });
  const clean = path.join(tmpDir(), "ds-untied");
  await convertDeepseek(untied, { ...o, out: clean });
  assert.equal(tieOf(clean), false);
  assertLoadable(clean);
  const ck = [Checkpoint.open(untied), Checkpoint.open(clean)];
  assert.deepEqual(ck[1]!.readBytes("lm_head.weight"), ck[0]!.readBytes("lm_head.weight"), "the source's own head");
  ck.forEach((c) => c.close());
  const withOuter = withTensors(untied, () => [], {}, OUTER);
  assert.equal(maxRelDiff(logits(withOuter), logits(untied)), 0, "the source as loaded never reads them");
  const w = capture();
  const out = path.join(tmpDir(), "ds-outer");
  await convertDeepseek(withOuter, { ...o, out, logger: w.logger });
  assertLoadable(out);
  assertSameTensors(out, clean, "the stray top-level tensors");
  assert.ok(w.warnings.some((m) => outerStray.test(m)), w.warnings.join("\n"));

  const headless = path.join(tmpDir(), "headless");
  fs.cpSync(STORIES, headless, { recursive: true });
  fs.writeFileSync(path.join(headless, "config.json"), JSON.stringify({ ...JSON.parse(fs.readFileSync(path.join(STORIES, "config.json"), "utf8")), tie_word_embeddings: false }));
  const refusedOut = path.join(tmpDir(), "refused-headless");
  await assert.rejects(convertDeepseek(headless, { ...o, out: refusedOut }), (e: unknown) => e instanceof MlaError && e.code === "BAD_CHECKPOINT" && /tensor "lm_head\.weight" is missing and tie_word_embeddings is not true/.test(e.message));
  assert.equal(fs.existsSync(refusedOut), false);
});

test("export --format deepseek with a tied lm_head that differs from the embedding and stray top-level tensors: neither is carried and the export computes the source; an untied head is carried", async () => {
  const src = await mla();
  const tied = withTensors(src, (name, e, ck) => (name === EMBED ? [head(ck, e, true)] : []), {}, OUTER);
  const want = logits(src);
  assert.equal(maxRelDiff(logits(tied), want), 0, "the source as loaded reads neither");
  const w = capture();
  const out = path.join(tmpDir(), "ex-tied");
  await exportDeepseek(tied, { out, progress: null, logger: w.logger });
  assert.equal(tieOf(out), true);
  assertLoadable(out);
  const d = maxRelDiff(logits(out), want);
  assert.ok(d < 1e-6, `the export computes the source model: max relative logit difference ${d}`);
  assert.ok(w.warnings.some((m) => headDiffers.test(m)), w.warnings.join("\n"));
  assert.ok(w.warnings.some((m) => outerStray.test(m)), w.warnings.join("\n"));

  const untied = withTensors(src, (name, e, ck) => (name === EMBED ? [head(ck, e, true)] : []), { tie_word_embeddings: false });
  const wantUntied = logits(untied);
  assert.ok(maxRelDiff(wantUntied, want) > 1e-3, "the untied head is the model's");
  const outUntied = path.join(tmpDir(), "ex-untied");
  await exportDeepseek(untied, { out: outUntied, progress: null });
  assert.equal(tieOf(outUntied), false);
  assertLoadable(outUntied);
  const du = maxRelDiff(logits(outUntied), wantUntied);
  assert.ok(du < 1e-6, `the export computes the untied source: max relative logit difference ${du}`);
});

test("q/k/v biases a config declares with a non-zero q bias are refused before any work, naming the tensor (convert: attention_bias and Qwen2, from the weights; export: an MLA model of a Qwen2, from its config)", async () => {
  // convert names the first non-zero q bias (a zero one converts: attentionBias.test.ts); export, the config's.
  const refused = (why: string, which = "model\\.layers\\.0\\.self_attn\\.q_proj\\.bias is not zero \\(element 0: [-\\d.e]+\\)") => (e: unknown) =>
    e instanceof MlaError &&
    e.code === "UNSUPPORTED" &&
    new RegExp(`the model has q/k/v biases \\(${why} in config\\.json: ${which}\\), and DeepseekV3 has no q_proj bias .*softmax does not cancel`).test(e.message);
  const declared = withBiases(STORIES, ["q_proj", "k_proj", "v_proj", "o_proj"], { attention_bias: true });
  const out = path.join(tmpDir(), "refused");
  await assert.rejects(convertDeepseek(declared, { rank: 2, ropePairs: 1, out, progress: null, device: "cpu" }), (e: unknown) => refused("attention_bias: true")(e) && /hint: convert it in our format \(without --format deepseek\), which keeps the biases/.test(String(e)));
  await assert.rejects(convertDeepseek(path.join(GOLDEN, "tiny-qwen2"), { rank: 2, out, progress: null, device: "cpu" }), refused("model_type qwen2"));
  assert.equal(fs.existsSync(out), false);
  const qwenMla = path.join(tmpDir(), "qwen-mla");
  await convert(path.join(GOLDEN, "tiny-qwen2"), { rank: 2, ropePairs: 1, ropeStrategy: "uniform", out: qwenMla, progress: null, device: "cpu" });
  await assert.rejects(exportDeepseek(qwenMla, { out, progress: null }), refused("model_type qwen2", "model\\.layers\\.0\\.self_attn\\.q_proj\\.bias and the others"));
  assert.equal(fs.existsSync(out), false);
});
