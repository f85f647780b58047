/**
 * A stop before the first training step (Ctrl-C while the data is tokenized or during the validation
 * before training) takes effect at the next piece or window, not after the whole phase: no step has
 * run, so nothing is saved, --out is left as it was, and the run says there is nothing to resume. A
 * resumed run stopped there keeps its checkpoint and says so. A stop during a later validation
 * (periodic or final) ends it at the next window too, and the run as a stop after that step does: its
 * checkpoint, from which --resume ends as the uninterrupted run.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { finetune, type FinetuneOptions } from "../../src/finetune/trainer.js";
import type { Logger } from "../../src/util/log.js";
import { FIXTURES, MODELS, ROOT, tmpDir, waitFor } from "../helpers.js";

const MAIN = path.join(ROOT, "dist", "src", "cli", "main.js");
const MODEL = path.join(MODELS, "stories260K");
const DATA = path.join(FIXTURES, "text", "tinystories_25k.txt");
const common: FinetuneOptions = { data: [DATA], out: "", tokens: 4 * 4 * 32, seq: 32, batch: 4, valFraction: 0.05, progress: null };

/** The run's log lines, without the timings (which differ between runs). */
function logRows(out: string): Record<string, unknown>[] {
  const rows = fs.readFileSync(path.join(out, "train_log.jsonl"), "utf8").trimEnd().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
  return rows.map(({ step, loss, val_nll }) => ({ step, loss, val_nll }));
}

/** Whether the last line of the run's log is the loss line of `step`: the validation after it (if any) is under way. */
const justAfterStep = (out: string, step: number) => {
  const file = path.join(out, "train_log.jsonl");
  if (!fs.existsSync(file)) return false;
  const last = JSON.parse(fs.readFileSync(file, "utf8").trimEnd().split("\n").pop()!) as { step: number; loss?: number };
  return last.step === step && last.loss !== undefined;
};

/** The uninterrupted run the stopped-during-validation runs are compared with (4 steps, validation every 2). */
let straightRun: Promise<{ out: string; r: Awaited<ReturnType<typeof finetune>> }> | null = null;
const straight = () =>
  (straightRun ??= (async () => {
    const out = path.join(tmpDir(), "straight");
    return { out, r: await finetune(MODEL, { ...common, out, evalEvery: 2 }) };
  })());

/** A corpus that takes seconds to tokenize: the 25k fixture `times` times over (1 MB at 40). */
function bigCorpus(times: number): string {
  const file = path.join(tmpDir(), "corpus.txt");
  fs.writeFileSync(file, fs.readFileSync(DATA, "utf8").repeat(times));
  return file;
}

/** A logger that keeps its lines and calls `on(line)` for each. */
function listening(on: (line: string) => void = () => {}): Logger & { lines: string[] } {
  const lines: string[] = [];
  return { lines, info: (m) => (lines.push(m), on(m)), warn: (m) => (lines.push(m), on(m)) };
}

test("a stop while the data is tokenized ends the run there: nothing trained or written, nothing to resume", async () => {
  const out = path.join(tmpDir(), "ft");
  let asked = false;
  const log = listening((m) => void (m.startsWith("tokenizing ") && (asked = true)));
  const r = await finetune(MODEL, { ...common, data: [bigCorpus(40)], out, logger: log, shouldStop: () => asked });
  assert.deepEqual([r.stoppedEarly, r.steps, r.checkpointStep, r.tokensSeen, r.sitting.steps], [true, 0, null, 0, 0]);
  assert.ok(!log.lines.some((m) => m.startsWith("tokenized ")), `stopped part-way, not after the whole file: ${log.lines.join("\n")}`);
  assert.ok(log.lines.some((m) => /^stopped while tokenizing the --data files, before the first training step: nothing was trained, so there is nothing to resume/.test(m)), log.lines.join("\n"));
  assert.equal(fs.existsSync(out), false, "--out is not created");
});

test("a stop during the validation before training ends it at the next window and removes the --out it had created", async () => {
  const out = path.join(tmpDir(), "ft");
  let armed = false;
  let polls = 0;
  const log = listening((m) => void (m.startsWith("memory plan: ") && (armed = true))); // logged just before the validation
  const r = await finetune(MODEL, { ...common, out, logger: log, shouldStop: () => armed && ++polls >= 3 });
  assert.deepEqual([r.stoppedEarly, r.steps, r.checkpointStep, r.valNllBefore], [true, 0, null, null]);
  assert.equal(polls, 3, "polled before the first window and after each, stopped after the second of about ten");
  assert.ok(log.lines.some((m) => /^stopped while measuring the validation NLL before training, before the first training step: nothing was trained/.test(m)), log.lines.join("\n"));
  assert.equal(fs.existsSync(out), false);
});

test("a resumed run aborted (signal) while tokenizing keeps its checkpoint and folder as they were, and resumes later", async () => {
  const out = path.join(tmpDir(), "ft");
  const first = await finetune(MODEL, { ...common, out, saveEvery: 2, shouldStop: () => fs.existsSync(path.join(out, "checkpoint")) });
  assert.deepEqual([first.stoppedEarly, first.checkpointStep], [true, 2]);
  const files = new Map(fs.readdirSync(out, { recursive: true }).map(String).filter((f) => fs.statSync(path.join(out, f)).isFile()).map((f) => [f, fs.readFileSync(path.join(out, f)).toString("base64")]));
  const c = new AbortController();
  const log = listening((m) => void (m.startsWith("tokenizing ") && c.abort(new Error("enough"))));
  const r = await finetune(MODEL, { ...common, out, resume: true, signal: c.signal, logger: log });
  assert.deepEqual([r.stoppedEarly, r.steps, r.checkpointStep, r.tokensSeen, r.sitting.steps], [true, 2, 2, 2 * 4 * 32, 0]);
  assert.equal(r.seconds, JSON.parse(fs.readFileSync(path.join(out, "checkpoint", "state.json"), "utf8")).seconds, "the run's time so far, from the checkpoint");
  assert.ok(log.lines.some((m) => m.startsWith(`stopped while tokenizing the --data files, before training resumed; the step-2 checkpoint is kept in ${out}`)), log.lines.join("\n"));
  for (const [f, bytes] of files) assert.equal(fs.readFileSync(path.join(out, f)).toString("base64"), bytes, `${f} unchanged`);
  const done = await finetune(MODEL, { ...common, out, resume: true });
  assert.deepEqual([done.stoppedEarly, done.steps], [false, 4]);
});

test("the CLI on Ctrl-C while tokenizing: says so at once, exits 130 and points at running the command again, not --resume", async () => {
  const out = path.join(tmpDir(), "ft");
  // 2 MB: tokenized in worker threads, for seconds; the stop is seen as a batch of pieces comes back.
  const child = spawn(process.execPath, [MAIN, "finetune", MODEL, "--data", bigCorpus(80), "--out", out, "--tokens", "512", "--seq", "32", "--batch", "4", "--val-fraction", "0.01"], { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "", stderr = "";
  child.stdout.on("data", (d) => (stdout += d));
  child.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on("exit", r));
  await waitFor(() => /^tokenizing .*corpus\.txt: /m.test(stderr) || child.exitCode !== null, "the start of tokenizing");
  child.kill("SIGINT");
  assert.equal(await exited, 130, stderr);
  assert.match(stderr, /SIGINT: finishing this step \(or validation window\), saving the last step's checkpoint, then stopping; before the first step \(tokenizing, the first validation\), at the next piece or window, with nothing to save \(send again to quit at once\)/);
  assert.doesNotMatch(stderr, /^tokenized /m, "stopped part-way");
  assert.match(stderr, /stopped while tokenizing the --data files, before the first training step/);
  assert.equal(stdout, "stopped before the first training step: nothing was trained, so there is nothing to resume; running the same command again starts over\n");
  assert.equal(fs.existsSync(out), false);
});

test("a stop during a periodic validation ends it at the next window, saves that step's checkpoint, and the resumed run validates there again and ends as the uninterrupted one", async () => {
  const out = path.join(tmpDir(), "ft");
  let polls = 0; // while the validation after step 2 is under way
  const log = listening();
  const r = await finetune(MODEL, { ...common, out, evalEvery: 2, logger: log, shouldStop: () => justAfterStep(out, 2) && ++polls >= 3 });
  assert.deepEqual([r.stoppedEarly, r.steps, r.checkpointStep, r.valNllAfter], [true, 2, 2, null]);
  assert.equal(polls, 3, "polled before the first window and after each, stopped after the second of about ten");
  assert.ok(log.lines.some((m) => m === `stopped at step 2/4; the step-2 checkpoint is kept in ${path.join(out, "checkpoint")}`), log.lines.join("\n"));
  assert.equal(JSON.parse(fs.readFileSync(path.join(out, "checkpoint", "state.json"), "utf8")).step, 2);
  assert.ok(justAfterStep(out, 2), "no validation line for the pass cut short");
  assert.ok(!fs.existsSync(path.join(out, "finetune.json")));

  const resumed = await finetune(MODEL, { ...common, out, evalEvery: 2, resume: true });
  const s = await straight();
  assert.deepEqual([resumed.stoppedEarly, resumed.steps, resumed.valNllAfter], [false, 4, s.r.valNllAfter]);
  assert.deepEqual(logRows(out), logRows(s.out), "the step-2 validation is done on resuming: the same log as the uninterrupted run's");
});

test("a stop during the final validation ends it at the next window and keeps the last step's checkpoint; --resume writes the model as the uninterrupted run", async () => {
  const out = path.join(tmpDir(), "ft");
  let polls = 0; // after the last step: its stop check, then the validation's
  const log = listening();
  const r = await finetune(MODEL, { ...common, out, evalEvery: 2, logger: log, shouldStop: () => justAfterStep(out, 4) && ++polls >= 4 });
  assert.deepEqual([r.stoppedEarly, r.steps, r.checkpointStep, r.valNllAfter], [true, 4, 4, null]);
  assert.equal(polls, 4, "polled after the last step, before the first window and after each, stopped after the second of about ten");
  assert.ok(log.lines.some((m) => m === `stopped at step 4/4, during the final validation; the step-4 checkpoint is kept in ${path.join(out, "checkpoint")}`), log.lines.join("\n"));
  assert.equal(JSON.parse(fs.readFileSync(path.join(out, "checkpoint", "state.json"), "utf8")).step, 4);
  assert.deepEqual(fs.readdirSync(out).sort(), ["checkpoint", "train_log.jsonl"], "no model or summary, whole or temporary");
  assert.ok(justAfterStep(out, 4), "no validation line for the pass cut short");

  const resumed = await finetune(MODEL, { ...common, out, evalEvery: 2, resume: true });
  const s = await straight();
  assert.deepEqual([resumed.stoppedEarly, resumed.steps, resumed.valNllAfter], [false, 4, s.r.valNllAfter]);
  assert.deepEqual(logRows(out), logRows(s.out));
  assert.equal(fs.readFileSync(path.join(out, "model.safetensors")).toString("base64"), fs.readFileSync(path.join(s.out, "model.safetensors")).toString("base64"), "the same model");
  // It trained no step, yet reports the last step's loss as the uninterrupted run does (was NaN: null in finetune.json).
  assert.equal(resumed.finalLoss, s.r.finalLoss);
  assert.ok(Number.isFinite(resumed.finalLoss));
  const summary = (dir: string) => JSON.parse(fs.readFileSync(path.join(dir, "finetune.json"), "utf8")) as { final_loss: number | null };
  assert.equal(summary(out).final_loss, summary(s.out).final_loss);
});

// The validation scores ~6k one-token windows (about a second): a stop that waited for its end would be seen.
test("the CLI on Ctrl-C during the final validation: stops at the next window, exits 130 and points at --resume from the last step's checkpoint", async () => {
  const out = path.join(tmpDir(), "ft");
  const child = spawn(process.execPath, [MAIN, "finetune", MODEL, "--data", DATA, "--out", out, "--tokens", "32", "--seq", "2", "--batch", "4", "--val-fraction", "0.5", "--device", "cpu"], { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "", stderr = "";
  child.stdout.on("data", (d) => (stdout += d));
  child.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on("exit", r));
  const finalValidation = /^step 4\/4 loss [^]*^validation \S+ tok /m;
  await waitFor(() => finalValidation.test(stderr) || child.exitCode !== null, "the final validation's first window");
  child.kill("SIGINT");
  assert.equal(await exited, 130, stderr);
  assert.doesNotMatch(stderr, /^step 4\/4 loss [^]*^validation \S+ tok \(100\.0%\)/m, "stopped before the last window");
  assert.match(stderr, /stopped at step 4\/4, during the final validation; the step-4 checkpoint is kept in /);
  assert.equal(stdout, `stopped at step 4; checkpoint of step 4 in ${out}/checkpoint (continue with --resume)\n`);
  assert.deepEqual(fs.readdirSync(out).sort(), ["checkpoint", "train_log.jsonl"], "no model or summary, whole or temporary");
});
