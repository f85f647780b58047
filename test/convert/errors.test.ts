import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { checkOutDir, defaultOut, modelName } from "../../src/convert/plan.js";
import { convert, ConvertOptions } from "../../src/convert/pipeline.js";
import { convertDeepseek } from "../../src/deepseek/export.js";
import { exportDeepseek } from "../../src/deepseek/fromMla.js";
import { pipeline } from "../../src/pipeline.js";
import { parseStrategy } from "../../src/ropeSelect/strategies.js";
import { beginOutDir } from "../../src/io/atomicDir.js";
import { synth } from "../../src/synth/synth.js";
import { FIXTURES, MODELS, ROOT, tmpDir, watchChild } from "../helpers.js";

const MAIN = path.join(ROOT, "dist", "src", "cli", "main.js");
const TEXT = path.join(FIXTURES, "text", "tinystories.txt");

async function refused({ model, ...opts }: Partial<ConvertOptions> & { model?: string }, re: RegExp): Promise<void> {
  const parent = tmpDir();
  const out = opts.out ?? path.join(parent, "out");
  await assert.rejects(convert(model ?? path.join(MODELS, "stories260K"), { rank: 2, progress: null, ...opts, out }), (e: Error) => e instanceof MlaError && re.test(e.message) && /hint:/.test(e.message));
  if (!opts.out) assert.deepEqual(fs.readdirSync(parent), [], "no output or temporary folder left");
}

test("rank and rope pairs out of range name the valid range", async () => {
  await refused({ rank: 0 }, /--rank 0 is out of range[\s\S]*1…14/);
  await refused({ rank: 15, ropePairs: 1 }, /--rank 15 is out of range[\s\S]*1…14/);
  await refused({ rank: 2, ropePairs: 5 }, /--rope-pairs 5 is out of range[\s\S]*0…4/);
  // The default is head_dim/16 rounded down but at least 1: stories260K's head_dim 8 gives 1, not 0.5.
  await refused({ rank: 2, ropePairs: 9 }, /hint: use an integer in 0…4 \(default 1: head_dim\/16 rounded down, at least 1\)$/);
  // A fraction is named as such, not as out of range (1.5 lies within 0…4).
  await refused({ rank: 2, ropePairs: 1.5 }, /^--rope-pairs 1\.5 is not a whole number\n/);
  await assert.rejects(convertDeepseek(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1.5, out: path.join(tmpDir(), "ds"), progress: null }), (e: Error) => e instanceof MlaError && /^--rope-pairs 1\.5 is not a whole number\n {2}hint: use an integer in 1…4$/.test(e.message));
  await refused({ rank: 2, ropePairs: 4, svd: "split" }, /--svd split needs position-free key dims/);
  // Balancing is for the joint SVD only: split ignored balanceKv without a word, then warned of false;
  // now either is refused, as on the command line (test/cli/conversionOptions.test.ts).
  await refused({ rank: 2, ropePairs: 1, svd: "split", balanceKv: false }, /^--no-balance-kv has no effect without --svd joint \(keys are balanced against values only for the joint SVD of \[keys; values\]\)\n {2}hint: use --svd joint, or leave --no-balance-kv out$/);
  await refused({ rank: 2, ropePairs: 1, svd: "split", balanceKv: true, dryRun: true }, /^--balance-kv has no effect without --svd joint/);
  const split = path.join(tmpDir(), "split");
  await convert(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, svd: "split", progress: null, out: split });
  // The record says what was done: the split SVD balances nothing.
  assert.equal(JSON.parse(fs.readFileSync(path.join(split, "mla_conversion.json"), "utf8")).settings.balanceKv, false);
  assert.throws(() => parseStrategy("random"), /--rope-strategy random is not known[\s\S]*high, low, uniform, 2-norm/);
});

test("an existing --out without --force, and --out equal to the input, are refused", async () => {
  const parent = tmpDir();
  const out = path.join(parent, "exists");
  fs.mkdirSync(out);
  await refused({ out }, /already exists[\s\S]*--force/);
  const copy = path.join(tmpDir(), "model");
  fs.cpSync(path.join(MODELS, "stories260K"), copy, { recursive: true });
  const before = fs.readFileSync(path.join(copy, "model.safetensors"));
  await refused({ model: copy, out: copy, force: true }, /is the input model folder/);
  // A folder that holds the model (replacing it with --force deleted the model), one inside it, and
  // one that holds the calibration text.
  await refused({ model: copy, out: path.dirname(copy), force: true }, /holds the input model folder[\s\S]*contains none of the inputs/);
  await refused({ model: copy, out: path.join(copy, "sub"), force: true }, /is the input model folder or inside it/);
  const calibDir = tmpDir(), calib = path.join(calibDir, "calib.txt");
  fs.copyFileSync(path.join(FIXTURES, "text", "tinystories.txt"), calib);
  await refused({ model: copy, out: calibDir, calib, force: true }, /holds --calib/);
  assert.deepEqual(fs.readFileSync(path.join(copy, "model.safetensors")), before, "input unchanged");
  assert.ok(fs.existsSync(calib), "calibration text kept");
});

test("a file as out is refused by checkOutDir, --force or not: convert(), convertDeepseek() and exportDeepseek() refuse it before calibrating or factoring (only beginOutDir refused it, after the work)", async () => {
  const dir = tmpDir(), file = path.join(dir, "notes.txt");
  fs.writeFileSync(file, "keep me");
  const isFile = (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && e.message.startsWith(`--out ${file} is a file, not a folder\n  hint: `);
  for (const force of [false, true]) assert.throws(() => checkOutDir(file, path.join(MODELS, "stories260K"), force), isFile);
  const mla = path.join(dir, "mla");
  await convert(path.join(MODELS, "stories260K"), { rank: 2, ropeDisjoint: true, out: mla, progress: null });
  const lines: string[] = [];
  const logger = { info: (m: string) => lines.push(m), warn: (m: string) => lines.push(m) };
  const o = { out: file, force: true, calib: TEXT, progress: null, logger };
  await assert.rejects(convert(path.join(MODELS, "stories260K"), { rank: 2, ropeStrategy: "2-norm", ...o }), isFile);
  await assert.rejects(convertDeepseek(path.join(MODELS, "stories260K"), { rank: 2, ...o }), isFile);
  await assert.rejects(exportDeepseek(mla, { out: file, force: true, progress: null, logger }), isFile);
  // Their dry runs say what the run would be refused for.
  await assert.rejects(convert(path.join(MODELS, "stories260K"), { rank: 2, ...o, calib: undefined, dryRun: true }), isFile);
  await assert.rejects(convertDeepseek(path.join(MODELS, "stories260K"), { rank: 2, ...o, calib: undefined, dryRun: true }), isFile);
  // … and the refusals of --out the run meets (its dry run had approved them): the input folder, a
  // folder this tool did not write, a path under a file (refused only when the run made its folder).
  const src = path.join(MODELS, "stories260K");
  const foreign = path.join(dir, "foreign");
  fs.mkdirSync(foreign);
  fs.writeFileSync(path.join(foreign, "mine.txt"), "mine");
  for (const [out, re] of [[src, /is the input model folder/], [foreign, /holds no model this tool wrote/], [path.join(file, "x"), /: .* is a file, not a folder/]] as const) {
    await assert.rejects(convert(src, { rank: 2, out, force: true, dryRun: true, progress: null, logger }), (e: unknown) => e instanceof MlaError && re.test(e.message), out);
    await assert.rejects(convertDeepseek(src, { rank: 2, out, force: true, dryRun: true, progress: null, logger }), (e: unknown) => e instanceof MlaError && re.test(e.message), out);
  }
  await assert.rejects(convert(src, { rank: 2, out: path.join(file, "x"), progress: null, logger }), /: .* is a file, not a folder/);
  // Planning warnings (serving sizes) may come; the work's lines may not.
  assert.deepEqual(lines.filter((l) => /calibration windows|factoring|device:/.test(l)), [], "nothing calibrated, factored or loaded");
  assert.equal(fs.readFileSync(file, "utf8"), "keep me");
  assert.equal(fs.readFileSync(path.join(foreign, "mine.txt"), "utf8"), "mine");
});

test("a config.json whose sizes the weights do not have is refused before any work, naming the tensor (not a chunk error)", async () => {
  const copy = path.join(tmpDir(), "model");
  fs.cpSync(path.join(MODELS, "stories260K"), copy, { recursive: true });
  const cfg = JSON.parse(fs.readFileSync(path.join(copy, "config.json"), "utf8"));
  fs.writeFileSync(path.join(copy, "config.json"), JSON.stringify({ ...cfg, hidden_size: 2 * cfg.hidden_size }));
  await refused({ model: copy, rank: 4, ropePairs: 1 }, /tensor "model\.embed_tokens\.weight" has shape \[512,64\], config\.json implies \[512,128\][\s\S]*belong to different models/);
});

test("calibration windows without calib are refused by convert(), convertDeepseek() and pipeline(), in the command line's words, before any work (they were dropped unseen)", async () => {
  const idle = /^--calib-samples has no effect without --calib FILE \(settings of the calibration windows\)\n {2}hint: add --calib FILE, or leave --calib-samples out$/;
  await refused({ calibSamples: 8 }, idle);
  await refused({ calibLen: 64, dryRun: true }, /^--calib-len has no effect without --calib FILE/);
  await refused({ calibSamples: 8, calibLen: 64, ropeStrategy: "high" }, /^--calib-samples and --calib-len have no effect without --calib FILE[\s\S]*hint: add --calib FILE, or leave --calib-samples and --calib-len out$/);
  const parent = tmpDir();
  const out = path.join(parent, "ds");
  for (const o of [{ calibSamples: 8 }, { calibSamples: 8, dryRun: true }])
    await assert.rejects(convertDeepseek(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, ...o, out, progress: null }), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && idle.test(e.message));
  await assert.rejects(pipeline(path.join(MODELS, "stories260K"), { convert: { rank: 2, calibLen: 64 }, evalText: TEXT, out: path.join(parent, "pl"), progress: null }), (e: unknown) => e instanceof MlaError && /^--calib-len has no effect without --calib FILE/.test(e.message));
  assert.deepEqual(fs.readdirSync(parent), [], "nothing written");
  // With calib they are read: the record says how many windows.
  const ok = path.join(tmpDir(), "ok");
  await convert(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, calib: TEXT, calibSamples: 2, calibLen: 64, out: ok, progress: null });
  assert.equal(JSON.parse(fs.readFileSync(path.join(ok, "mla_conversion.json"), "utf8")).calibration.windows, 2);
});

test("a model that is not Llama-family, a converted model, and too little calibration text are refused", async () => {
  const gpt = path.join(tmpDir(), "gpt2");
  fs.mkdirSync(gpt);
  fs.writeFileSync(path.join(gpt, "config.json"), JSON.stringify({ model_type: "gpt2", n_embd: 64 }));
  await refused({ model: gpt }, /model_type "gpt2" is not supported/);
  const short = path.join(tmpDir(), "short.txt");
  fs.writeFileSync(short, "Once upon a time.");
  await refused({ ropeStrategy: "2-norm", calib: short }, /fewer than one calibration window/);
  await refused({ ropeStrategy: "2-norm" }, /2-norm needs calibration text/);
  await refused({ svdInit: "activations" }, /activations needs calibration text/);
  const conv = path.join(tmpDir(), "conv");
  await convert(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, ropeStrategy: "high", out: conv, progress: null });
  await refused({ model: conv }, /already an MLA checkpoint \(config\.json has an mha2mla section\)/);
  // A deepseek_v3 folder has no mha2mla section: the refusal says what it is, in both formats.
  const ds = path.join(tmpDir(), "ds");
  await convertDeepseek(path.join(MODELS, "stories260K"), { rank: 2, out: ds, progress: null });
  await refused({ model: ds }, /already a deepseek_v3 checkpoint \(config\.json has model_type deepseek_v3\)/);
  await assert.rejects(convertDeepseek(ds, { rank: 2, dryRun: true }), /already a deepseek_v3 checkpoint[\s\S]*hint: convert the original MHA\/GQA model with --format deepseek/);
  await assert.rejects(convertDeepseek(conv, { rank: 2, dryRun: true }), /already an MLA checkpoint[\s\S]*hint: .*mha2mla export MODEL --format deepseek/);
});

test("the CLI refuses an unknown strategy and a bad rank with one error line, exit 1", () => {
  const out = path.join(tmpDir(), "x");
  const a = spawnSync(process.execPath, [MAIN, "convert", "stories260K", "--rank", "99", "--out", out], { encoding: "utf8" });
  assert.equal(a.status, 1);
  assert.match(a.stderr, /^error: --rank 99 is out of range/m);
  const b = spawnSync(process.execPath, [MAIN, "convert", "stories260K", "--rank", "2", "--rope-strategy", "random", "--out", out], { encoding: "utf8" });
  assert.equal(b.status, 1);
  assert.match(b.stderr, /^error: --rope-strategy random is not one of high, low, uniform, 2-norm$/m);
  assert.equal(fs.existsSync(out), false);
});

test("a conversion killed mid-way leaves no output; SIGTERM and SIGHUP (a closed terminal) remove its temporary folder, SIGKILL's is swept by the next run", async () => {
  const model = path.join(tmpDir(), "l7");
  await synth({ arch: "llama2-7b", layers: 1, out: model, progress: null });
  const parent = tmpDir();
  const out = path.join(parent, "mla");
  const run = async (signal: NodeJS.Signals) => {
    const child = spawn(process.execPath, [MAIN, "convert", model, "--rank", "64", "--rope-pairs", "8", "--rope-strategy", "uniform", "--out", out], { stdio: ["ignore", "ignore", "pipe"] });
    const watched = watchChild(child);
    // The temporary folder exists: the conversion is under way and the CLI's signal handlers (set
    // before any command runs) are in place. Kill at once, long before the layer is written.
    await watched.until(() => fs.readdirSync(parent).some((n) => n.includes(".tmp-")), "the conversion's temporary folder");
    child.kill(signal);
    await watched.exited;
    return watched.stderr();
  };
  await run("SIGTERM");
  assert.deepEqual(fs.readdirSync(parent), [], "SIGTERM: nothing left");
  await run("SIGHUP");
  assert.deepEqual(fs.readdirSync(parent), [], "SIGHUP: nothing left");
  await run("SIGKILL");
  assert.equal(fs.existsSync(out), false, "SIGKILL: no output folder");
  assert.equal(fs.readdirSync(parent).filter((n) => n.startsWith(".mla.tmp-")).length, 1, "the killed run's hidden temporary folder");
  const tmp = beginOutDir(out, false);
  assert.deepEqual(fs.readdirSync(parent), [path.basename(tmp)], "stale temporary folder swept");
  fs.rmSync(parent, { recursive: true });
  fs.rmSync(model, { recursive: true });
});

test("a closed stderr (`convert … 2>&1 | head`) stops the run as SIGHUP does: exit 130 and no temporary folder (EPIPE crashed it with exit 1 and left one)", async () => {
  const parent = tmpDir();
  for (const args of [["convert", "stories260K", "--rank", "2"], ["synth", "--arch", "stories260k"]]) {
    const child = spawn(process.execPath, [MAIN, ...args, "--out", path.join(parent, "out")], { stdio: ["ignore", "ignore", "pipe"] });
    // The reader is gone before the CLI has loaded: its first line to stderr fails.
    child.stderr.destroy();
    const code = await new Promise<number | null>((r) => child.on("exit", r));
    assert.equal(code, 130, args[0]);
    assert.deepEqual(fs.readdirSync(parent), [], `${args[0]}: no output and no temporary folder`);
  }
  fs.rmSync(parent, { recursive: true });
});

test("convert refuses the deepseek_v3 widths without --format deepseek (either way for the booleans), and a --calib no setting reads", () => {
  const parent = tmpDir();
  const out = path.join(parent, "out");
  for (const flags of [["--rope-dim", "8"], ["--kv-lora-rank", "16"], ["--no-rope-interleave"], ["--rope-interleave"], ["--attention-bias"], ["--no-attention-bias"]]) {
    const r = spawnSync(process.execPath, [MAIN, "convert", "stories260K", "--rank", "2", ...flags, "--out", out], { encoding: "utf8" });
    assert.equal(r.status, 1, flags.join(" "));
    assert.match(r.stderr, new RegExp(`^error: ${flags[0]} has no effect without --format deepseek .*\\n  hint: add --format deepseek, or leave ${flags[0]} out`, "m"));
  }
  const calib = path.join(FIXTURES, "text", "tinystories.txt");
  for (const dry of [[], ["--dry-run"]]) {
    const w = spawnSync(process.execPath, [MAIN, "convert", "stories260K", "--rank", "2", "--rope-strategy", "high", "--calib", calib, ...dry, "--out", out, "--device", "cpu"], { encoding: "utf8" });
    assert.equal(w.status, 1, w.stderr);
    assert.equal(w.stderr, "error: --calib has no effect without --rope-strategy 2-norm, --svd-init activations, --refit-output or --kv-split per-layer (the settings that read calibration text; --rope-strategy high does not)\n  hint: add the one you meant, or leave --calib out\n");
  }
  assert.deepEqual(fs.readdirSync(parent), [], "nothing written");
  const quiet = spawnSync(process.execPath, [MAIN, "convert", "stories260K", "--rank", "2", "--calib", calib, "--out", out, "--device", "cpu"], { encoding: "utf8" });
  assert.equal(quiet.status, 0, quiet.stderr);
  assert.doesNotMatch(quiet.stderr, /--calib/, "the default 2-norm strategy reads it");
  const read = spawnSync(process.execPath, [MAIN, "convert", "stories260K", "--rank", "2", "--rope-strategy", "high", "--svd-init", "activations", "--calib", calib, "--dry-run"], { encoding: "utf8" });
  assert.equal(read.status, 0, read.stderr);
});

test("a model whose files are links (a Hugging Face hub snapshot into ../../blobs): --out over the folder they point into, or one holding it, is refused, --force or not", async () => {
  const store = path.join(tmpDir(), "store");
  const blobs = path.join(store, "blobs");
  const snapshot = path.join(tmpDir(), "snapshots", "abc123");
  fs.mkdirSync(blobs, { recursive: true });
  fs.mkdirSync(snapshot, { recursive: true });
  for (const f of fs.readdirSync(path.join(MODELS, "stories260K"))) {
    fs.copyFileSync(path.join(MODELS, "stories260K", f), path.join(blobs, `blob-${f}`));
    fs.symlinkSync(path.join(blobs, `blob-${f}`), path.join(snapshot, f));
  }
  const before = fs.readdirSync(blobs).sort();
  for (const out of [blobs, store]) await refused({ model: snapshot, out, force: true, ropeStrategy: "high" }, /--out .* (is|holds) .*blobs, where files of the input model folder .* are linked from/);
  assert.deepEqual(fs.readdirSync(blobs).sort(), before, "the blobs are untouched");
});

test("default output names start with the model as named (a hub id's last part), not its resolved folder (a snapshot hash)", () => {
  assert.equal(modelName("org/tiny-mla"), "tiny-mla");
  assert.equal(modelName("."), path.basename(process.cwd()));
  assert.equal(modelName("my model!"), "my_model_");
  assert.equal(defaultOut("org/tiny", 64), path.resolve("tiny-mla-r64"));
});

test("an unknown device is refused by a dry run, and by a conversion or export that never selects a backend (it was taken without a word)", async () => {
  const src = path.join(MODELS, "stories260K");
  const device = "gpu" as unknown as ConvertOptions["device"];
  const unknown = (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && /--device gpu is not known[\s\S]*hint: use one of auto, reference, cpu, cuda/.test(e.message);
  await assert.rejects(convert(src, { rank: 2, dryRun: true, device, progress: null }), unknown);
  await assert.rejects(convertDeepseek(src, { rank: 2, dryRun: true, device, progress: null }), unknown);
  const mla = path.join(tmpDir(), "mla");
  await convert(src, { rank: 2, ropeDisjoint: true, out: mla, progress: null });
  const out = path.join(tmpDir(), "ds");
  await assert.rejects(exportDeepseek(mla, { out, device, progress: null }), unknown);
  assert.equal(fs.existsSync(out), false);
});

test("--calib beside --rope-pairs 0 or every pair (one count for all layers) is refused: 2-norm has no pairs to rank; without --calib, 2-norm asked there needs none; another reader of the text keeps it", async () => {
  for (const ropePairs of [0, 4])
    await refused({ rank: 2, ropePairs, calib: TEXT }, new RegExp(`^--calib has no effect here: --rope-pairs ${ropePairs} keeps ${ropePairs ? "every" : "no"} frequency pair, so 2-norm has no pairs to rank, and no other setting reads calibration text\\n  hint: leave out --calib`));
  const out = path.join(tmpDir(), "o");
  await convert(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 0, ropeStrategy: "2-norm", out, progress: null });
  assert.ok(fs.existsSync(path.join(out, "config.json")), "2-norm with no pairs to rank converts without a text");
  await convert(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 0, calib: TEXT, svdInit: "activations", out, force: true, progress: null });
});
