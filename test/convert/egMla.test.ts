/**
 * EG-MLA (`convert --attention eg-mla`): the converted model starts equal to the plain MLA
 * conversion (gate 1 for every token), the gate is float32 on disk, and once the gate is not 1 the
 * cached (absorbed) decode, batched decode and the full forward still agree; fine-tuning trains it.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { convert } from "../../src/convert/pipeline.js";
import { SILU_UNIT_POINT } from "../../src/convert/gate.js";
import { DEFAULT_GATE_DIM, resolveSettings } from "../../src/convert/plan.js";
import { readHfConfig } from "../../src/io/hfConfig.js";
import { silentLogger } from "../../src/util/log.js";
import { MlaError } from "../../src/errors.js";
import { finetune } from "../../src/finetune/trainer.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { loadModel } from "../../src/model/llama.js";
import type { MlaWeights } from "../../src/model/weights.js";
import { FIXTURES, MODELS, ROOT, maxAbsDiff, tmpDir } from "../helpers.js";
import { convertFixture } from "./helpers.js";

const settings = { rank: 4, ropePairs: 2, ropeStrategy: "uniform" as const, device: "reference" as const };
const prompt = Int32Array.of(1, 400, 300, 200, 55, 9, 8, 7, 6, 5, 4, 3);

async function egMla(gateDim = 8): Promise<string> {
  const out = path.join(tmpDir(), "stories260K-eg-mla");
  await convert(path.join(MODELS, "stories260K"), { ...settings, attention: "eg-mla", gateDim, progress: null, out });
  return out;
}

test("the SiLU unit point: b·σ(b) = 1", () => {
  assert.ok(Math.abs(SILU_UNIT_POINT / (1 + Math.exp(-SILU_UNIT_POINT)) - 1) < 1e-15);
});

test("eg-mla conversion equals the mla conversion before fine-tuning; the gate is float32, the cache the same size", async () => {
  const eg = await egMla();
  const mla = await convertFixture("stories260K", { ...settings, balanceKv: true });
  const a = loadModel(eg), b = loadModel(mla);
  assert.equal(a.config.attention.kind === "mla" && a.config.attention.gateDim, 8);
  assert.equal(b.config.attention.kind === "mla" && b.config.attention.gateDim, 0);
  const e = maxAbsDiff(a.model.forward(prompt).toArray(), b.model.forward(prompt).toArray());
  assert.ok(e < 1e-5, `max |Δ logits| ${e}`);
  const ck = Checkpoint.open(eg);
  for (const n of ["kv_gate_embed.weight", "kv_gate_proj.weight", "kv_gate_proj.bias"]) assert.equal(ck.entry(`model.layers.0.self_attn.${n}`).dtype, "F32", n);
  assert.deepEqual(ck.entry("model.layers.0.self_attn.kv_gate_embed.weight").shape, [a.config.vocabSize, 8]);
  assert.equal(a.model.newCache().elements, b.model.newCache().elements);
  const ca = a.model.newCache(), cb = b.model.newCache();
  a.model.forward(prompt, ca);
  b.model.forward(prompt, cb);
  assert.equal(ca.elements, cb.elements, "the gate is never cached");
});

test("with a gate that is not 1: absorbed decode and batched decode equal the full forward", async () => {
  const { model, config } = loadModel(await egMla());
  const V = config.vocabSize;
  const before = model.forward(prompt).toArray();
  // A trained-looking gate: small random projection weights (reference tensors expose their storage).
  model.weights.layers.forEach((l, i) => {
    const w = (l.attn as MlaWeights).gateProj!.toArray();
    for (let j = 0; j < w.length; j++) w[j] = 0.3 * Math.sin(17 * j + i);
  });
  const full = model.forward(prompt).toArray();
  assert.ok(maxAbsDiff(full, before) > 1e-2, "the gate changes the output");
  const cache = model.newCache();
  model.forward(prompt.subarray(0, 5), cache);
  for (let t = 5; t < prompt.length; t++) {
    const row = model.forward(prompt.subarray(t, t + 1), cache, { absorb: true }).toArray();
    const e = maxAbsDiff(row, full.subarray(t * V, (t + 1) * V));
    assert.ok(e < 1e-4, `position ${t}: max |Δ| ${e}`);
  }
  const caches = [model.newCache(), model.newCache()];
  model.forward(prompt.subarray(0, 7), caches[0]!);
  model.forward(prompt.subarray(0, 4), caches[1]!);
  const got = model.decodeBatch(Int32Array.of(prompt[7]!, prompt[4]!), caches).toArray();
  assert.ok(maxAbsDiff(got.subarray(0, V), full.subarray(7 * V, 8 * V)) < 1e-4, "sequence 0");
  assert.ok(maxAbsDiff(got.subarray(V), full.subarray(4 * V, 5 * V)) < 1e-4, "sequence 1");
});

test("fine-tuning with --train attention trains the gate", async () => {
  const eg = await egMla(4);
  const r = await finetune(eg, { data: [path.join(FIXTURES, "text", "tinystories_25k.txt")], out: path.join(tmpDir(), "eg-ft"), tokens: 2 * 4 * 64, seq: 64, batch: 4, train: "attention", device: "reference", progress: null });
  const after = loadModel(r.out).model.weights.layers[0]!.attn as MlaWeights;
  assert.ok(after.gateProj!.toArray().some((x) => x !== 0), "the gate projection left zero");
});

test("eg-mla flags: --gate-dim needs --attention eg-mla, and --format deepseek has no gate", async () => {
  const out = path.join(tmpDir(), "never");
  const refused = (o: object, re: RegExp) => assert.rejects(convert(path.join(MODELS, "stories260K"), { ...settings, progress: null, out, ...o }), (e: Error) => e instanceof MlaError && re.test(e.message));
  await refused({ gateDim: 8 }, /^--gate-dim has no effect without --attention eg-mla \(EG-MLA's gate width\)\n {2}hint: add --attention eg-mla, or leave --gate-dim out$/);
  await refused({ attention: "eg-mla", gateDim: 0 }, /--gate-dim 0 is not a positive integer/);
  const { deepseekSettings } = await import("../../src/deepseek/export.js");
  assert.throws(() => deepseekSettings({ rank: 4, attention: "eg-mla" }), /^MlaError: --attention eg-mla has no effect without --format mha2mla \(DeepSeek-V3's attention has no EG-MLA gate\)\n {2}hint: drop --format deepseek to convert in our format, or leave --attention eg-mla out$/);
  assert.throws(() => deepseekSettings({ rank: 4, attention: "mla", gateDim: 8 }), /^MlaError: --attention mla and --gate-dim have no effect without --format mha2mla/);
});

test("EG-MLA's default gate width is one constant: the conversion's default and the help of convert, pipeline and study", () => {
  const c = readHfConfig(path.join(MODELS, "stories260K"));
  assert.equal(resolveSettings(c, { ...settings, attention: "eg-mla" }, silentLogger).gateDim, DEFAULT_GATE_DIM);
  for (const command of ["convert", "pipeline", "study"]) {
    const help = spawnSync(process.execPath, [path.join(ROOT, "dist", "src", "cli", "main.js"), command, "--help"], { encoding: "utf8" }).stdout;
    // yargs wraps the description: up to the next flag.
    const gate = /--gate-dim\s+((?:(?!\s--)[\s\S])*)/.exec(help)?.[1] ?? "";
    assert.match(gate, new RegExp(`\\(default ${DEFAULT_GATE_DIM}\\)`), `${command} --help: ${gate}`);
  }
});

test("the disk-room check counts the gate table (vocab × --gate-dim float32 values per layer): a large --gate-dim is refused before the work, a dry run too", async () => {
  const parent = tmpDir();
  // stories260K's weights are ~1 MB; its gate at --gate-dim 10000 is 512 × 10000 × 4 bytes × 5 layers ≈ 102 MB.
  process.env["MHA2MLA_TEST_FREE_BYTES"] = String(5e6);
  try {
    for (const dryRun of [true, false])
      await assert.rejects(
        convert(path.join(MODELS, "stories260K"), { ...settings, attention: "eg-mla", gateDim: 10000, progress: null, out: path.join(parent, "out"), dryRun }),
        (e: Error) => e instanceof MlaError && /^the converted model takes about 10\d\.\d MB and the disk of \S+ has 5\.0 MB free/.test(e.message),
      );
    const out = await convert(path.join(MODELS, "stories260K"), { ...settings, attention: "eg-mla", gateDim: 8, progress: null, out: path.join(parent, "small") });
    assert.equal(out.out, path.join(parent, "small"), "a small gate still fits");
  } finally {
    delete process.env["MHA2MLA_TEST_FREE_BYTES"];
  }
  assert.deepEqual(fs.readdirSync(parent), ["small"]);
});
