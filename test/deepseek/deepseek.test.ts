// `convert --format deepseek` and the runtime's deepseek_v3 support: exactness where the format can be
// exact, stock-transformers parity (fixture from test/golden/deepseek_check.py), decode = prefill on the
// latent cache, finite-difference gradients through kv_a_layernorm, refusals.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { convertDeepseek, deepseekShape, roundingFor } from "../../src/deepseek/export.js";
import { constantChannel, validSpacings } from "../../src/deepseek/layer.js";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { loadModel } from "../../src/model/llama.js";
import { paramNodes, trainableLeaves } from "../../src/model/params.js";
import { Ops, Tape } from "../../src/tensor/autograd.js";
import { evaluate } from "../../src/eval/evaluate.js";
import { SafetensorsFile, writeSafetensorsSync } from "../../src/io/safetensors.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { readHfConfig } from "../../src/io/hfConfig.js";
import { MlaError } from "../../src/errors.js";
import { defaultDeepseekOut } from "../../src/convert/plan.js";
import { pipeline } from "../../src/pipeline.js";
import { convertRemedy, SERVING_BIAS_NOTE, servingWarnings } from "../../src/deepseek/serving.js";
import { finiteDifference, FIXTURES, GOLDEN, MODELS, tmpDir } from "../helpers.js";

const TEXT = path.join(FIXTURES, "text", "tinystories_25k.txt");
const CALIB = path.join(FIXTURES, "text", "tinystories.txt");

/** The fixture's export: stories260K, R 1, rank 2 (shared rope key 8 dims, kv_lora_rank 8), calibrated, without BKV. */
async function stories260kDeepseek(): Promise<string> {
  const out = path.join(tmpDir(), "ds");
  await convertDeepseek(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, calib: CALIB, balanceKv: false, out, progress: null, device: "cpu" });
  return out;
}

test("an export whose KV heads are all equal is exact: its NLL equals the original's (RoRoPE, ladder, norm trick, scale folding, interleave, with and without BKV)", async () => {
  // stories260K with every KV head a copy of head 0: one PCA component per frequency carries all of it.
  const dir = path.join(tmpDir(), "tied");
  fs.cpSync(path.join(MODELS, "stories260K"), dir, { recursive: true });
  const ck = Checkpoint.open(dir);
  const tensors = ck.names().map((name) => {
    const e = ck.entry(name);
    const data = ck.readF32(name);
    if (/self_attn\.[kv]_proj\.weight$/.test(name)) {
      const row = data.length / 4; // 4 KV heads of 8 rows each
      for (let h = 1; h < 4; h++) data.copyWithin(h * row, 0, row);
    }
    return { name, dtype: "F32" as const, shape: [...e.shape], data: new Uint8Array(data.buffer) };
  });
  ck.close();
  writeSafetensorsSync(path.join(dir, "model.safetensors"), tensors, { format: "pt" });
  const e = { text: TEXT, tokens: 3000, ctx: 256, progress: null, device: "cpu" as const };
  const orig = await evaluate(dir, e);
  for (const balanceKv of [false, true]) {
    const out = path.join(tmpDir(), `tied-ds-${balanceKv}`);
    await convertDeepseek(dir, { rank: 2, ropeDim: 8, kvLoraRank: 9, balanceKv, out, progress: null, device: "cpu" });
    const ds = await evaluate(out, e);
    assert.ok(Math.abs(orig.nll! - ds.nll!) < 2e-5, `original ${orig.nll} vs deepseek export ${ds.nll} (balance ${balanceKv})`);
  }
});

test("logits equal stock transformers' DeepseekV3ForCausalLM on the same folder within 1e-3 relative (fixture)", async () => {
  const fx = SafetensorsFile.open(path.join(GOLDEN, "stories260K_deepseek.safetensors"));
  const ids = Int32Array.from(fx.readF32("ids"));
  const want = fx.readF32("logits");
  fx.close();
  const { model } = loadModel(await stories260kDeepseek(), { backend: new ReferenceBackend("f32") });
  const got = model.forward(ids).toArray();
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < want.length; i++) {
    diff = Math.max(diff, Math.abs(got[i]! - want[i]!));
    scale = Math.max(scale, Math.abs(want[i]!));
  }
  assert.ok(diff / scale < 1e-3, `max |Δ| ${diff} against max |logit| ${scale}`);
});

test("decode on the latent cache (kv_lora_rank + rope dim per token) gives the prefill logits", async () => {
  const { model } = loadModel(await stories260kDeepseek(), { backend: new ReferenceBackend("f64") });
  const ids = Int32Array.from([1, 403, 57, 22, 301, 9, 77, 120]);
  const full = model.forward(ids).toArray();
  const V = model.config.vocabSize;
  const cache = model.newCache();
  for (let t = 0; t < ids.length; t++) {
    const step = model.forward(ids.subarray(t, t + 1), cache).toArray();
    for (let v = 0; v < V; v++) assert.ok(Math.abs(step[v]! - full[t * V + v]!) < 1e-9, `token ${t}`);
  }
  assert.equal(cache.length, ids.length);
});

test("gradients through kv_a_layernorm, the shared rope key and kv_b match finite differences (float64)", async () => {
  const B = new ReferenceBackend("f64");
  const { model } = loadModel(await stories260kDeepseek(), { backend: B });
  const ids = Int32Array.from([1, 400, 13, 77, 260, 5, 301, 99, 12]);
  const inputs = ids.subarray(0, -1);
  const targets = ids.subarray(1);
  const loss = () => B.crossEntropy(model.forward(inputs), targets).reduce((a, x) => a + x, 0);
  const tape = new Tape(B);
  const P = paramNodes(new Ops(B, tape), model.weights, (p) => p.startsWith("layers.1.attn.") || p === "layers.1.inputNorm");
  const logits = model.graph(new Ops(B, tape), P, inputs);
  tape.backward(logits, B.crossEntropyBackward(logits.value, targets, 1));
  const leaves = trainableLeaves(P);
  assert.deepEqual(leaves.map((l) => l.path.split(".").pop()).sort(), ["inputNorm", "kvA", "kvABias", "kvB", "kvNorm", "o", "oBias", "q"]);
  for (const { path: name, node } of leaves) {
    const { rel, norm } = finiteDifference(node.value.toArray() as Float64Array, node.grad!.toArray(), loss);
    assert.ok(rel <= 1e-4 || norm < 1e-7, `${name}: relative error ${rel.toExponential(2)}`);
  }
});

test("what DeepSeek-V3 cannot express is refused with the reason", async () => {
  await assert.rejects(
    convertDeepseek(path.join(GOLDEN, "tiny-qwen2"), { rank: 2, out: path.join(tmpDir(), "q"), progress: null, device: "cpu" }),
    (e: unknown) => e instanceof MlaError && e.code === "UNSUPPORTED" && /q\/k\/v biases/.test(e.message),
  );
  await assert.rejects(
    convertDeepseek(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, ropeDim: 9, out: path.join(tmpDir(), "d"), progress: null, device: "cpu" }),
    (e: unknown) => e instanceof MlaError && /--rope-dim 9 must be even/.test(e.message),
  );
  const dir = path.join(tmpDir(), "moe");
  fs.cpSync(await stories260kDeepseek(), dir, { recursive: true });
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify({ ...cfg, first_k_dense_replace: 1 }));
  assert.throws(() => loadModel(dir), (e: unknown) => e instanceof MlaError && /mixture-of-experts/.test(e.message));
});

test("--rank and --rope-pairs beside --rope-dim / --kv-lora-rank: a --rope-pairs that sets nothing and disagrees with the cache is refused naming both, an agreeing one taken; mla_conversion.json records them only where they set or agree with the cache", async () => {
  // stories260K: 4 KV heads, head_dim 8; --rank 2 with --rope-pairs 1 budget 4 × (2 + 2·1) = 16 values per token and layer.
  const src = path.join(MODELS, "stories260K");
  await assert.rejects(
    convertDeepseek(src, { rank: 2, ropePairs: 1, ropeDim: 8, kvLoraRank: 9, dryRun: true, progress: null }),
    (e: unknown) => e instanceof MlaError && /^--rope-pairs 1 conflicts with --rope-dim 8 and --kv-lora-rank 9: those two set the cache, 17 values per token and layer, where --rank 2 and --rope-pairs 1 budget 16 \(4 KV heads × \(2 \+ 2·1\)\)\n {2}hint: leave --rope-pairs out/.test(e.message),
  );
  const recorded = async (o: { ropePairs?: number; ropeDim?: number; kvLoraRank?: number }) => {
    const out = path.join(tmpDir(), "ds");
    const said: string[] = [];
    const r = await convertDeepseek(src, { rank: 2, ...o, out, progress: null, device: "cpu", logger: { info: (m) => said.push(m), warn: () => {} } });
    const s = JSON.parse(fs.readFileSync(path.join(out, "mla_conversion.json"), "utf8")).settings;
    assert.deepEqual([s.rope_dim, s.kv_lora_rank], [r.ropeDim, r.kvLoraRank]);
    return { recorded: [s.rank, s.rope_pairs, s.rope_dim, s.kv_lora_rank], noted: said.some((m) => /^note: --rank 2 sets nothing here/.test(m)) };
  };
  assert.deepEqual(await recorded({ ropePairs: 1, ropeDim: 4, kvLoraRank: 12 }), { recorded: [2, 1, 4, 12], noted: false }, "12 + 4 is the budget: both agree");
  assert.deepEqual(await recorded({ ropePairs: 1, ropeDim: 4 }), { recorded: [2, 1, 4, 12], noted: false }, "the budget sets kv_lora_rank");
  assert.deepEqual(await recorded({ ropePairs: 1, kvLoraRank: 12 }), { recorded: [null, 1, 8, 12], noted: true }, "--rope-pairs sets the rope dim; --rank sets nothing");
  assert.deepEqual(await recorded({ ropeDim: 8, kvLoraRank: 9 }), { recorded: [null, null, 8, 9], noted: true }, "the widths set everything");
});

test("--rope-pairs past the head_dim cap beside --kv-lora-rank (no --rope-dim) sets nothing: refused where its budget disagrees with the cache, taken where it agrees, an unused default recorded as null", async () => {
  // stories260K: 4 KV heads, head_dim 8: --rope-pairs 1 fills head_dim, so --rope-pairs 2 gives the same rope dim 8.
  const src = path.join(MODELS, "stories260K");
  await assert.rejects(
    convertDeepseek(src, { rank: 2, ropePairs: 2, kvLoraRank: 12, dryRun: true, progress: null }),
    (e: unknown) => e instanceof MlaError && /^--rope-pairs 2 conflicts with --kv-lora-rank 12: past --rope-pairs 1 the rope dim stays at head_dim 8, so --rope-pairs 2 sets nothing, and --kv-lora-rank 12 with it caches 20 values per token and layer, where --rank 2 and --rope-pairs 2 budget 24 \(4 KV heads × \(2 \+ 2·2\)\)\n {2}hint: give --rope-pairs 1 .*\(kv_lora_rank 16\)$/.test(e.message),
  );
  const out = path.join(tmpDir(), "ds");
  await convertDeepseek(src, { rank: 2, ropePairs: 2, kvLoraRank: 16, out, progress: null, device: "cpu" });
  const s = JSON.parse(fs.readFileSync(path.join(out, "mla_conversion.json"), "utf8")).settings;
  assert.deepEqual([s.rank, s.rope_pairs, s.rope_dim, s.kv_lora_rank], [2, 2, 8, 16], "16 + 8 is the budget 4 × (2 + 2·2): both agree");
  // llama2-7b's shape (32 KV heads of head_dim 128): --rope-pairs 2 fills head_dim and sets it, 3 and the default 8 do not.
  const c = readHfConfig(src);
  const l7b = { ...c, heads: 32, kvHeads: 32, headDim: 128, hiddenSize: 4096 };
  const shape = (ropePairs?: number) => deepseekShape(l7b, { rank: 16, ropePairs, kvLoraRank: 448 });
  assert.deepEqual([shape(2).ropePairs, shape(2).ropeDim], [2, 128]);
  assert.throws(() => shape(3), (e: unknown) => e instanceof MlaError && /^--rope-pairs 3 conflicts with --kv-lora-rank 448: past --rope-pairs 2 /.test(e.message));
  assert.deepEqual([shape().ropePairs, shape().ropeDim, shape().rank], [null, 128, null], "the default 8 sets nothing beside --kv-lora-rank 448 and is not recorded");
  assert.deepEqual(deepseekShape(l7b, { rank: 16, ropePairs: 8 }).ropePairs, 8, "without --kv-lora-rank the budget of --rope-pairs 8 sets kv_lora_rank");
});

test("without --out the folder is named after what set the cache: NAME-deepseek-kv<K> where --kv-lora-rank did and --rank set nothing, NAME-deepseek-r<rank> where --rank did (the --json check before the work predicts the same)", () => {
  const MAIN = path.join(FIXTURES, "..", "dist", "src", "cli", "main.js");
  const cwd = tmpDir();
  const run = (...flags: string[]) => spawnSync(process.execPath, [MAIN, "convert", "stories260K", "--format", "deepseek", ...flags], { encoding: "utf8", cwd });
  // stories260K: --rank 2 and --rope-pairs 1 budget 16 values per token and layer; 20 + 4 is not it.
  const kv = run("--rank", "2", "--kv-lora-rank", "20", "--rope-dim", "4");
  assert.equal(kv.status, 0, kv.stderr);
  assert.deepEqual(fs.readdirSync(cwd), ["stories260K-deepseek-kv20"]);
  assert.equal(JSON.parse(fs.readFileSync(path.join(cwd, "stories260K-deepseek-kv20", "mla_conversion.json"), "utf8")).settings.rank, null);
  const refused = (name: string, ...flags: string[]) => {
    const r = run(...flags, "--json", path.join(name, "config.json"));
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`^error: --json \\S+ is one of the files this command writes in --out \\S+/${name}$`, "m"));
  };
  refused("stories260K-deepseek-kv24", "--rank", "2", "--kv-lora-rank", "24");
  refused("stories260K-deepseek-r2", "--rank", "2", "--rope-pairs", "1", "--kv-lora-rank", "8", "--rope-dim", "8");
  assert.equal(defaultDeepseekOut("org/tiny", 2, 8), path.resolve("tiny-deepseek-r2"));
  assert.equal(defaultDeepseekOut("org/tiny", null, 8), path.resolve("tiny-deepseek-kv8"));
});

test("the CLI: --dry-run writes nothing; --eval-text writes report.json and report.md beside the model", () => {
  const MAIN = path.join(FIXTURES, "..", "dist", "src", "cli", "main.js");
  const dry = path.join(tmpDir(), "dry");
  const r1 = spawnSync(process.execPath, [MAIN, "convert", "stories260K", "--format", "deepseek", "--rank", "2", "--rope-pairs", "1", "--dry-run", "--out", dry], { encoding: "utf8" });
  assert.equal(r1.status, 0, r1.stderr);
  assert.match(r1.stdout, /dry run \(deepseek_v3\): KV cache per token 320 → 80 elements \(-75\.00%; 64 → 16 a layer\)/);
  assert.match(r1.stderr, /warning: kv_lora_rank \d+ with qk_rope_head_dim \d+: FlashMLA, CUTLASS MLA and FlashInfer's MLA decode take only 512 with 64; vLLM refuses it/, "sizes the serving stacks reject are named before the run");
  assert.equal(fs.existsSync(dry), false);
  const out = path.join(tmpDir(), "rep");
  const r2 = spawnSync(process.execPath, [MAIN, "convert", "stories260K", "--format", "deepseek", "--rank", "2", "--rope-pairs", "1", "--eval-text", TEXT, "--eval-tokens", "1000", "--out", out], { encoding: "utf8" });
  assert.equal(r2.status, 0, r2.stderr);
  const rep = JSON.parse(fs.readFileSync(path.join(out, "report.json"), "utf8"));
  assert.equal(rep.format, "deepseek_v3");
  assert.equal(rep.tokens, 1000);
  assert.ok(rep.after > rep.before && fs.existsSync(path.join(out, "report.md")));
});

test("pipeline --format deepseek: convert, fine-tune and report with the deepseek_v3 model named as such", async () => {
  const out = path.join(tmpDir(), "pl");
  const r = await pipeline(path.join(MODELS, "stories260K"), {
    out,
    format: "deepseek",
    convert: { rank: 2, ropePairs: 1, calib: CALIB },
    finetune: { data: [TEXT], tokens: 2 * 8 * 64, seq: 64, batch: 8, device: "cpu" },
    evalText: TEXT,
    evalTokens: 1000,
    device: "cpu",
    progress: null,
  });
  assert.equal(r.evals.length, 3);
  assert.equal(r.evals[1]!.attention, "deepseek-mla");
  assert.ok(r.evals[2]!.nll! < r.evals[1]!.nll!, "fine-tuning the deepseek_v3 model lowers its NLL");
  assert.match(fs.readFileSync(r.report!.md, "utf8"), /DeepSeek-V3 MLA: kv_lora_rank 8, shared rope key 8 dims/);
});

test("serving-stack sizes: 512 + 64 (FlashMLA, CUTLASS MLA, FlashInfer) passes; 256 + 64 is vLLM Triton only; other sizes are refused by vLLM; > 128 heads by CUTLASS MLA", () => {
  // Every size: vLLM and SGLang drop the biases the export needs.
  assert.deepEqual(servingWarnings(512, 64, 32, ""), [SERVING_BIAS_NOTE]);
  assert.match(servingWarnings(256, 64, 32, "").join(), /vLLM \(recent versions only\) takes it on its Triton MLA backend/);
  assert.match(servingWarnings(96, 48, 6, "").join(), /Head dimension 144 is not supported by MLA/);
  assert.match(servingWarnings(512, 64, 256, "").join(), /at most 128/);
  // The remedy is offered only where it applies: llama2-7b (head_dim 128, latent up to 4096), not
  // mha26m-debian (head_dim 64 but hidden 384) or stories260K (head_dim 8).
  assert.match(convertRemedy(128, 4096), /^For the fused kernels convert with --kv-lora-rank 512 --rope-dim 64$/);
  assert.match(convertRemedy(64, 384), /cannot take the fused kernels' sizes .* head_dim 64 and at most 384/);
  assert.match(convertRemedy(8, 64), /cannot take/);
});

test("the constant channel's bias fits an f16 checkpoint (2^16 is inf there: the export was all NaN); a one-slot rope ladder has a spacing", () => {
  const D = 4, latent = 2;
  const down = Float32Array.from({ length: latent * D }, (_, i) => 12 + i); // a latent this large wants β = 2^18
  const wide = constantChannel(down, latent, D, null, roundingFor("BF16"));
  assert.equal(wide.beta, 2 ** 18, "bf16 holds it");
  const f16 = constantChannel(down, latent, D, null, roundingFor("F16"));
  assert.equal(f16.beta, 2 ** 15, "the largest power of two f16 holds");
  assert.ok([...f16.kvNorm, f16.undo, f16.constScale].every(Number.isFinite));
  assert.deepEqual(validSpacings(1, 4), [1], "one slot: frequency 0, any spacing (the loop never ended)");
  assert.deepEqual(validSpacings(3, 4), [1]);
  assert.deepEqual(validSpacings(2, 4), [1, 2, 3]);
});

test("--format deepseek checks --calib before any work, in a dry run too", async () => {
  const missing = path.join(tmpDir(), "missing.txt");
  for (const dryRun of [true, false])
    await assert.rejects(convertDeepseek(path.join(MODELS, "stories260K"), { rank: 2, calib: missing, dryRun, out: path.join(tmpDir(), "o"), progress: null }), (e: unknown) => e instanceof MlaError && e.code === "NOT_FOUND" && /cannot read --calib .*missing\.txt: no such file or folder/.test(e.message));
});

test("mla_conversion.json records the calibration used: the text, its windows and what they held with --calib; null (not the defaults) without", async () => {
  const withCalib = await stories260kDeepseek();
  const rec = JSON.parse(fs.readFileSync(path.join(withCalib, "mla_conversion.json"), "utf8"));
  assert.deepEqual([rec.settings.calib, rec.settings.calib_samples, rec.settings.calib_len], [CALIB, 32, 256]);
  assert.equal(rec.calibration.file, CALIB);
  assert.ok(rec.calibration.windows >= 1 && rec.calibration.windows <= 32);
  assert.equal(rec.calibration.tokens, rec.calibration.windows * 256);
  const out = path.join(tmpDir(), "ds-uncalibrated");
  await convertDeepseek(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, out, progress: null, device: "cpu" });
  const none = JSON.parse(fs.readFileSync(path.join(out, "mla_conversion.json"), "utf8"));
  assert.deepEqual([none.settings.calib, none.settings.calib_samples, none.settings.calib_len], [null, null, null]);
  assert.equal(none.calibration, undefined);
});
