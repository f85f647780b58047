/**
 * `pipeline` cuts the --calib windows in its up-front checks, through convert's own
 * readCalibrationWindows: a --calib-len the text cannot fill is refused before any phase runs (and
 * before --force clears an earlier run), not when the phase that calibrates starts (the bias-free
 * export's comes after the conversion, the evaluations and any fine-tune); one past the model's
 * positions is warned of there, once, in convert's words, and the phases take those windows. A resumed
 * run whose calibrating phases are done reads the text no more.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { pipeline, type PipelineOptions } from "../../src/pipeline.js";
import { convert } from "../../src/convert/pipeline.js";
import type { Logger } from "../../src/util/log.js";
import { assertKept, earlierOut, FIXTURES, MODELS, ROOT, tmpDir } from "../helpers.js";

const MAIN = path.join(ROOT, "dist", "src", "cli", "main.js");
const MODEL = path.join(MODELS, "stories260K");
const TEXT = path.join(FIXTURES, "text", "tinystories.txt");
// tinystories.txt holds about 1500 tokens: no window of 2000, two of 600; stories260K has 512 positions.
const UNFILLABLE = 2000;
const PAST = 600;

/** A logger keeping every line, and the lines `work` logs. */
async function heard(work: (logger: Logger) => Promise<unknown>): Promise<{ lines: string[]; error: unknown }> {
  const lines: string[] = [];
  let error: unknown = null;
  await work({ info: (m) => void lines.push(m), warn: (m) => void lines.push(m) }).catch((e: unknown) => (error = e));
  return { lines, error };
}

/** The refusal and warnings convert itself gives (a dry run cuts the windows as the run would). */
async function convertSays(calibLen: number, calibSamples?: number): Promise<{ lines: string[]; error: unknown }> {
  return heard((logger) => convert(MODEL, { rank: 2, calib: TEXT, calibLen, calibSamples, dryRun: true, out: path.join(tmpDir(), "dry"), logger, progress: null, device: "cpu" }));
}

const base: PipelineOptions = { out: "", force: true, convert: { rank: 2 }, evalText: TEXT, evalTokens: 300, device: "cpu", progress: null };
/** Every phase that calibrates: the conversion in our format or in deepseek_v3's, the bias-free export (the conversion reading none). */
const READERS: [string, Partial<PipelineOptions>, PipelineOptions["convert"]][] = [
  ["our conversion (2-norm)", {}, { rank: 2 }],
  ["--format deepseek", { format: "deepseek" }, { rank: 2 }],
  ["the bias-free export", { export: "deepseek", attentionBias: false }, { rank: 2, ropePairs: 1, ropeDisjoint: true, ropeStrategy: "uniform" }],
];

test("a --calib-len the --calib text cannot fill is refused before any phase, --force keeping the earlier run, in convert's words, whichever phase reads the text", async () => {
  const own = await convertSays(UNFILLABLE);
  assert.ok(own.error instanceof MlaError && own.error.code === "BAD_TEXT", String(own.error));
  assert.match(own.error.message, /holds \d+ tokens, fewer than one calibration window of 1999 \(\+BOS\)\n {2}hint: pass a longer --calib file or a smaller --calib-len$/);
  for (const [name, opts, conv] of READERS) {
    const out = earlierOut();
    const r = await heard((logger) => pipeline(MODEL, { ...base, ...opts, convert: { ...conv, calib: TEXT, calibLen: UNFILLABLE }, out, logger }));
    assert.ok(r.error instanceof MlaError, `${name}: ${String(r.error)}`);
    assert.equal(r.error.message, own.error.message, name);
    assert.ok(!r.lines.some((l) => l.startsWith("pipeline: ")), `${name}: no phase ran\n${r.lines.join("\n")}`);
    assertKept(out, name);
  }
});

test("a --calib-len past the model's positions is warned of before any phase and once, with convert's warning and note; the phases take the windows cut then", async () => {
  const own = await convertSays(PAST, 3);
  assert.equal(own.error, null, String(own.error));
  const said = own.lines.filter((l) => l.startsWith("--calib-len ") || l.startsWith("note: "));
  assert.equal(said.length, 2, own.lines.join("\n"));
  assert.match(said[0]!, new RegExp(`^--calib-len ${PAST} passes the model's 512 positions`));
  assert.match(said[1]!, /holds 2 calibration windows of 600 tokens \(asked for 3\)$/);
  for (const [name, opts, conv] of READERS) {
    const out = path.join(tmpDir(), "pl");
    const r = await heard((logger) => pipeline(MODEL, { ...base, ...opts, convert: { ...conv, calib: TEXT, calibLen: PAST, calibSamples: 3 }, out, logger }));
    assert.equal(r.error, null, `${name}: ${String(r.error)}`);
    const first = r.lines.findIndex((l) => l.startsWith("pipeline: "));
    for (const line of said) {
      // Once: a phase that read the text again would say it again (the export's, after the evaluations).
      assert.equal(r.lines.filter((l) => l === line).length, 1, `${name}: ${line}\n${r.lines.join("\n")}`);
      assert.ok(r.lines.indexOf(line) < first, `${name}: said before the first phase\n${r.lines.join("\n")}`);
    }
    assert.ok(r.lines.includes(opts.export ? "pipeline: export" : "pipeline: convert"), `${name}: the phase that calibrates ran`);
    // Resumed with every phase done: the text is not read again, so neither is said again.
    const again = await heard((logger) => pipeline(MODEL, { ...base, ...opts, force: false, convert: { ...conv, calib: TEXT, calibLen: PAST, calibSamples: 3 }, out, logger }));
    assert.equal(again.error, null, `${name} resumed: ${String(again.error)}`);
    assert.ok(!again.lines.some((l) => said.includes(l)), `${name} resumed: nothing said of the text\n${again.lines.join("\n")}`);
    assert.ok(again.lines.includes(opts.export ? "pipeline: export already done" : "pipeline: convert already done"), `${name} resumed\n${again.lines.join("\n")}`);
  }
});

test("pipeline on the command line: a --calib-len the text cannot fill is refused before the first phase, with convert's error", () => {
  const run = (args: string[]) => spawnSync(process.execPath, [MAIN, ...args, "--rank", "2", "--calib", TEXT, "--calib-len", String(UNFILLABLE), "--device", "cpu"], { encoding: "utf8" });
  const own = run(["convert", MODEL, "--dry-run", "--out", path.join(tmpDir(), "dry")]);
  const out = earlierOut();
  const pl = run(["pipeline", MODEL, "--eval-text", TEXT, "--out", out, "--force"]);
  assert.equal(pl.status, 1, pl.stderr);
  assert.equal(own.status, 1, own.stderr);
  const error = (s: string) => s.slice(s.indexOf("error: "));
  assert.match(error(own.stderr), /^error: .*fewer than one calibration window of 1999/);
  assert.equal(error(pl.stderr), error(own.stderr));
  assert.doesNotMatch(pl.stderr, /pipeline: convert/, "refused before the first phase");
  assertKept(out);
});
