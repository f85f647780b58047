// The source checkpoint against its config.json, from the headers, before any work and in a dry run
// too (src/convert/sourceTensors.ts): a declared tensor missing, of another shape or not floating
// point is refused naming it by `convert` (both formats), `export --format deepseek` and `inspect`.
// Before, `convert --format deepseek` of a config whose num_key_value_heads did not match the file
// wrote a folder that scored NaN, an I32 tensor was converted as numbers, and an untied config without
// lm_head.weight crashed our format's writer. Tensors the config does not declare (a layer past
// num_hidden_layers, a k_proj bias without attention_bias) crashed both writers or were reported
// missing; our format now carries them unchanged and deepseek_v3 drops them, both with a warning.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { convert } from "../../src/convert/pipeline.js";
import { convertDeepseek } from "../../src/deepseek/export.js";
import { exportDeepseek } from "../../src/deepseek/fromMla.js";
import { inspectModel } from "../../src/eval/inspect.js";
import { LayerSource } from "../../src/convert/layerSource.js";
import { undeclaredTensors, undeclaredWarning } from "../../src/convert/sourceTensors.js";
import { readHfConfig } from "../../src/io/hfConfig.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import type { DType } from "../../src/io/dtype.js";
import { writeSafetensorsSync } from "../../src/io/safetensors.js";
import { MlaError } from "../../src/errors.js";
import { capture, f64Logits } from "../deepseek/folderProbes.js";
import { MODELS, tmpDir } from "../helpers.js";

const STORIES = path.join(MODELS, "stories260K");
const IDS = Int32Array.from([1, 403, 57, 22, 301, 9, 77, 120, 5, 260, 13, 99]);

type Tensor = { name: string; dtype: DType; shape: number[]; data: Uint8Array };

/** A copy of `dir` whose tensors are `edit(tensors)` and whose config.json is merged with `config`. */
function edited(dir: string, edit: (t: Tensor[]) => Tensor[], config: Record<string, unknown> = {}): string {
  const copy = path.join(tmpDir(), "edited");
  fs.cpSync(dir, copy, { recursive: true });
  const ck = Checkpoint.open(copy);
  const tensors = ck.names().map((name) => ({ name, dtype: ck.entry(name).dtype, shape: [...ck.entry(name).shape], data: ck.readBytes(name) }));
  ck.close();
  writeSafetensorsSync(path.join(copy, "model.safetensors"), edit(tensors), { format: "pt" });
  const file = path.join(copy, "config.json");
  fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, "utf8")), ...config }, null, 2));
  return copy;
}

const refused = (re: RegExp) => (e: unknown) => e instanceof MlaError && e.code === "BAD_CHECKPOINT" && re.test(e.message) && /hint:/.test(e.message);
const names = (dir: string) => {
  const ck = Checkpoint.open(dir);
  const n = ck.names();
  ck.close();
  return n;
};

test("a declared tensor missing, of another shape or not floating point is refused before any work (dry runs too), by both converters, export and inspect", async () => {
  const cases: [string, string, RegExp][] = [
    ["untied, no lm_head", edited(STORIES, (t) => t, { tie_word_embeddings: false }), /tensor "lm_head\.weight" is missing and tie_word_embeddings is not true/],
    // HF's default for a missing num_key_value_heads is MHA: the file's 4 KV heads do not match.
    ["kv heads", edited(STORIES, (t) => t, { num_key_value_heads: 8 }), /tensor "model\.layers\.0\.self_attn\.k_proj\.weight" has shape \[32,64\], config\.json implies \[64,64\]/],
    ["I32 v_proj", edited(STORIES, (t) => t.map((x) => (x.name === "model.layers.2.self_attn.v_proj.weight" ? { ...x, dtype: "I32" as DType } : x))), /tensor "model\.layers\.2\.self_attn\.v_proj\.weight" is I32/],
    ["no up_proj", edited(STORIES, (t) => t.filter((x) => x.name !== "model.layers.3.mlp.up_proj.weight")), /tensor "model\.layers\.3\.mlp\.up_proj\.weight" is missing/],
  ];
  for (const [what, model, re] of cases) {
    const parent = tmpDir();
    const out = path.join(parent, "out");
    await assert.rejects(convert(model, { rank: 2, dryRun: true, progress: null }), refused(re), `${what}: convert --dry-run`);
    await assert.rejects(convert(model, { rank: 2, out, progress: null }), refused(re), `${what}: convert`);
    await assert.rejects(convertDeepseek(model, { rank: 2, dryRun: true, progress: null }), refused(re), `${what}: convert --format deepseek --dry-run`);
    await assert.rejects(convertDeepseek(model, { rank: 2, out, progress: null }), refused(re), `${what}: convert --format deepseek`);
    assert.throws(() => inspectModel(model), refused(re), `${what}: inspect`);
    assert.deepEqual(fs.readdirSync(parent), [], `${what}: nothing written`);
  }
  // export: an MLA folder whose latent down-projection is not floating point.
  const mla = path.join(tmpDir(), "mla");
  await convert(STORIES, { rank: 2, ropeDisjoint: true, out: mla, progress: null });
  const bad = edited(mla, (t) => t.map((x) => (x.name === "model.layers.1.self_attn.kv_down_proj.weight" ? { ...x, dtype: "I32" as DType } : x)));
  const out = path.join(tmpDir(), "ds");
  await assert.rejects(exportDeepseek(bad, { out, progress: null }), refused(/tensor "model\.layers\.1\.self_attn\.kv_down_proj\.weight" is I32/));
  assert.equal(fs.existsSync(out), false);
});

test("layers past num_hidden_layers: our format carries them, deepseek_v3 drops them, both warn and compute the source as loaded", async () => {
  const short = edited(STORIES, (t) => t, { num_hidden_layers: 4 });
  const clean = edited(STORIES, (t) => t.filter((x) => !x.name.startsWith("model.layers.4.")), { num_hidden_layers: 4 });
  const past = /in layers past num_hidden_layers 4/;
  for (const format of ["mha2mla", "deepseek"] as const) {
    const run = (model: string, out: string, logger = capture().logger) => (format === "deepseek" ? convertDeepseek(model, { rank: 2, out, logger, progress: null }) : convert(model, { rank: 2, out, logger, progress: null }));
    const w = capture();
    const [a, b] = [path.join(tmpDir(), "short"), path.join(tmpDir(), "clean")];
    await run(short, a, w.logger);
    await run(clean, b);
    assert.ok(w.warnings.some((m) => past.test(m)), `${format}: ${w.warnings.join("\n")}`);
    const layer4 = names(a).filter((n) => n.startsWith("model.layers.4."));
    assert.equal(layer4.length, format === "deepseek" ? 0 : 9, `${format}: layer 4's tensors ${format === "deepseek" ? "dropped" : "carried"}`);
    assert.deepEqual(f64Logits(a, IDS), f64Logits(b, IDS), `${format}: the conversion of the 4 layers the config declares`);
  }
});

test("an undeclared k_proj bias is carried by our format (not reported missing) and changes nothing", async () => {
  const withBias = edited(STORIES, (t) => [...t, { name: "model.layers.0.self_attn.k_proj.bias", dtype: "F32" as DType, shape: [32], data: new Uint8Array(128).fill(7) }]);
  const w = capture();
  const [a, b] = [path.join(tmpDir(), "bias"), path.join(tmpDir(), "plain")];
  await convert(withBias, { rank: 2, out: a, logger: w.logger, progress: null });
  await convert(STORIES, { rank: 2, out: b, progress: null });
  assert.ok(w.warnings.some((m) => /holds tensor model\.layers\.0\.self_attn\.k_proj\.bias that its config\.json does not declare/.test(m)), w.warnings.join("\n"));
  assert.ok(names(a).includes("model.layers.0.self_attn.k_proj.bias"));
  assert.deepEqual(f64Logits(a, IDS), f64Logits(b, IDS));
});

test("inspect counts the parameters the config declares: an lm_head.weight saved beside tied embeddings is not a second head", () => {
  const twice = edited(STORIES, (t) => [...t, { ...t.find((x) => x.name === "model.embed_tokens.weight")!, name: "lm_head.weight" }]);
  const [a, b] = [inspectModel(twice), inspectModel(STORIES)];
  assert.equal(a.params, b.params);
  assert.ok(a.weight_bytes > b.weight_bytes, "the file's bytes are all of them");
});

test("a NaN or Inf in a key/value projection is refused by both converters, naming the tensor, with nothing written (its factors were garbage, written without a word)", async () => {
  for (const [bad, value] of [["model.layers.1.self_attn.k_proj.weight", NaN], ["model.layers.3.self_attn.v_proj.weight", -Infinity]] as const) {
    const model = edited(STORIES, (t) =>
      t.map((x) => {
        if (x.name !== bad) return x;
        const data = x.data.slice();
        new DataView(data.buffer).setFloat32(4 * 5, value, true);
        return { ...x, data };
      }),
    );
    const re = new RegExp(`tensor "${bad.replace(/\./g, "\\.")}" holds ${value} \\(element 5\\)`);
    for (const run of [(out: string) => convert(model, { rank: 2, out, progress: null }), (out: string) => convertDeepseek(model, { rank: 2, out, progress: null })]) {
      const parent = tmpDir();
      await assert.rejects(run(path.join(parent, "out")), refused(re));
      assert.deepEqual(fs.readdirSync(parent), [], "nothing written");
    }
  }
});

test("undeclaredTensors lists what the file holds beyond the config, in the file's order, for both formats' writers and the warning", () => {
  const bias = "model.layers.0.self_attn.k_proj.bias";
  const model = edited(STORIES, (t) => [...t, { name: bias, dtype: "F32" as DType, shape: [32], data: new Uint8Array(128) }], { num_hidden_layers: 4 });
  const config = readHfConfig(model);
  const ck = Checkpoint.open(model);
  try {
    const undeclared = undeclaredTensors(ck, config);
    assert.deepEqual(undeclared, ck.names().filter((n) => n.startsWith("model.layers.4.") || n === bias));
    assert.equal(undeclared.length, 10);
    assert.match(undeclaredWarning(ck, config, undeclared)!, /holds 10 tensors \(the first .*\) that its config\.json does not declare, 9 in layers past num_hidden_layers 4/);
    // An old RoPE buffer alone is no sign of a wrong config: listed (a deepseek writer drops it), not warned about.
    assert.equal(undeclaredWarning(ck, config, ["model.layers.0.self_attn.rotary_emb.inv_freq"]), null);
  } finally {
    ck.close();
  }
  const plain = Checkpoint.open(STORIES);
  assert.deepEqual(undeclaredTensors(plain, readHfConfig(STORIES)), []);
  plain.close();
});

test("LayerSource checks a layer's key/value projections once, and refuses a NaN each time it is asked (the split choice factors a layer once per candidate)", async () => {
  const bad = "model.layers.1.self_attn.v_proj.weight";
  const model = edited(STORIES, (t) => t.map((x) => (x.name === bad ? { ...x, data: new Uint8Array(new Float32Array(x.data.length / 4).fill(NaN).buffer) } : x)));
  const ck = Checkpoint.open(model);
  try {
    const source = new LayerSource(ck, readHfConfig(model), { ropeStrategy: "high", ropeDisjoint: false, svd: "joint", balanceKv: true }, null);
    const selection = source.pairs(0, 2);
    for (let i = 0; i < 2; i++) {
      assert.ok((await source.factor(0, 2, selection)).energy > 0, "a finite layer, again");
      await assert.rejects(source.factor(1, 2, selection), refused(new RegExp(`tensor "${bad.replace(/\./g, "\\.")}" holds NaN \\(element 0\\)`)), `the NaN layer, ask ${i + 1}`);
    }
  } finally {
    ck.close();
  }
});
