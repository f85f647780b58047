/**
 * Ctrl-C in the commands that stop cleanly: each says what it does and what a re-run does in its own
 * terms. pipeline and study take no --resume (re-running the same command resumes them); finetune
 * points at --resume once it has a checkpoint (a stop before its first step: test/finetune/stop.test.ts).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import { test } from "node:test";
import { FIXTURES, MODELS, ROOT, tmpDir, waitFor } from "../helpers.js";

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
async function interruptTraining(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [MAIN, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "", stderr = "";
  child.stdout.on("data", (d) => (stdout += d));
  child.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on("exit", r));
  await waitFor(() => /^step \d+\/\d+ loss /m.test(stderr) || child.exitCode !== null, "the first training step");
  child.kill("SIGINT");
  const code = await exited;
  return { code, stdout, stderr };
}

test("pipeline on Ctrl-C: finishes the phase, keeps the finished ones (the stopped fine-tune not among them), and says the same command resumes", async () => {
  const out = path.join(tmpDir(), "pl");
  const r = await interruptTraining([...PIPELINE, out, ...ENDLESS]);
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /SIGINT: finishing the current phase \(a fine-tune: this step, then a checkpoint\), then stopping/);
  assert.doesNotMatch(r.stdout, /^finetune:/m, "a stopped fine-tune is not listed as done");
  assert.match(r.stdout, new RegExp(`^stopped: the 3 finished phase\\(s\\) are kept in ${out}; re-running the same command resumes \\(an interrupted fine-tune from its last checkpoint\\); other settings need --force, which starts over$`, "m"));
  assert.doesNotMatch(r.stdout, /--resume/);
});

// The trainer's own log line still says "--resume continues from the step-N checkpoint"; it lives in
// src/finetune/trainer.ts, which pipeline and study cannot word for themselves yet.
test("pipeline and study never point at a --resume they do not take", async () => {
  for (const args of [PIPELINE, STUDY]) {
    const r = await interruptTraining([...args, path.join(tmpDir(), "out"), ...ENDLESS]);
    assert.doesNotMatch(r.stdout + r.stderr, /--resume/, args[0]);
  }
});

test("study on Ctrl-C: stops at a training step with a checkpoint and says the same command resumes", async () => {
  const out = path.join(tmpDir(), "study");
  const r = await interruptTraining([...STUDY, out, ...ENDLESS]);
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /SIGINT: stopping at the next training step, with a checkpoint/);
  assert.match(r.stdout, new RegExp(`^stopped during training: the 0 finished run\\(s\\) are kept in ${out}; re-running the same command resumes \\(the interrupted run from its last checkpoint\\)`, "m"));
  assert.doesNotMatch(r.stdout, /--resume/);
});

test("finetune on Ctrl-C keeps its own messages: a checkpoint, and --resume to continue", async () => {
  const r = await interruptTraining(["finetune", MODEL, "--data", TEXT, "--out", path.join(tmpDir(), "ft"), ...ENDLESS]);
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /SIGINT: finishing this step, saving a checkpoint, then stopping; before the first step \(tokenizing, the first validation\), at the next piece or window, with nothing to save \(send again to quit at once\)/);
  assert.match(r.stdout, /^stopped at step \d+; checkpoint of step \d+ in .* \(continue with --resume\)$/m);
});
