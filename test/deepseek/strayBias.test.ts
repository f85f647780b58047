// An o_proj.bias in a source file whose config declares no attention_bias (so no loader of the source
// applies it) is never carried into a deepseek_v3 folder: the exact form (attention_bias true, which
// transformers' DeepseekV3 reads as "o_proj has a bias") writes a zero bias in its place, the bias-free
// form none, and both say so. Copied, it was added to every layer's output: another model.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { convert } from "../../src/convert/pipeline.js";
import { convertDeepseek } from "../../src/deepseek/export.js";
import { exportDeepseek } from "../../src/deepseek/fromMla.js";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { loadModel } from "../../src/model/llama.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { writeSafetensorsSync } from "../../src/io/safetensors.js";
import type { Logger } from "../../src/util/log.js";
import { FIXTURES, maxRelDiff, MODELS, tmpDir } from "../helpers.js";

const CALIB = path.join(FIXTURES, "text", "tinystories.txt");
const IDS = Int32Array.from([1, 403, 57, 22, 301, 9, 77, 120, 5, 260, 13, 99]);
const STRAY = /holds model\.layers\.0\.self_attn\.o_proj\.bias and \d+ more, but its config\.json declares no attention_bias, so neither transformers nor this tool applies an o_proj bias to the source model; the deepseek_v3 folder does not carry it/;

/** A copy of the model folder `dir` whose file also holds a nonzero o_proj.bias per layer (its config unchanged). */
function withStrayOBias(dir: string): string {
  const copy = path.join(tmpDir(), "stray");
  fs.cpSync(dir, copy, { recursive: true });
  const ck = Checkpoint.open(copy);
  const tensors = ck.names().flatMap((name) => {
    const e = ck.entry(name);
    const t = [{ name, dtype: e.dtype, shape: [...e.shape], data: ck.readBytes(name) }];
    if (!name.endsWith("self_attn.o_proj.weight")) return t;
    const bias = Float32Array.from({ length: e.shape[0]! }, (_, i) => 0.5 + 0.01 * i);
    return [...t, { name: name.replace(/weight$/, "bias"), dtype: "F32" as const, shape: [e.shape[0]!], data: new Uint8Array(bias.buffer) }];
  });
  ck.close();
  writeSafetensorsSync(path.join(copy, "model.safetensors"), tensors, { format: "pt" });
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

test("export --format deepseek of an MLA folder with a stray o_proj.bias: exact (zero bias, the source's logits), bias-free without one; both warn naming it", async () => {
  const mla = path.join(tmpDir(), "mla");
  await convert(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, ropeStrategy: "uniform", ropeDisjoint: true, out: mla, progress: null, device: "cpu" });
  const stray = withStrayOBias(mla);
  const want = logits(mla);
  // The premise: the source as loaded ignores the tensor (its config declares no attention_bias).
  assert.equal(maxRelDiff(logits(stray), want), 0, "the stray bias is no part of the source model");

  const exact = capture();
  const out = path.join(tmpDir(), "ds");
  await exportDeepseek(stray, { out, progress: null, logger: exact.logger });
  const cfg = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8"));
  assert.equal(cfg.attention_bias, true);
  const biases = oBiases(out);
  assert.ok(biases && biases.length === cfg.num_hidden_layers && biases.every((b) => b.every((x) => x === 0)), "the exact form's o_proj bias is its own zero, not the source's");
  const d = maxRelDiff(logits(out), want);
  assert.ok(d < 1e-6, `the export computes the source model: max relative logit difference ${d}`);
  assert.ok(exact.warnings.some((w) => STRAY.test(w) && /its own o_proj bias is zero/.test(w)), exact.warnings.join("\n"));

  const free = capture();
  const outFree = path.join(tmpDir(), "ds-free");
  await exportDeepseek(stray, { out: outFree, attentionBias: false, calib: CALIB, calibSamples: 2, calibLen: 64, progress: null, logger: free.logger });
  assert.equal(oBiases(outFree), null, "the bias-free form has no o_proj bias");
  assert.ok(free.warnings.some((w) => STRAY.test(w) && /it has no o_proj bias/.test(w)), free.warnings.join("\n"));

  // A source without one: no warning.
  const clean = capture();
  await exportDeepseek(mla, { out: path.join(tmpDir(), "ds-clean"), progress: null, logger: clean.logger });
  assert.ok(!clean.warnings.some((w) => /o_proj\.bias/.test(w)), clean.warnings.join("\n"));
});

test("convert --format deepseek of a Llama folder with a stray o_proj.bias writes the folder it writes without it (zero o_proj bias), warning", async () => {
  const src = path.join(MODELS, "stories260K");
  const stray = withStrayOBias(src);
  const o = { rank: 2, ropePairs: 1, progress: null, device: "cpu" as const };
  const plain = path.join(tmpDir(), "ds-plain");
  await convertDeepseek(src, { ...o, out: plain });
  const w = capture();
  const out = path.join(tmpDir(), "ds-stray");
  await convertDeepseek(stray, { ...o, out, logger: w.logger });
  assert.ok(w.warnings.some((m) => STRAY.test(m)), w.warnings.join("\n"));
  const [a, b] = [Checkpoint.open(plain), Checkpoint.open(out)];
  try {
    assert.deepEqual(b.names(), a.names());
    for (const n of a.names()) assert.deepEqual(b.readBytes(n), a.readBytes(n), n);
  } finally {
    a.close();
    b.close();
  }
  assert.ok(oBiases(out)!.every((b) => b.every((x) => x === 0)));
});
