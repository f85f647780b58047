/**
 * `study` checks every option before its first run, and before --force clears an earlier study: a
 * bad --lr or a width one variant's conversion refuses used to surface after the runs before it. Flags
 * no variant uses (--gate-dim without eg-mla, --ranks with MHA alone) are refused, naming both flags.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { convert } from "../../src/convert/pipeline.js";
import { plannedRuns, study, type StudyOptions } from "../../src/study/study.js";
import { readHfConfig } from "../../src/io/hfConfig.js";
import { assertKept, earlierOut, FIXTURES, MODELS, ROOT, tmpDir } from "../helpers.js";

const MAIN = path.join(ROOT, "dist", "src", "cli", "main.js");
const LIKE = path.join(MODELS, "stories260K");
const DATA = path.join(FIXTURES, "text", "tinystories_25k.txt");
const HAVE_CUDA = fs.existsSync(path.join(ROOT, "build", "native", "libmla_cuda.so"));

test("study refuses a bad option of any run before the first run, --force or not, naming the flag", async () => {
  const mla = path.join(tmpDir(), "mla");
  await convert(LIKE, { rank: 2, out: mla, progress: null, device: "reference" });
  const base: StudyOptions = { like: LIKE, variants: ["mha", "mla-rope", "eg-mla"], ranks: ["d/2"], data: DATA, tokens: 256, seq: 32, batch: 4, out: "", force: true, device: "reference", progress: null };
  const cases: [Partial<StudyOptions>, RegExp][] = [
    [{ lr: 0 }, /--lr 0 must be a positive number/],
    [{ tokens: 0 }, /--tokens 0 must be a positive integer/],
    [{ seq: 1 }, /--seq 1 is too small/],
    [{ batch: 2.5 }, /--batch 2\.5 must be a positive integer/],
    [{ evalEvery: -1 }, /--eval-every -1 must be a positive integer/],
    // The third run's conversion would refuse these, after two runs' training.
    [{ gateDim: 0 }, /the eg-mla variant at latent 32 \(8 per KV head\): --gate-dim 0 is not a positive integer/],
    [{ ranks: ["d"] }, /the mla-rope variant at latent 64 \(16 per KV head\): --rank 16 is out of range/],
    [{ ranks: [] }, /--ranks is empty/],
    [{ data: FIXTURES }, /fixtures is a folder, not a text file/],
    [{ like: mla }, /is an MLA checkpoint\n {2}hint: pass the original MHA\/GQA model to --like/],
    ...(HAVE_CUDA ? [] : ([[{ device: "cuda" }, /--device cuda: /]] as [Partial<StudyOptions>, RegExp][])),
  ];
  for (const [opts, re] of cases) {
    const out = earlierOut();
    await assert.rejects(study({ ...base, ...opts, out }), (e: unknown) => e instanceof MlaError && re.test(e.message), `${JSON.stringify(opts)} → ${re}`);
    assertKept(out, JSON.stringify(opts));
  }
});

test("study refuses --gate-dim without the eg-mla variant and --ranks without an MLA variant, naming both flags", async () => {
  const base: StudyOptions = { like: LIKE, variants: ["mha"], data: DATA, tokens: 256, out: "", force: true, device: "reference", progress: null };
  const cases: [Partial<StudyOptions>, RegExp][] = [
    [{ variants: ["mha", "mla"], gateDim: 8 }, /--gate-dim has no effect without eg-mla in --variants .*\n {2}hint: add eg-mla to --variants, or leave --gate-dim out/],
    [{ ranks: ["d/2"] }, /--ranks has no effect without an MLA variant in --variants .*\n {2}hint: add one of mla, mla-rope, eg-mla to --variants, or leave --ranks out/],
  ];
  for (const [opts, re] of cases) {
    const out = earlierOut();
    await assert.rejects(study({ ...base, ...opts, out }), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message), `${JSON.stringify(opts)} → ${re}`);
    assertKept(out);
  }
});

test("study on the command line: --gate-dim and --ranks get no yargs default (a study of MHA alone would refuse it), and a given one is refused", () => {
  const common = ["study", "--like", LIKE, "--data", DATA, "--tokens", "256", "--variants", "mha", "--device", "reference", "--out", path.join(tmpDir(), "never"), "--lr", "0"];
  // Without them, the run goes on to the next check (--lr 0 here): neither is defaulted behind the user's back.
  const plain = spawnSync(process.execPath, [MAIN, ...common], { encoding: "utf8" });
  assert.match(plain.stderr, /^error: --lr 0 must be a positive number/m);
  const gate = spawnSync(process.execPath, [MAIN, ...common, "--gate-dim", "8"], { encoding: "utf8" });
  assert.equal(gate.status, 1);
  assert.match(gate.stderr, /^error: --gate-dim has no effect without eg-mla in --variants/m);
});

test("a --like without a tokenizer is refused by name; a fresh study that fails before any run kept work leaves no folder to block the corrected command", async () => {
  const bare = path.join(tmpDir(), "bare");
  fs.mkdirSync(bare);
  fs.copyFileSync(path.join(LIKE, "config.json"), path.join(bare, "config.json"));
  fs.copyFileSync(path.join(LIKE, "model.safetensors"), path.join(bare, "model.safetensors"));
  const base: StudyOptions = { like: LIKE, variants: ["mha"], data: DATA, tokens: 256, seq: 32, batch: 4, out: path.join(tmpDir(), "st"), device: "reference", progress: null };
  await assert.rejects(study({ ...base, like: bare }), (e: unknown) => e instanceof MlaError && /--like .*bare has no tokenizer\.json/.test(e.message));
  // A --seq longer than the text holds fails in the first run's fine-tune, after the study's folder was made.
  await assert.rejects(study({ ...base, seq: 100_000 }), (e: unknown) => e instanceof MlaError && e.code !== "INTERRUPTED");
  assert.equal(fs.existsSync(base.out), false, "nothing kept: the folder is gone");
});

test("a variant or latent width named twice is one run", () => {
  const c = readHfConfig(LIKE);
  const { runs } = plannedRuns({ like: LIKE, variants: ["mha", "mla", "mla", "mha"], ranks: ["d/2", "32"], data: DATA, tokens: 256, out: "x" }, c);
  assert.deepEqual(runs, [{ variant: "mha", L: null }, { variant: "mla", L: 32 }]);
});
