// What convert reads besides the model, checked before its work: the calibration text (.jsonl read
// as finetune --data reads it), the BOS that starts its windows, the evaluation's tokenizer, and
// settings that would do nothing (--eval-ctx without --eval-text, a per-layer split with one candidate);
// a dry run refuses all of it as the run does.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { convert, ConvertOptions } from "../../src/convert/pipeline.js";
import { convertDeepseek } from "../../src/deepseek/export.js";
import { loadCuda } from "../../src/backends/native/cuda.js";
import { calibrationWindows, readTextOrJsonl } from "../../src/ropeSelect/calibrate.js";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { readText } from "../../src/eval/perplexity.js";
import { maxRankNote } from "../../src/convert/factor.js";
import { AS_UNPRIVILEGED, FIXTURES, lockedFolder, MODELS, NO_UNPRIVILEGED, pastVocabModel, ROOT, tmpDir } from "../helpers.js";

const SRC = path.join(MODELS, "stories260K");
const TEXT = path.join(FIXTURES, "text", "tinystories.txt");
const MAIN = path.join(ROOT, "dist", "src", "cli", "main.js");

async function refusedEarly(opts: Partial<ConvertOptions> & { model?: string }, re: RegExp): Promise<void> {
  const parent = tmpDir();
  const { model, ...rest } = opts;
  await assert.rejects(convert(model ?? SRC, { rank: 2, progress: null, device: "cpu", out: path.join(parent, "out"), ...rest }), (e: Error) => e instanceof MlaError && re.test(e.message) && /hint:/.test(e.message));
  assert.deepEqual(fs.readdirSync(parent), [], "nothing written");
}

/** A copy of stories260K with `edit` applied to its folder. */
function modelCopy(edit: (dir: string) => void): string {
  const dir = path.join(tmpDir(), "model");
  fs.cpSync(SRC, dir, { recursive: true });
  edit(dir);
  return dir;
}
const withoutBos = () =>
  modelCopy((dir) => {
    const f = path.join(dir, "config.json");
    const c = JSON.parse(fs.readFileSync(f, "utf8"));
    c.bos_token_id = null;
    fs.writeFileSync(f, JSON.stringify(c));
  });

test("a .jsonl --calib file is calibrated on its text fields, not on its JSON", () => {
  const docs = readText(TEXT).split("\n\n").filter((d) => d.trim()).slice(0, 40);
  const jsonl = path.join(tmpDir(), "calib.jsonl");
  fs.writeFileSync(jsonl, docs.map((text) => JSON.stringify({ text })).join("\n") + "\n");
  assert.equal(readTextOrJsonl(jsonl), docs.join("\n\n"));
  const tok = loadTokenizer(SRC);
  assert.deepEqual(calibrationWindows(tok, readTextOrJsonl(jsonl), 4, 64, 1), calibrationWindows(tok, docs.join("\n\n"), 4, 64, 1));
  assert.ok(!tok.decode(Array.from(calibrationWindows(tok, readTextOrJsonl(jsonl), 1, 64, 1)[0]!)).includes('{"text"'));
});

test("a model without bos_token_id is refused for calibration (any id would be another token) and for --eval-text, before any work", async () => {
  assert.throws(() => calibrationWindows(loadTokenizer(SRC), readText(TEXT), 2, 32, null), /no bos_token_id[\s\S]*hint:/);
  const model = withoutBos();
  await refusedEarly({ model, calib: TEXT, ropeStrategy: "2-norm" }, /no bos_token_id/);
  await refusedEarly({ model, evalText: TEXT }, /no bos_token_id/);
});

test("--eval-text with a model that has no tokenizer.json is refused before the conversion", async () => {
  const model = modelCopy((dir) => fs.rmSync(path.join(dir, "tokenizer.json")));
  const t0 = performance.now();
  await refusedEarly({ model, evalText: TEXT }, /tokenizer\.json/);
  assert.ok(performance.now() - t0 < 20_000);
});

test("--eval-ctx and --eval-tokens without --eval-text are refused, naming both", async () => {
  await refusedEarly({ evalCtx: 64 }, /^--eval-ctx has no effect without --eval-text FILE/);
  await refusedEarly({ evalCtx: 64, evalTokens: 100 }, /--eval-tokens, --eval-ctx have no effect without --eval-text FILE|--eval-tokens and --eval-ctx have no effect/);
});

test("--kv-split per-layer with only one split inside the budget is refused, not scored layer by layer", async () => {
  await refusedEarly({ rank: 2, ropePairs: 1, kvSplit: "per-layer", calib: TEXT }, /--kv-split per-layer has nothing to choose/);
});

test("the --rank limit's hint says what the top rank keeps: everything for joint, not every value direction for split", () => {
  assert.equal(maxRankNote("joint", 4, 8, 1, 64), "14 keeps everything");
  // stories260K, --svd split --rope-pairs 1: 6 key dims per head; the values have 8.
  assert.match(maxRankNote("split", 4, 8, 1, 64), /^6 keeps every position-free key dim, but the values only 24 of 32 directions/);
  assert.equal(maxRankNote("split", 4, 8, 0, 64), "8 keeps everything");
});

test("mla_conversion.json records the calibration actually read: windows, tokens and the file's absolute path", async () => {
  const out = path.join(tmpDir(), "out");
  const r = await convert(SRC, { rank: 4, ropePairs: 1, calib: path.relative(process.cwd(), TEXT), calibSamples: 32, calibLen: 64, progress: null, device: "cpu", out });
  const rec = JSON.parse(fs.readFileSync(path.join(out, "mla_conversion.json"), "utf8"));
  assert.deepEqual(r.plan.settings, rec.settings, "the result's settings are the record's");
  assert.equal(rec.calibration.file, TEXT);
  assert.ok(rec.calibration.windows >= 1 && rec.calibration.windows <= 32);
  assert.equal(rec.calibration.tokens, rec.calibration.windows * 64);
  assert.deepEqual([rec.settings.calib, rec.settings.calibSamples, rec.settings.calibLen], [path.relative(process.cwd(), TEXT), 32, 64], "the windows asked for, as used");
});

test("without calibration mla_conversion.json and report.json record no calibration text or windows, not the defaults; a --calib no setting reads is refused", async () => {
  const none = path.join(tmpDir(), "none");
  const r = await convert(SRC, { rank: 4, ropePairs: 1, progress: null, device: "cpu", out: none, evalText: TEXT, evalTokens: 256, evalCtx: 64 });
  const rec = JSON.parse(fs.readFileSync(path.join(none, "mla_conversion.json"), "utf8"));
  assert.deepEqual([rec.settings.calib, rec.settings.calibSamples, rec.settings.calibLen], [null, null, null]);
  assert.deepEqual(r.plan.settings, rec.settings, "the result (convert --json) says what the record says");
  assert.equal(rec.calibration, undefined);
  assert.equal(rec.settings.ropeStrategy, "uniform");
  // Converted before with a warning and recorded as uncalibrated; now refused before any work.
  await refusedEarly({ rank: 4, ropePairs: 1, ropeStrategy: "uniform", calib: TEXT }, /^--calib has no effect without --rope-strategy 2-norm, .* or --kv-split per-layer \(the settings that read calibration text; --rope-strategy uniform does not\)/);
  const report = JSON.parse(fs.readFileSync(path.join(none, "report.json"), "utf8"));
  assert.deepEqual([report.settings.calib, report.settings.calibSamples, report.settings.calibLen], [null, null, null]);
  assert.deepEqual(r.report!.settings, JSON.parse(fs.readFileSync(path.join(none, "mla_conversion.json"), "utf8")).settings);
  assert.doesNotMatch(fs.readFileSync(path.join(none, "report.md"), "utf8"), /calibration/);
});

test("convert --json reports the settings mla_conversion.json records: no calibration windows without calibration, a dry run included", () => {
  const out = path.join(tmpDir(), "out");
  const run = (args: string[]) => {
    const r = spawnSync(process.execPath, [MAIN, "convert", SRC, "--rank", "4", "--rope-pairs", "1", "--device", "reference", "--json", ...args], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout).plan.settings;
  };
  const calibration = (s: Record<string, unknown>) => [s["calib"], s["calibSamples"], s["calibLen"]];
  const written = run(["--out", out]);
  assert.deepEqual(calibration(written), [null, null, null]);
  assert.deepEqual(written, JSON.parse(fs.readFileSync(path.join(out, "mla_conversion.json"), "utf8")).settings);
  assert.deepEqual(calibration(run(["--dry-run"])), [null, null, null]);
  // A dry run with --calib reports the windows the run would read (the defaults where none are given).
  assert.deepEqual(calibration(run(["--dry-run", "--calib", TEXT])), [TEXT, 32, 256]);
});

test("convert's before and after evaluations read the same text: a warning about it (fewer tokens than --eval-tokens) is said once", async () => {
  const warned: string[] = [];
  await convert(SRC, { rank: 4, ropePairs: 1, progress: null, device: "cpu", out: path.join(tmpDir(), "once"), evalText: TEXT, evalTokens: 10_000_000, evalCtx: 64, logger: { info: () => {}, warn: (m) => warned.push(m) } });
  assert.equal(warned.filter((m) => /fewer than --eval-tokens 10000000/.test(m)).length, 1, warned.join("\n"));
});

test("a missing --eval-text or --calib is named by its flag", async () => {
  await refusedEarly({ evalText: "no-such-eval.txt" }, /^cannot read --eval-text no-such-eval\.txt: no such file/);
  await refusedEarly({ calib: path.join(path.dirname(TEXT)), ropeStrategy: "2-norm" }, /^--calib .* is a folder, not a text file/);
});

test("run from inside the model folder, the default --out (./NAME-mla-rN there) is refused as the default, with a path beside the model", () => {
  const model = path.join(tmpDir(), "inside");
  fs.cpSync(SRC, model, { recursive: true });
  const r = spawnSync(process.execPath, [MAIN, "convert", ".", "--rank", "4", "--rope-pairs", "1"], { encoding: "utf8", cwd: model });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /^error: the default --out \S+inside-mla-r4 \(\.\/inside-mla-r4 in the working folder\) is inside the input model folder \S+inside\n  hint: pass --out \S+-mla-r4 \(beside the model\)/m);
  assert.deepEqual(fs.readdirSync(model).filter((f) => f.includes("mla")), []);
});

test("a dry run refuses what the run would, in the same words (both formats): --calib beside a model without tokenizer.json, a --calib-len the text cannot fill, a tokenizer giving ids past the vocabulary for --calib or --eval-text, an unavailable --device", async () => {
  const noTokenizer = modelCopy((dir) => fs.rmSync(path.join(dir, "tokenizer.json")));
  const short = path.join(tmpDir(), "short.txt");
  fs.writeFileSync(short, "Once upon a time there was a little girl named Lily.\n");
  // A tokenizer of another model: the embedding refused its id only at calibration (--eval-text: at the
  // evaluation, after the conversion), naming neither file, and a dry run passed.
  const pastVocab = pastVocabModel();
  const zz = path.join(tmpDir(), "zz.txt");
  fs.writeFileSync(zz, "Once upon a time <zz> there was a little girl named Lily. She liked to play.\n".repeat(4));
  const cases: [Partial<ConvertOptions> & { model?: string }, RegExp][] = [
    [{ model: noTokenizer, calib: TEXT }, /tokenizer\.json does not exist/],
    [{ calib: short, calibLen: 64 }, /^\S+short\.txt holds \d+ tokens, fewer than one calibration window of 63 \(\+BOS\)/],
    [{ model: pastVocab, calib: zz, calibLen: 16 }, /^the model's tokenizer gives id 600 for --calib \S+zz\.txt, past its vocabulary of 512 \(vocab_size in \S+config\.json\)/],
    [{ model: pastVocab, evalText: zz }, /^the model's tokenizer gives id 600 for --eval-text \S+zz\.txt, past its vocabulary of 512 \(vocab_size in \S+config\.json\)/],
    [{ model: pastVocab, evalText: zz, evalTokens: 40 }, /^the model's tokenizer gives id 600 for --eval-text \S+zz\.txt, past its vocabulary of 512/],
  ];
  // Where CUDA runs there is nothing to refuse.
  if (typeof loadCuda() === "string") cases.push([{ device: "cuda" }, /^--device cuda: /]);
  for (const [{ model, ...o }, re] of cases)
    for (const format of ["mha2mla", "deepseek"] as const) {
      const said: string[] = [];
      for (const dryRun of [true, false]) {
        const parent = tmpDir();
        const opts = { rank: 2, ropePairs: 1, progress: null, device: "cpu" as const, ...o, out: path.join(parent, "out"), dryRun };
        const run = format === "deepseek" ? convertDeepseek(model ?? SRC, opts) : convert(model ?? SRC, opts);
        await assert.rejects(run, (e: Error) => e instanceof MlaError && re.test(e.message) && (said.push(e.message), true), `${format}${dryRun ? " --dry-run" : ""} ${re}`);
        assert.deepEqual(fs.readdirSync(parent), [], "nothing written");
      }
      assert.equal(said[0], said[1], `${format}: the dry run's refusal is the run's`);
    }
});

test("convert --eval-text whose ids pass the model's vocabulary fails before the conversion (both formats), naming the text: no stack, nothing written, no --out made (the evaluation's embedding found it after the work)", () => {
  const model = pastVocabModel();
  const text = path.join(tmpDir(), "eval.txt");
  fs.writeFileSync(text, "Once upon a time <zz> there was a little girl named Lily.\n");
  const parent = tmpDir();
  const out = path.join(parent, "out");
  for (const format of [[], ["--format", "deepseek"]]) {
    const r = spawnSync(process.execPath, [MAIN, "convert", model, "--rank", "4", "--rope-pairs", "1", "--device", "cpu", "--eval-text", text, "--out", out, ...format], { encoding: "utf8" });
    assert.equal(r.status, 1, r.stderr);
    // The error alone after the settings' notes and warnings (the default strategy, deepseek's serving sizes): no factoring said, no stack.
    assert.equal(r.stderr.replace(/^(note|warning): .*\n/gm, ""), `error: the model's tokenizer gives id 600 for --eval-text ${text}, past its vocabulary of 512 (vocab_size in ${path.join(model, "config.json")})\n  hint: the tokenizer and the model do not match: put the model's own tokenizer.json beside its weights\n`, format.join(" "));
    assert.deepEqual(fs.readdirSync(parent), [], "nothing written, --out not made");
  }
  // A text whose ids the tokenizer keeps inside the vocabulary converts and is scored.
  fs.writeFileSync(text, fs.readFileSync(TEXT, "utf8").slice(0, 4000));
  const ok = spawnSync(process.execPath, [MAIN, "convert", model, "--rank", "4", "--rope-pairs", "1", "--device", "cpu", "--eval-text", text, "--eval-ctx", "64", "--out", out], { encoding: "utf8" });
  assert.equal(ok.status, 0, ok.stderr);
  assert.ok(fs.existsSync(path.join(out, "report.json")));
});

test("an --out in a folder that cannot be written is refused before any work, by a dry run too, in the same words (both formats; the run had calibrated and factored first)", { skip: AS_UNPRIVILEGED === null ? NO_UNPRIVILEGED : false }, () => {
  const { locked, node } = lockedFolder();
  const out = path.join(locked, "sub", "out");
  const [cmd, ...pre] = node;
  for (const format of [[], ["--format", "deepseek"]])
    for (const dryRun of [[], ["--dry-run"]]) {
      const r = spawnSync(cmd!, [...pre, MAIN, "convert", "stories260K", "--rank", "4", "--rope-pairs", "1", "--calib", TEXT, "--device", "cpu", "--out", out, ...format, ...dryRun], { encoding: "utf8", cwd: ROOT });
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, /^error: cannot create a folder beside \S+locked\/sub\/out: permission denied\n {2}hint: /m, `${format.join(" ")} ${dryRun.join(" ")}`);
      assert.doesNotMatch(r.stderr, /factoring with/, "refused before the work");
    }
  assert.deepEqual(fs.readdirSync(locked), []);
});

test("a side file of the model that cannot be read (tokenizer.json) is refused by name before any work, by a dry run too (both formats; the copy after the conversion failed as an internal EACCES)", { skip: AS_UNPRIVILEGED === null ? NO_UNPRIVILEGED : false }, () => {
  const model = modelCopy((dir) => fs.chmodSync(path.join(dir, "tokenizer.json"), 0o000));
  fs.chmodSync(path.dirname(model), 0o755);
  const parent = tmpDir();
  fs.chmodSync(parent, 0o777);
  const [cmd, ...pre] = [...AS_UNPRIVILEGED!, process.execPath];
  for (const format of [["--rope-strategy", "uniform"], ["--format", "deepseek"]])
    for (const dryRun of [[], ["--dry-run"]]) {
      const r = spawnSync(cmd!, [...pre, MAIN, "convert", model, "--rank", "4", "--rope-pairs", "1", "--device", "cpu", "--out", path.join(parent, "out"), ...format, ...dryRun], { encoding: "utf8", cwd: ROOT });
      assert.equal(r.status, 1, r.stderr);
      assert.equal(r.stderr.split("\n").filter((l) => !l.startsWith("warning: ")).join("\n"), `error: cannot read the model's side file ${path.join(model, "tokenizer.json")}: permission denied\n  hint: check the path and its permissions\n`, `${format.join(" ")} ${dryRun.join(" ")}`);
    }
  assert.deepEqual(fs.readdirSync(parent), [], "nothing written");
});
