/**
 * `convert --refit-output`: o_proj re-solved by least squares on calibration text (src/convert/refitOutput.ts).
 * In both formats it lowers every layer's calibration output error and the held-out NLL, changes
 * nothing but o_proj, keeps an exact conversion as it was, and needs calibration text.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { Checkpoint, CheckpointWriter, INDEX_FILE } from "../../src/io/checkpoint.js";
import { writeSafetensorsSync } from "../../src/io/safetensors.js";
import { refitOutputProjections } from "../../src/convert/refitOutput.js";
import { RefitMoments } from "../../src/convert/refitMoments.js";
import { calibrationWindows } from "../../src/ropeSelect/calibrate.js";
import { readText } from "../../src/eval/perplexity.js";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { referenceBackend } from "../../src/backends/reference/index.js";
import { convert } from "../../src/convert/pipeline.js";
import { convertDeepseek } from "../../src/deepseek/export.js";
import { maxRank } from "../../src/convert/factor.js";
import { evaluate } from "../../src/eval/evaluate.js";
import { loadModel } from "../../src/model/llama.js";
import { MlaError } from "../../src/errors.js";
import { FIXTURES, MODELS, maxAbsDiff, tmpDir } from "../helpers.js";

const SRC = path.join(MODELS, "stories260K");
const CALIB = path.join(FIXTURES, "text", "tinystories.txt");
const HELDOUT = path.join(FIXTURES, "text", "tinystories_heldout.txt");
const nll = async (dir: string) => (await evaluate(dir, { text: HELDOUT, tokens: 3000, ctx: 256, progress: null })).nll!;
const calib = { calib: CALIB, calibSamples: 8, calibLen: 128 };

/** Tensors of two checkpoints whose bytes differ. */
function changedTensors(a: string, b: string): string[] {
  const [x, y] = [Checkpoint.open(a), Checkpoint.open(b)];
  try {
    assert.deepEqual(x.names().sort(), y.names().sort(), "the same tensors");
    return x.names().filter((n) => {
      assert.deepEqual([x.entry(n).dtype, x.entry(n).shape], [y.entry(n).dtype, y.entry(n).shape], n);
      return Buffer.compare(Buffer.from(x.readBytes(n)), Buffer.from(y.readBytes(n))) !== 0;
    });
  } finally {
    x.close();
    y.close();
  }
}

for (const format of ["mla", "deepseek"] as const) {
  test(`--refit-output (${format} format): only o_proj changes, every layer's calibration error falls, held-out NLL falls`, async () => {
    const dir = tmpDir();
    const run = async (refitOutput: boolean, out: string) =>
      format === "mla"
        ? // With the uniform strategy only the refit reads the text: a --calib nothing reads is refused.
          convert(SRC, { rank: 2, ropePairs: 1, ropeStrategy: "uniform", ...(refitOutput ? calib : {}), refitOutput, out, progress: null, device: "auto" })
        : convertDeepseek(SRC, { rank: 2, ropePairs: 1, ...calib, refitOutput, out, progress: null, device: "auto" });
    const [plain, refit] = [path.join(dir, "plain"), path.join(dir, "refit")];
    await run(false, plain);
    await run(true, refit);
    const changed = changedTensors(plain, refit);
    assert.ok(changed.length > 0 && changed.every((n) => /self_attn\.o_proj\.weight$/.test(n)), `changed: ${changed.join(", ")}`);
    const record = JSON.parse(fs.readFileSync(path.join(refit, "mla_conversion.json"), "utf8"));
    const { relative_error_before: before, relative_error_after: after } = record.output_refit;
    assert.equal(before.length, 5);
    before.forEach((b: number, i: number) => assert.ok(after[i] < b, `layer ${i}: ${b} → ${after[i]}`));
    const [a, b] = [await nll(plain), await nll(refit)];
    assert.ok(b < a - 0.1, `held-out NLL ${a} → ${b}`);
  });
}

test("--refit-output keeps an exact conversion exact (nothing to gain, o_proj left as it was)", async () => {
  const src = path.join(MODELS, "stories260K-mha");
  const orig = loadModel(src);
  const c = orig.config;
  const half = c.headDim / 2;
  const out = path.join(tmpDir(), "full");
  await convert(src, { rank: maxRank("joint", c.kvHeads, c.headDim, half, c.hiddenSize), ropePairs: half, ropeStrategy: "high", ...calib, refitOutput: true, out, progress: null, device: "auto" });
  const ids = Int32Array.from([1, 15, 200, 31, 7, 99, 4]);
  const err = maxAbsDiff(loadModel(out).model.forward(ids).toArray(), orig.model.forward(ids).toArray());
  assert.ok(err <= 1e-4, `max |Δ| ${err}`);
});

test("--refit-output keeps an exact conversion of a model with attention biases exact (the converted o_proj bias is not counted twice)", async () => {
  // stories260K-mha with attention_bias: random q, k, v and o biases, which our format keeps.
  const src = path.join(tmpDir(), "biased");
  fs.cpSync(path.join(MODELS, "stories260K-mha"), src, { recursive: true });
  const ck = Checkpoint.open(src);
  let seed = 3;
  const rand = (n: number) => Float32Array.from({ length: n }, () => 0.2 * (((seed = (seed * 16807) % 2147483647) / 2147483647) * 2 - 1));
  const tensors = ck.names().flatMap((name) => {
    const e = ck.entry(name);
    const t = [{ name, dtype: e.dtype, shape: [...e.shape], data: ck.readBytes(name) }];
    if (!/self_attn\.[qkvo]_proj\.weight$/.test(name)) return t;
    return [...t, { name: name.replace(/weight$/, "bias"), dtype: "F32" as const, shape: [e.shape[0]!], data: new Uint8Array(rand(e.shape[0]!).buffer) }];
  });
  ck.close();
  writeSafetensorsSync(path.join(src, "model.safetensors"), tensors, { format: "pt" });
  const file = path.join(src, "config.json");
  fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, "utf8")), attention_bias: true }));
  const orig = loadModel(src);
  const c = orig.config;
  const half = c.headDim / 2;
  const out = path.join(tmpDir(), "full-biased");
  await convert(src, { rank: maxRank("joint", c.kvHeads, c.headDim, half, c.hiddenSize), ropePairs: half, ropeStrategy: "high", ...calib, refitOutput: true, out, progress: null, device: "auto" });
  const record = JSON.parse(fs.readFileSync(path.join(out, "mla_conversion.json"), "utf8"));
  // The moments' float32 products leave a floor near 1e-4 on this measure; the bias counted twice made it ≈ 1.
  record.output_refit.relative_error_before.forEach((b: number, i: number) => assert.ok(b < 1e-3, `layer ${i}: the exact conversion's output error before the refit is ${b}`));
  const ids = Int32Array.from([1, 15, 200, 31, 7, 99, 4]);
  const err = maxAbsDiff(loadModel(out).model.forward(ids).toArray(), orig.model.forward(ids).toArray());
  assert.ok(err <= 1e-4, `max |Δ| ${err}`);
});

test("--refit-output without calibration text is refused before anything is written", async () => {
  const out = path.join(tmpDir(), "x");
  for (const run of [() => convert(SRC, { rank: 2, ropePairs: 1, ropeStrategy: "uniform", refitOutput: true, out, progress: null }), () => convertDeepseek(SRC, { rank: 2, ropePairs: 1, refitOutput: true, out, progress: null })])
    await assert.rejects(run, (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && /--refit-output/.test(e.message) && /hint: pass --calib/.test(e.message));
  assert.equal(fs.existsSync(out), false);
});

test("embedTokens, then layerForward layer by layer, gives forward's hidden states (the refit's streaming path)", () => {
  const { model, config } = loadModel(SRC);
  const ids = Int32Array.from([1, 15, 200, 31, 7, 99, 4, 80]);
  const b = model.backend;
  let h = model.embedTokens(ids);
  for (let l = 0; l < config.layers; l++) h = model.layerForward(l, ids, h);
  const logits = b.linear(b.rmsnorm(h, model.weights.finalNorm, config.rmsEps), model.weights.lmHead);
  assert.ok(maxAbsDiff(logits.toArray(), model.forward(ids).toArray()) <= 1e-5);
});

/** A copy of checkpoint folder `src` in `dst` written in shards of at most `maxShardBytes`. */
async function reshard(src: string, dst: string, maxShardBytes: number): Promise<void> {
  const ck = Checkpoint.open(src);
  try {
    const specs = ck.names().map((name) => ({ name, dtype: ck.entry(name).dtype, shape: ck.entry(name).shape }));
    fs.mkdirSync(dst, { recursive: true });
    const w = new CheckpointWriter(dst, specs, { maxShardBytes, metadata: { format: "pt" } });
    for (const sp of specs) await w.append(ck.readBytes(sp.name).slice());
    await w.close();
  } finally {
    ck.close();
  }
  for (const f of fs.readdirSync(src)) if (!f.endsWith(".safetensors")) fs.copyFileSync(path.join(src, f), path.join(dst, f));
}

test("the refit rewrites a sharded checkpoint to the same tensors as a single-file one", async () => {
  const dir = tmpDir();
  const single = path.join(dir, "single");
  await convert(SRC, { rank: 2, ropePairs: 1, ropeStrategy: "uniform", out: single, progress: null });
  const sharded = path.join(dir, "sharded");
  await reshard(single, sharded, 64 * 1024);
  assert.ok(fs.existsSync(path.join(sharded, INDEX_FILE)), "written in shards");
  const windows = calibrationWindows(loadTokenizer(SRC), readText(CALIB), 4, 64, 1);
  for (const d of [single, sharded]) await refitOutputProjections(SRC, d, windows, referenceBackend, { progress: null });
  assert.deepEqual(changedTensors(single, sharded), []);
  const plain = path.join(dir, "plain");
  await convert(SRC, { rank: 2, ropePairs: 1, ropeStrategy: "uniform", out: plain, progress: null });
  assert.ok(changedTensors(plain, sharded).length > 0, "the refit changed o_proj");
});

test("the refit's least squares: the eigen route (native float64 library) and the Cholesky route agree, and satisfy the normal equations", async (t) => {
  const { nativeLinalg } = await import("../../src/backends/native/cpu.js");
  const linalg = nativeLinalg();
  const b = referenceBackend;
  const [T, Hd, D] = [300, 24, 17];
  let seed = 5;
  const rand = (n: number) => Float32Array.from({ length: n }, () => ((seed = (seed * 16807) % 2147483647) / 2147483647) * 2 - 1);
  const m = new RefitMoments(Hd, D);
  for (let w = 0; w < 2; w++) m.add(b, b.upload(rand(T * Hd), [T, Hd]), b.upload(rand(T * D), [T, D]));
  const ridge = 1e-3;
  const chol = m.solve(ridge);
  // (OᵀO + λI)·Wᵀ = OᵀA, column by column, in float64.
  let trace = 0;
  for (let i = 0; i < Hd; i++) trace += m.oo[i * Hd + i]!;
  const lambda = (ridge * trace) / Hd;
  let worst = 0;
  for (let d = 0; d < D; d++)
    for (let i = 0; i < Hd; i++) {
      let s = lambda * chol[d * Hd + i]!;
      for (let j = 0; j < Hd; j++) s += m.oo[i * Hd + j]! * chol[d * Hd + j]!;
      worst = Math.max(worst, Math.abs(s - m.oa[i * D + d]!) / Math.abs(m.oa[i * D + d]! || 1));
    }
  assert.ok(worst < 1e-4, `normal equations: worst relative residual ${worst}`); // W is stored as float32
  const e0 = m.relativeError(chol);
  assert.ok(e0 > 0 && e0 < 1, `relative error ${e0}`);
  if (!linalg) {
    t.skip("native CPU library not built: the eigen route is checked where it is");
    return;
  }
  const eig = m.solve(ridge, linalg);
  assert.ok(maxAbsDiff(eig, chol) < 1e-5, `eigen vs Cholesky: ${maxAbsDiff(eig, chol)}`);
  assert.ok(Math.abs(m.relativeError(chol, linalg) - e0) < 1e-9, "relative error, both routes");
});
