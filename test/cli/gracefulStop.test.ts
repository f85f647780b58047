/**
 * Ctrl-C in the commands that stop cleanly: each says what it does and what a re-run does in its own
 * terms. pipeline stops the phase under way at its next safe point (test/api/abort.test.ts: after a
 * layer, and the resumed run equals an uninterrupted one); study stops the run under way likewise (its
 * conversion, training or decode measurement). pipeline and study take no --resume
 * (re-running the same command resumes them); finetune points at --resume once it has a checkpoint
 * (a stop before its first step: test/finetune/stop.test.ts).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { FIXTURES, MODELS, ROOT, tmpDir, waitFor } from "../helpers.js";
import { gracefulStop, installSignalHandlers } from "../../src/cli/signals.js";

const MAIN = path.join(ROOT, "dist", "src", "cli", "main.js");
const MODEL = path.join(MODELS, "stories260K");
const TEXT = path.join(FIXTURES, "text", "tinystories.txt");
/** Far more training than a test waits for: the run is always stopped part-way. */
const ENDLESS = ["--tokens", "100000000", "--seq", "32", "--batch", "2", "--device", "cpu"];
/** Each command's line up to its --out value. */
const PIPELINE = ["pipeline", MODEL, "--rank", "2", "--eval-text", TEXT, "--eval-tokens", "200", "--finetune-data", TEXT, "--out"];
const STUDY = ["study", "--like", MODEL, "--variants", "mha", "--data", TEXT, "--out"];

/**
 * Runs the CLI, sends SIGINT once training has started (its first step is printed: a stop before it,
 * while tokenizing or validating, ends a fine-tune with nothing to resume), and returns its exit code and output.
 */
function interruptTraining(args: string[]): ReturnType<typeof interruptAt> {
  return interruptAt(args, /^step \d+\/\d+ loss /m, "the first training step");
}

/** Runs the CLI, sends SIGINT once its stderr matches `when`, and returns its exit code, output, and the milliseconds from the signal to the exit. */
async function interruptAt(args: string[], when: RegExp, what: string): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
  const child = spawn(process.execPath, [MAIN, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "", stderr = "";
  child.stdout.on("data", (d) => (stdout += d));
  child.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on("exit", r));
  await waitFor(() => when.test(stderr) || child.exitCode !== null, what);
  child.kill("SIGINT");
  const sent = performance.now();
  const code = await exited;
  return { code, stdout, stderr, ms: performance.now() - sent };
}

/** The stdout line of a pipeline stopped by SIGINT, with the fine-tune's clause where it has one. */
function pipelineStopped(out: string, finetune: boolean): RegExp {
  const ft = finetune ? " \\(an interrupted fine-tune from its last checkpoint\\)" : "";
  return new RegExp(`^stopped \\(SIGINT\\): the finished phases are kept in ${out}, and the one cut short left nothing half-written; re-running the same command resumes${ft}; other settings need --force, which starts over$`, "m");
}

test("pipeline on Ctrl-C in its fine-tune: stops after the step with a checkpoint, keeps the finished phases (the fine-tune not among them), and says the same command resumes", async () => {
  const out = path.join(tmpDir(), "pl");
  const r = await interruptTraining([...PIPELINE, out, ...ENDLESS]);
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /SIGINT: stopping the phase under way at its next safe point \(a conversion after the factorization or calibration window under way, an evaluation after this window or item, a fine-tune after this step or validation window, with the last step's checkpoint\) \(send again to quit at once\)/);
  assert.match(r.stdout, pipelineStopped(out, true));
  assert.doesNotMatch(r.stdout, /--resume/);
  assert.deepEqual(fs.readdirSync(out).sort(), ["eval-converted.json", "eval-original.json", "finetune", "mla", "pipeline.json"]);
  assert.ok(fs.existsSync(path.join(out, "finetune", "checkpoint", "state.json")), "the stopped fine-tune's checkpoint");
  assert.ok(!fs.existsSync(path.join(out, "finetune", "finetune.json")), "the fine-tune is not done");
});

// The evaluation scores ~12k one-token windows (seconds): a stop that waited for its end would be seen.
test("pipeline on Ctrl-C in an evaluation: stops between windows, writes no eval JSON, and says the same command resumes", async () => {
  const out = path.join(tmpDir(), "pl");
  const args = ["pipeline", MODEL, "--rank", "2", "--eval-text", path.join(FIXTURES, "text", "tinystories_25k.txt"), "--eval-ctx", "2", "--device", "cpu", "--out", out];
  const r = await interruptAt(args, /^eval \S+\/\S+ tok /m, "the evaluation's first window");
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /^pipeline: eval original$/m);
  assert.doesNotMatch(r.stderr, /^eval \S+ tok \(100\.0%\)/m, "stopped before the last window");
  assert.match(r.stdout, pipelineStopped(out, false));
  assert.deepEqual(fs.readdirSync(out).sort(), ["mla", "pipeline.json"], "the conversion, and no eval-original.json, whole or temporary");
});

// Calibration (2-norm over ~12k two-token windows: seconds) is the convert phase's first part.
test("pipeline on Ctrl-C in the conversion: stops at the next calibration window and leaves no model folder", async () => {
  const out = path.join(tmpDir(), "pl");
  const calib = ["--rope-strategy", "2-norm", "--calib", path.join(FIXTURES, "text", "tinystories_25k.txt"), "--calib-samples", "100000", "--calib-len", "2"];
  const r = await interruptAt(["pipeline", MODEL, "--rank", "2", ...calib, "--eval-text", TEXT, "--device", "cpu", "--out", out], /^calibrate \S+\/\S+ windows /m, "the calibration's first window");
  assert.equal(r.code, 130, r.stderr);
  assert.doesNotMatch(r.stderr, /^calibrate \S+ windows \(100\.0%\)|^convert /m, "stopped before the last window and the layers");
  assert.match(r.stdout, pipelineStopped(out, false));
  assert.deepEqual(fs.readdirSync(out), ["pipeline.json"], "no model folder, whole or temporary");
});

// The trainer's own log line still says "--resume continues from the step-N checkpoint"; it lives in
// src/finetune/trainer.ts, which pipeline and study cannot word for themselves yet.
test("pipeline and study never point at a --resume they do not take", async () => {
  for (const args of [PIPELINE, STUDY]) {
    const r = await interruptTraining([...args, path.join(tmpDir(), "out"), ...ENDLESS]);
    assert.doesNotMatch(r.stdout + r.stderr, /--resume/, args[0]);
  }
});

/** The stdout line of a study stopped by SIGINT. */
function studyStopped(out: string): RegExp {
  return new RegExp(`^stopped \\(SIGINT\\): the finished runs are kept in ${out}, and the one cut short left nothing half-written; re-running the same command resumes \\(an interrupted training run from its last checkpoint\\); other settings need --force, which starts over \\(other --variants or --ranks do not\\)$`, "m");
}

test("study on Ctrl-C in its training: stops after the step with a checkpoint and says the same command resumes", async () => {
  const out = path.join(tmpDir(), "study");
  const r = await interruptTraining([...STUDY, out, ...ENDLESS]);
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /SIGINT: stopping the run under way at its next safe point \(a conversion after the factorization under way, training after this step or validation window, with the last step's checkpoint, the decode measurement after this forward pass\) \(send again to quit at once\)/);
  assert.match(r.stdout, studyStopped(out));
  assert.doesNotMatch(r.stdout, /--resume/);
  assert.ok(fs.existsSync(path.join(out, "mha-trained", "checkpoint", "state.json")), "the stopped run's checkpoint");
  assert.ok(!fs.existsSync(path.join(out, "mha-trained", "finetune.json")), "the run is not done");
});

// The decode measurement (16 prefills and 32 steps: over a second on this model) comes after training;
// a stop that waited for its end would print its 100% line.
test("study on Ctrl-C in its decode measurement: stops after the forward pass, writes no row or report, and says the same command resumes", async () => {
  const out = path.join(tmpDir(), "study");
  const r = await interruptAt([...STUDY, out, "--tokens", "64", "--seq", "32", "--batch", "2", "--device", "cpu"], /^decode speed \S+\/\S+ forwards /m, "the decode measurement's first forward pass");
  assert.equal(r.code, 130, r.stderr);
  assert.doesNotMatch(r.stderr, /^decode speed .*\(100\.0%\)/m, "stopped before the last forward pass");
  assert.match(r.stdout, studyStopped(out));
  assert.deepEqual(fs.readdirSync(out).sort(), ["init-mha", "mha-trained", "study-state.json", "tokens"], "the trained run, and no row, study.json or report, whole or temporary");
  assert.ok(fs.existsSync(path.join(out, "mha-trained", "finetune.json")), "the training run is whole");
  // About one forward pass (~60 ms here), not the rest of the measurement; the margin is for a loaded machine.
  assert.ok(r.ms < 1500, `exited ${r.ms.toFixed(0)} ms after the SIGINT`);
});

test("finetune on Ctrl-C keeps its own messages: a checkpoint, and --resume to continue", async () => {
  const r = await interruptTraining(["finetune", MODEL, "--data", TEXT, "--out", path.join(tmpDir(), "ft"), ...ENDLESS]);
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /SIGINT: finishing this step \(or validation window\), saving the last step's checkpoint, then stopping; before the first step \(tokenizing, the first validation\), at the next piece or window, with nothing to save \(send again to quit at once\)/);
  assert.match(r.stdout, /^stopped at step \d+; checkpoint of step \d+ in .* \(continue with --resume\)$/m);
});

test("a signal repeated within a second is the first stop delivered twice (timeout -s INT signals the command, then its process group), not a quit at once; a later one quits", async () => {
  const before = new Map((["SIGINT", "SIGTERM", "SIGHUP"] as const).map((sig) => [sig, process.listeners(sig)]));
  const stderrListeners = process.stderr.listeners("error");
  const exit = process.exit;
  const stderr = process.stderr.write;
  const codes: unknown[] = [];
  process.exit = ((code?: number) => void codes.push(code)) as typeof process.exit;
  process.stderr.write = (() => true) as typeof process.stderr.write;
  const stop = gracefulStop();
  try {
    installSignalHandlers();
    process.emit("SIGINT", "SIGINT");
    process.emit("SIGINT", "SIGINT");
    assert.ok(stop.requested(), "the first signal asks for the stop");
    assert.deepEqual(codes, [], "the repeat does not quit");
    await new Promise((r) => setTimeout(r, 1100));
    process.emit("SIGINT", "SIGINT");
    assert.deepEqual(codes, [130], "a second Ctrl-C later quits at once");
  } finally {
    stop.release();
    process.exit = exit;
    process.stderr.write = stderr;
    for (const [sig, kept] of before) for (const l of process.listeners(sig)) if (!kept.includes(l)) process.removeListener(sig, l);
    for (const l of process.stderr.listeners("error")) if (!stderrListeners.includes(l)) process.stderr.removeListener("error", l as (e: Error) => void);
  }
});
