// `convert --rope-disjoint` and `export --format deepseek`: the export of a model in our MLA format is
// exact (same logits, before and after its weights move as fine-tuning moves them), rope interleaved
// or not; what cannot be exported exactly is refused with the reason; stock transformers' logits on
// the exported folder (fixture from test/golden/deepseek_check.py) equal ours.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { convert } from "../../src/convert/pipeline.js";
import { checkExportSettings, exportDeepseek, exportLadder } from "../../src/deepseek/fromMla.js";
import { disjointPairs, pairPreferences } from "../../src/ropeSelect/strategies.js";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { loadModel } from "../../src/model/llama.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { SafetensorsFile, writeSafetensorsSync } from "../../src/io/safetensors.js";
import { readHfConfig } from "../../src/io/hfConfig.js";
import { MlaError } from "../../src/errors.js";
import { pipeline } from "../../src/pipeline.js";
import { synth } from "../../src/synth/synth.js";
import { inspectModel } from "../../src/eval/inspect.js";
import { FIXTURES, GOLDEN, maxRelDiff, MODELS, tmpDir } from "../helpers.js";
import { perLayerFixture } from "../convert/helpers.js";
import { f64Logits } from "./folderProbes.js";

const CALIB = path.join(FIXTURES, "text", "tinystories.txt");
const TEXT = path.join(FIXTURES, "text", "tinystories_25k.txt");
const IDS = Int32Array.from([1, 403, 57, 22, 301, 9, 77, 120, 5, 260, 13, 99]);

async function disjointConversion(strategy: "2-norm" | "uniform" = "2-norm"): Promise<string> {
  const out = path.join(tmpDir(), `mla-${strategy}`);
  await convert(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, ropeStrategy: strategy, ropeDisjoint: true, calib: strategy === "2-norm" ? CALIB : undefined, out, progress: null, device: "cpu" });
  return out;
}

const logits = (dir: string) => f64Logits(dir, IDS);

/** Moves every attention weight of an MLA folder by noise, as a fine-tune would (float32 out). */
function perturb(dir: string): void {
  const ck = Checkpoint.open(dir);
  let seed = 7;
  const noise = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648 - 0.5) * 0.2;
  const tensors = ck.names().map((name) => {
    const data = ck.readF32(name);
    if (/self_attn\./.test(name)) for (let i = 0; i < data.length; i++) data[i] = data[i]! * (1 + noise()) + noise() * 0.05;
    return { name, dtype: "F32" as const, shape: [...ck.entry(name).shape], data: new Uint8Array(data.buffer) };
  });
  ck.close();
  writeSafetensorsSync(path.join(dir, "model.safetensors"), tensors, { format: "pt" });
}

test("--rope-disjoint: no RoPE frequency is kept by two KV heads of a layer; the turns follow each head's preference", async () => {
  assert.deepEqual(disjointPairs([[0, 1, 2, 3], [0, 1, 2, 3]], 2, 4), [[0, 2], [1, 3]]);
  assert.deepEqual(disjointPairs([[0, 1, 2, 3], [0, 1, 2, 3]], 2, 4, true), [[0, 3], [1, 2]], "snake order: head 1 chooses first in round 2");
  assert.deepEqual(disjointPairs([[3, 2, 1, 0], [3, 0, 1, 2]], 2, 4), [[2, 3], [0, 1]]);
  assert.deepEqual(pairPreferences("uniform", 2, 2, 8, null)[0]!.slice(0, 4), [0, 2, 4, 6]);
  assert.deepEqual(disjointPairs(pairPreferences("uniform", 2, 2, 8, null), 2, 8), [[0, 4], [2, 6]]);
  for (const strategy of ["2-norm", "uniform"] as const) {
    const sel = readHfConfig(await disjointConversion(strategy)).attention;
    assert.equal(sel.kind, "mla");
    if (sel.kind !== "mla") return;
    for (const layer of sel.selection) assert.equal(new Set(layer.flat()).size, layer.flat().length, `${strategy}: ${JSON.stringify(layer)}`);
  }
  await assert.rejects(
    convert(path.join(MODELS, "stories260K-mha"), { rank: 2, ropePairs: 1, ropeDisjoint: true, out: path.join(tmpDir(), "x"), progress: null, device: "cpu" }),
    (e: unknown) => e instanceof MlaError && /--rope-disjoint needs KV heads × rope pairs ≤ head_dim\/2, but 8 × 1 > 4/.test(e.message) && /8 KV heads cannot each keep a frequency of their own/.test(e.message),
  );
});

test("export --format deepseek is exact: same logits as the MLA folder, converted and after its weights moved, rope interleaved or not", async () => {
  const mla = await disjointConversion();
  for (const moved of [false, true]) {
    if (moved) perturb(mla);
    const want = logits(mla);
    for (const interleave of [true, false]) {
      const out = path.join(tmpDir(), `ds-${moved}-${interleave}`);
      const r = await exportDeepseek(mla, { out, interleave, progress: null });
      assert.equal(r.kvPerToken.after, r.kvPerToken.before + 1 + (r.ropeDim - 2 * 4), "one constant channel, plus the ladder's unused slots");
      const cfg = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8"));
      assert.equal(cfg.model_type, "deepseek_v3");
      assert.equal(cfg.qk_nope_head_dim, 6);
      assert.equal(cfg.v_head_dim, 8);
      assert.equal(cfg.mha2mla, undefined);
      const d = maxRelDiff(logits(out), want);
      assert.ok(d < 1e-6, `moved ${moved}, interleave ${interleave}: max relative logit difference ${d}`);
    }
  }
});

test("padded to a larger kv_lora_rank and rope dim (zero channels and slots) the export is still exact", async () => {
  const mla = await disjointConversion();
  const out = path.join(tmpDir(), "ds-padded");
  const r = await exportDeepseek(mla, { out, kvLoraRank: 16, ropeDim: 12, interleave: false, progress: null });
  assert.deepEqual([r.kvLoraRank, r.ropeDim], [16, 12]);
  const d = maxRelDiff(logits(out), logits(mla));
  assert.ok(d < 1e-6, `max relative logit difference ${d}`);
  const shown = inspectModel(out);
  assert.equal(shown.head_dim, shown.deepseek!.qk_nope_head_dim + 12, "head_dim is the query·key width: no-rope plus rope dims");
  assert.match(inspectModel(out).deepseek!.serving, /^stock transformers loads it; kv_lora_rank 16 with qk_rope_head_dim 12: FlashMLA, CUTLASS MLA and FlashInfer's MLA decode take only 512 with 64; vLLM refuses it .*; vLLM and SGLang drop its kv_a_proj_with_mqa and o_proj biases/);
  const fused = path.join(tmpDir(), "ds-576");
  await exportDeepseek(mla, { out: fused, kvLoraRank: 512, ropeDim: 64, progress: null });
  assert.equal(inspectModel(fused).deepseek!.serving, "stock transformers loads it; the fused MLA kernels take its sizes, but vLLM and SGLang drop its kv_a_proj_with_mqa and o_proj biases, which it needs (docs/deepseek.md)");
  assert.ok(maxRelDiff(logits(fused), logits(mla)) < 1e-6, "padded to the fused kernels' 512 + 64, still exact");
  await assert.rejects(exportDeepseek(mla, { out: path.join(tmpDir(), "small"), kvLoraRank: 8, progress: null }), (e: unknown) => e instanceof MlaError && /--kv-lora-rank 8 cannot hold the model's 8 latent dims and the constant channel/.test(e.message));
  await assert.rejects(exportDeepseek(mla, { out: path.join(tmpDir(), "frac"), kvLoraRank: 17.5, progress: null }), (e: unknown) => e instanceof MlaError && /--kv-lora-rank 17\.5 is not a whole number of latent channels\n  hint: use a whole number ≥ 9/.test(e.message));
  await assert.rejects(exportDeepseek(mla, { out: path.join(tmpDir(), "small"), ropeDim: 6, progress: null }), (e: unknown) => e instanceof MlaError && /--rope-dim 6 cannot hold the model's rope ladder of 4 slots/.test(e.message));
  // Padding far past the model was an internal error (a typed array too long), now a range.
  await assert.rejects(exportDeepseek(mla, { out: path.join(tmpDir(), "huge"), kvLoraRank: 1e8, progress: null }), (e: unknown) => e instanceof MlaError && /--kv-lora-rank 100000000 pads far past this model/.test(e.message));
  await assert.rejects(exportDeepseek(mla, { out: path.join(tmpDir(), "huge"), ropeDim: 1e8, progress: null }), (e: unknown) => e instanceof MlaError && /--rope-dim 100000000 pads far past this model/.test(e.message));
});

test("the export decodes (kv_b absorbed, batched, sequences of different lengths) to the logits of its full forward", async () => {
  const out = path.join(tmpDir(), "ds-decode");
  await exportDeepseek(await disjointConversion(), { out, progress: null });
  const { model } = loadModel(out, { backend: new ReferenceBackend("f64") });
  const V = model.config.vocabSize;
  const seqs = [IDS, IDS.subarray(0, 5).map((t) => (t * 7) % V)];
  const caches = seqs.map((s) => {
    const cache = model.newCache();
    model.forward(s.subarray(0, -1), cache).dispose();
    return cache;
  });
  const step = model.decodeBatch(Int32Array.from(seqs, (s) => s[s.length - 1]!), caches).toArray();
  seqs.forEach((s, b) => {
    const full = model.forward(s).toArray().subarray((s.length - 1) * V, s.length * V);
    const d = maxRelDiff(step.subarray(b * V, (b + 1) * V), full);
    assert.ok(d < 1e-9, `sequence ${b}: ${d}`);
  });
});

test("pipeline --rope-disjoint --export deepseek: convert, fine-tune, export; the export scores as the fine-tuned model; without --rope-disjoint it is refused before anything runs", async () => {
  const out = path.join(tmpDir(), "pl");
  const common = { evalText: TEXT, evalTokens: 1000, device: "cpu" as const, progress: null };
  const r = await pipeline(path.join(MODELS, "stories260K"), { ...common, out, export: "deepseek", convert: { rank: 2, ropePairs: 1, ropeDisjoint: true, calib: CALIB }, finetune: { data: [TEXT], tokens: 2 * 8 * 64, seq: 64, batch: 8, device: "cpu" } });
  assert.deepEqual(r.phases.map((p) => p.name), ["convert", "eval original", "eval converted", "finetune", "eval fine-tuned", "export", "eval exported (deepseek_v3)", "report"]);
  assert.equal(r.evals[3]!.attention, "deepseek-mla");
  assert.ok(Math.abs(r.evals[3]!.nll! - r.evals[2]!.nll!) < 1e-4, `fine-tuned ${r.evals[2]!.nll} vs its export ${r.evals[3]!.nll}`);
  const never = path.join(tmpDir(), "pl-never");
  await assert.rejects(pipeline(path.join(MODELS, "stories260K"), { ...common, out: never, export: "deepseek", convert: { rank: 2, ropePairs: 1 } }), (e: unknown) => e instanceof MlaError && /hint: add --rope-disjoint/.test(e.message));
  assert.equal(fs.existsSync(never), false);
});

test("export refuses what DeepSeek-V3 cannot hold exactly, naming it, and writes nothing", async () => {
  assert.throws(() => exportLadder([[[0, 2], [2, 3]]]), (e: unknown) => e instanceof MlaError && /layer 0 keeps RoPE pair 2 on KV heads 0 and 1/.test(e.message) && /hint: convert the original with --rope-disjoint/.test(e.message));
  assert.deepEqual(exportLadder([[[0, 4], [2, 6]], [[2], [8]]]), { spacing: 2, slots: 5 });
  const shared = path.join(tmpDir(), "shared");
  await convert(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, ropeStrategy: "uniform", out: shared, progress: null, device: "cpu" });
  const out = path.join(tmpDir(), "never");
  await assert.rejects(exportDeepseek(shared, { out, progress: null }), (e: unknown) => e instanceof MlaError && e.code === "UNSUPPORTED" && /keeps RoPE pair 0 on KV heads 0 and 1/.test(e.message));
  assert.match(inspectModel(shared).mla!.deepseek_export, /^no: layer 0 keeps RoPE pair 0 on KV heads 0 and 1/);
  assert.match(inspectModel(await disjointConversion("uniform")).mla!.deepseek_export, /^exact \(shared rope key of 8 dims, spacing 1\)/);
  const eg = path.join(tmpDir(), "eg");
  await convert(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, ropeDisjoint: true, ropeStrategy: "uniform", attention: "eg-mla", gateDim: 4, out: eg, progress: null, device: "cpu" });
  await assert.rejects(exportDeepseek(eg, { out, progress: null }), (e: unknown) => e instanceof MlaError && /EG-MLA/.test(e.message));
  await assert.rejects(exportDeepseek(path.join(MODELS, "stories260K"), { out, progress: null }), (e: unknown) => e instanceof MlaError && /not in our MLA format/.test(e.message));
  assert.throws(() => checkExportSettings(readHfConfig(path.join(MODELS, "stories260K")), 4, false), (e: unknown) => e instanceof MlaError && /every RoPE pair is kept \(R 4 = head_dim\/2\)/.test(e.message));
  assert.equal(fs.existsSync(out), false);
});

test("export --eval-text on a model without a tokenizer is refused before anything is written; without --eval-text it exports", async () => {
  const mla = await disjointConversion("uniform");
  for (const f of fs.readdirSync(mla)) if (/^tokenizer/.test(f)) fs.rmSync(path.join(mla, f));
  const parent = tmpDir();
  const lines: string[] = [];
  await assert.rejects(exportDeepseek(mla, { out: path.join(parent, "ds"), evalText: CALIB, progress: { write: (l) => void lines.push(l) } }), (e: unknown) => e instanceof MlaError && /tokenizer/.test(e.message));
  assert.deepEqual(lines, [], "refused before the first layer was written");
  assert.deepEqual(fs.readdirSync(parent), []);
  await exportDeepseek(mla, { out: path.join(parent, "ds"), device: "cpu" });
  assert.ok(fs.existsSync(path.join(parent, "ds", "config.json")));
});

test("a per-layer model (--kv-split per-layer) is refused by the export and by pipeline --export deepseek, before anything is written", async () => {
  const out = path.join(tmpDir(), "never-per-layer");
  const perLayer = (e: unknown) => e instanceof MlaError && e.code === "UNSUPPORTED" && /DeepSeek-V3's config has one kv_lora_rank and one qk_rope_head_dim for every layer/.test(e.message) && /hint: export a uniform conversion/.test(e.message);
  await assert.rejects(exportDeepseek(await perLayerFixture(), { out, progress: null }), (e: unknown) => perLayer(e) && /per layer R \d+(, \d+){4}/.test((e as Error).message));
  await assert.rejects(pipeline(path.join(MODELS, "stories260K"), { out, evalText: TEXT, export: "deepseek", convert: { rank: 2, ropePairs: 1, ropeDisjoint: true, calib: CALIB, kvSplit: "per-layer", kvSplitPairs: [0, 1] }, progress: null }), perLayer);
  assert.equal(fs.existsSync(out), false);
});

// The fixture: `python3 test/golden/deepseek_check.py --model DIR --text fixtures/text/tinystories_25k.txt
// --fixture fixtures/golden/stories260K_export_deepseek.safetensors` on the export of disjointConversion()
// (GPU machine, transformers 5.17; its NLL there equalled ours to 6 digits: docs/benchmarks.md).
test("stock transformers' DeepseekV3ForCausalLM on the export gives our logits within 1e-3 relative (fixture)", async () => {
  const fx = SafetensorsFile.open(path.join(GOLDEN, "stories260K_export_deepseek.safetensors"));
  const ids = Int32Array.from(fx.readF32("ids"));
  const want = fx.readF32("logits");
  fx.close();
  const out = path.join(tmpDir(), "ds-golden");
  await exportDeepseek(await disjointConversion(), { out, progress: null });
  const { model } = loadModel(out, { backend: new ReferenceBackend("f32") });
  const d = maxRelDiff(model.forward(ids).toArray(), want);
  assert.ok(d < 1e-3, `max relative logit difference ${d}`);
});

test("export refuses a --rope-dim whose padded rope_theta passes float32's range (loaders compute the frequencies in float32: all but the first would be 0), naming the largest that fits", async () => {
  const dir = tmpDir();
  const smol = path.join(dir, "smol");
  await synth({ arch: "smollm-135m", layers: 1, out: smol, progress: null });
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(MODELS, "stories260K", f), path.join(smol, f));
  const mla = path.join(dir, "mla");
  await convert(smol, { rank: 8, ropePairs: 1, ropeDisjoint: true, ropeStrategy: "uniform", out: mla, progress: null, device: "reference" });
  // 3 KV heads · 1 pair on 32 frequencies: spacing 10, θ 1e4; padded to 64 dims, rope_theta = 1e4^10.
  await assert.rejects(exportDeepseek(mla, { out: path.join(dir, "ds"), kvLoraRank: 512, ropeDim: 64, progress: null }), (e: unknown) => e instanceof MlaError && /--rope-dim 64 pads the rope key so far that its rope_theta, 1\.000e\+40, is past float32's range[\s\S]*use an even --rope-dim from 6 to 60/.test(e.message));
  const ok = await exportDeepseek(mla, { out: path.join(dir, "ds"), ropeDim: 60, progress: null });
  assert.ok(ok.ropeTheta < 3.4e38);
});
