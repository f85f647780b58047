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
    [{ evalEvery: -1 }, /--eval-every -1 must be a whole number of steps, 0 or more/],
    // The third run's conversion would refuse these, after two runs' training.
    [{ gateDim: 0 }, /the eg-mla variant at latent 32 \(8 per KV head\): --gate-dim 0 is not a positive integer/],
    // In --ranks terms, with the widest the variant takes beside its rope keys (convert's --rank was named before).
    [{ ranks: ["d"] }, /--ranks: the mla-rope variant cannot have a latent of 64 per token and layer \(16 per KV head\) on this model: beside its rope keys it factors at most \d+ \(\d+ per KV head\)\n  hint: give mla-rope widths up to \d+ \(e\.g\. d\/2\), and `d` to the mla variant alone/],
    [{ ranks: [] }, /--ranks is empty/],
    [{ data: FIXTURES }, /fixtures is a folder, not a text file/],
    [{ like: mla }, /is an MLA checkpoint\n {2}hint: pass the original MHA\/GQA model to --like/],
    // A step too large for memory, found by the first run's fine-tune with its hint (--accum, --checkpoint-activations: no study flags).
    [{ batch: 10_000_000 }, /needs about [\d.]+ GiB of host memory .*\n {2}hint: a smaller --batch or --seq \(a study trains every weight of each variant, 10000000 × 32 tokens a step\)$/],
    ...(HAVE_CUDA ? [] : ([[{ device: "cuda" }, /--device cuda: /]] as [Partial<StudyOptions>, RegExp][])),
  ];
  for (const [opts, re] of cases) {
    const out = earlierOut();
    await assert.rejects(study({ ...base, ...opts, out }), (e: unknown) => e instanceof MlaError && re.test(e.message), `${JSON.stringify(opts)} → ${re}`);
    assertKept(out, JSON.stringify(opts));
  }
});

test("study refuses --gate-dim without the eg-mla variant and --ranks without an MLA variant, naming both flags (refuseInert's policy: given is any value but undefined or null)", async () => {
  const base: StudyOptions = { like: LIKE, variants: ["mha"], data: DATA, tokens: 256, out: "", force: true, device: "reference", progress: null };
  const cases: [Partial<StudyOptions>, RegExp][] = [
    [{ variants: ["mha", "mla"], gateDim: 8 }, /--gate-dim has no effect without eg-mla in --variants .*\n {2}hint: add eg-mla to --variants, or leave --gate-dim out/],
    // The default's own value is refused too: a script that sets it believes it applied.
    [{ variants: ["mla"], gateDim: 16 }, /--gate-dim has no effect without eg-mla in --variants/],
    [{ ranks: ["d/2"] }, /--ranks has no effect without an MLA variant in --variants .*\n {2}hint: add one of mla, mla-rope, eg-mla to --variants, or leave --ranks out/],
    // An empty list is given (it trained a whole MHA study before).
    [{ ranks: [] }, /--ranks has no effect without an MLA variant in --variants/],
  ];
  for (const [opts, re] of cases) {
    const out = earlierOut();
    await assert.rejects(study({ ...base, ...opts, out }), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message), `${JSON.stringify(opts)} → ${re}`);
    assertKept(out);
  }
  // null counts as not given (a script's "unset"), as for every other refuseInert setting: planned as if left out.
  const c = readHfConfig(LIKE);
  assert.deepEqual(plannedRuns({ ...base, ranks: null as never, gateDim: null as never }, c).runs, [{ variant: "mha", L: null }]);
  assert.deepEqual(plannedRuns({ ...base, variants: ["mla"], gateDim: null as never }, c).runs, [{ variant: "mla", L: 32 }, { variant: "mla", L: 16 }]);
});

test("study refuses what would leave it nothing to report or would destroy a file: --eval-every 0, valFraction 0, an --out that is a file (--force or not), widths that are not d, d/N or digits, an empty variant", async () => {
  const file = path.join(tmpDir(), "notes.txt");
  fs.writeFileSync(file, "mine");
  const base: StudyOptions = { like: LIKE, variants: ["mha"], data: DATA, tokens: 256, seq: 32, batch: 4, out: "", device: "reference", progress: null };
  const cases: [Partial<StudyOptions>, RegExp][] = [
    // A fine-tune takes 0 as "off"; a study made of validation curves would report none (valFraction 0 failed its report with a TypeError).
    [{ evalEvery: 0 }, /--eval-every 0 turns validation off[\s\S]*hint: leave --eval-every out/],
    [{ valFraction: 0 }, /valFraction 0 holds no text out[\s\S]*hint: leave valFraction out/],
    [{ seed: 2 ** 32 }, /--seed 4294967296 is not a whole number in \[0, 2\^32\)/],
    [{ variants: ["mla"], ranks: ["0x20"] }, /--ranks "0x20" is not d, d\/N or a whole number/],
    [{ variants: ["mla"], ranks: [""] }, /--ranks "" is not d, d\/N or a whole number/],
    [{ variants: ["mha", "" as never] }, /--variants mha, has an empty entry/],
  ];
  for (const [opts, re] of cases) {
    const out = earlierOut();
    await assert.rejects(study({ ...base, ...opts, out }), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message), `${JSON.stringify(opts)} → ${re}`);
    assertKept(out, JSON.stringify(opts));
  }
  for (const force of [false, true]) await assert.rejects(study({ ...base, out: file, force }), (e: unknown) => e instanceof MlaError && /--out .*notes\.txt is a file, not a folder/.test(e.message));
  assert.equal(fs.readFileSync(file, "utf8"), "mine", "the file is untouched");
});

test("a damaged study-state.json or row file is named with what to do, not a JSON SyntaxError; a deleted row is measured again", async () => {
  const out = path.join(tmpDir(), "st");
  const o: StudyOptions = { like: LIKE, variants: ["mha"], data: DATA, tokens: 2 * 4 * 32, seq: 32, batch: 4, valFraction: 0.05, out, device: "cpu", progress: null };
  const first = await study(o);
  const state = path.join(out, "study-state.json"), row = path.join(out, "mha.row.json");
  const kept = fs.readFileSync(state, "utf8");
  fs.writeFileSync(state, "{bad");
  await assert.rejects(study(o), (e: unknown) => e instanceof MlaError && /study-state\.json \(the study's settings\): not valid JSON[\s\S]*hint: pass --force to start the study over/.test(e.message));
  fs.writeFileSync(state, kept);
  const good = fs.readFileSync(row, "utf8");
  const nullPoint = JSON.stringify({ ...JSON.parse(good), curve: [[0, null]] });
  const reportBefore = fs.readFileSync(path.join(out, "report.md"), "utf8");
  for (const text of ["{\"rows\":", "{\"label\":\"MHA\"}", nullPoint]) {
    fs.writeFileSync(row, text);
    await assert.rejects(study(o), (e: unknown) => e instanceof MlaError && /mha\.row\.json \(the mha run's result\)(: not valid JSON| lacks (params, kvElemsPerToken, kvBytesPerTokenBf16, valNll, trainTokensPerS, decodeTokensPerS, )?curve)[\s\S]*hint: delete it to measure the trained run \(mha-trained\) again/.test(e.message), text);
  }
  assert.equal(fs.readFileSync(path.join(out, "report.md"), "utf8"), reportBefore, "the report is left as it was");
  fs.rmSync(row);
  const again = await study(o);
  assert.equal(again.rows[0]!.valNll, first.rows[0]!.valNll, "measured again from the trained run, not retrained differently");
});

test("study on the command line: --gate-dim and --ranks get no yargs default (a study of MHA alone would refuse it), and a given one is refused", () => {
  const common = ["study", "--like", LIKE, "--data", DATA, "--tokens", "256", "--variants", "mha", "--device", "reference", "--out", path.join(tmpDir(), "never"), "--lr", "0"];
  // Without them, the run goes on to the next check (--lr 0 here): neither is defaulted behind the user's back.
  const plain = spawnSync(process.execPath, [MAIN, ...common], { encoding: "utf8" });
  assert.match(plain.stderr, /^error: --lr 0 must be a positive number/m);
  const gate = spawnSync(process.execPath, [MAIN, ...common, "--gate-dim", "8"], { encoding: "utf8" });
  assert.equal(gate.status, 1);
  assert.match(gate.stderr, /^error: --gate-dim has no effect without eg-mla in --variants/m);
  const ranks = spawnSync(process.execPath, [MAIN, ...common, "--ranks", "d/2"], { encoding: "utf8" });
  assert.equal(ranks.status, 1);
  assert.match(ranks.stderr, /^error: --ranks has no effect without an MLA variant in --variants .*\n {2}hint: add one of mla, mla-rope, eg-mla to --variants, or leave --ranks out/m);
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

test("study over an existing folder that holds no study is refused with a way out that works (it said to re-run with the same settings or pass --force, which is refused there too)", async () => {
  const out = tmpDir();
  fs.writeFileSync(path.join(out, "notes.txt"), "mine\n");
  await assert.rejects(study({ like: LIKE, variants: ["mha"], data: DATA, tokens: 256, seq: 32, batch: 4, out, device: "reference", progress: null }), (e: unknown) => e instanceof MlaError && e.message === `output ${out} already exists and holds no study (no study-state.json)\n  hint: choose another --out (--force replaces only an earlier study's folder)`);
  assert.equal(fs.readFileSync(path.join(out, "notes.txt"), "utf8"), "mine\n");
  // An empty one (made with mkdir first) is one --force takes: the hint says so.
  const empty = tmpDir();
  await assert.rejects(study({ like: LIKE, variants: ["mha"], data: DATA, tokens: 256, seq: 32, batch: 4, out: empty, device: "reference", progress: null }), (e: unknown) => e instanceof MlaError && e.message.endsWith("\n  hint: it is empty: pass --force to start the study in it, or choose another --out"));
  assert.deepEqual(fs.readdirSync(empty), []);
});
