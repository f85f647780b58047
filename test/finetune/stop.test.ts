/**
 * A stop before the first training step (Ctrl-C while the data is tokenized or during the validation
 * before training) takes effect at the next piece or window, not after the whole phase: no step has
 * run, so nothing is saved, --out is left as it was, and the run says there is nothing to resume. A
 * resumed run stopped there keeps its checkpoint and says so.
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
  assert.match(stderr, /SIGINT: finishing this step, saving a checkpoint, then stopping; before the first step \(tokenizing, the first validation\), at the next piece or window, with nothing to save \(send again to quit at once\)/);
  assert.doesNotMatch(stderr, /^tokenized /m, "stopped part-way");
  assert.match(stderr, /stopped while tokenizing the --data files, before the first training step/);
  assert.equal(stdout, "stopped before the first training step: nothing was trained, so there is nothing to resume; running the same command again starts over\n");
  assert.equal(fs.existsSync(out), false);
});
