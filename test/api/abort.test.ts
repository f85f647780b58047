/**
 * `signal` stops long calls: convert, evaluate and generateBatchAsync throw MlaError INTERRUPTED
 * (the signal's reason as `cause`) within one unit of work and leave no output; finetune stops as
 * shouldStop does, keeping a checkpoint it can resume from; pipeline stops inside the phase under way
 * and throws, and the same call resumes by phase. Each abort comes from the work's own progress
 * callback or log line, so it lands mid-run deterministically, whatever the machine's speed.
 */
import test from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { convert, evaluate, finetune, generateBatchAsync, loadModel, MlaError, pipeline, study, type ProgressSink } from "../../src/index.js";
import { FIXTURES, tmpDir } from "../helpers.js";

const TEXT = path.join(FIXTURES, "text", "tinystories.txt");

/** A progress sink that aborts `c` at its first line, and counts the lines. */
function abortingSink(c: AbortController): ProgressSink & { lines: number } {
  const sink = { lines: 0, write: () => void (sink.lines++ === 0 && c.abort(new Error("enough"))) };
  return sink;
}

/**
 * A progress sink that aborts `c` at a fine-tune's first step line (`step 1/N …`): after the step, so
 * it ends with a checkpoint (an abort before the first step, e.g. at the memory plan, ends in the
 * validation before training, with nothing to resume).
 */
function abortingAtStep(c: AbortController): ProgressSink {
  return { write: (s) => void (/^step \d+\//.test(s) && c.abort(new Error("enough"))) };
}

/** The process's open file descriptors (Linux; elsewhere 0, and the check holds trivially). */
function openFiles(): number {
  return fs.existsSync("/proc/self/fd") ? fs.readdirSync("/proc/self/fd").length : 0;
}

function isInterrupted(e: unknown): boolean {
  assert.ok(e instanceof MlaError, String(e));
  assert.equal(e.code, "INTERRUPTED");
  assert.match(e.message, /stopped: the AbortSignal was aborted \(enough\)/);
  assert.equal((e.cause as Error).message, "enough");
  return true;
}

test("convert stops at the layer after an abort and leaves no output or temporary folder", async () => {
  const parent = tmpDir();
  const c = new AbortController();
  const sink = abortingSink(c);
  const fds = openFiles();
  await assert.rejects(convert("stories260K", { rank: 4, ropePairs: 1, out: path.join(parent, "mla"), progress: sink, signal: c.signal }), isInterrupted);
  assert.equal(sink.lines, 1, "one layer's progress, then the stop");
  assert.equal(openFiles(), fds, "the unfinished shard's file is closed");
  assert.deepEqual(fs.readdirSync(parent), []);
  // An abort during calibration (2-norm reads the calibration text first) stops there.
  const c2 = new AbortController();
  await assert.rejects(convert("stories260K", { rank: 4, ropePairs: 1, calib: TEXT, calibSamples: 4, calibLen: 64, out: path.join(parent, "mla"), progress: abortingSink(c2), signal: c2.signal }), isInterrupted);
  assert.deepEqual(fs.readdirSync(parent), []);
});

test("a signal aborted before the call refuses at once", async () => {
  const signal = AbortSignal.abort(new Error("enough"));
  const out = path.join(tmpDir(), "out");
  await assert.rejects(convert("stories260K", { rank: 4, out, signal }), isInterrupted);
  await assert.rejects(evaluate("stories260K", { text: TEXT, signal }), isInterrupted);
  await assert.rejects(finetune("stories260K", { data: [TEXT], out, signal }), isInterrupted);
  await assert.rejects(pipeline("stories260K", { out, convert: { rank: 4 }, evalText: TEXT, signal }), isInterrupted);
  await assert.rejects(study({ like: "stories260K", variants: ["mha"], data: TEXT, tokens: 64, out, signal }), isInterrupted);
  assert.ok(!fs.existsSync(out));
});

test("evaluate stops at the window after an abort", async () => {
  const c = new AbortController();
  const sink = abortingSink(c);
  await assert.rejects(evaluate("stories260K", { text: TEXT, ctx: 16, progress: sink, signal: c.signal }), isInterrupted);
  assert.equal(sink.lines, 1);
});

test("generateBatchAsync stops at its next turn after an abort", async () => {
  const { model } = loadModel("stories260K");
  const c = new AbortController();
  let steps = 0;
  await assert.rejects(generateBatchAsync(model, [[1, 2, 3]], { maxTokens: 200, stopAtEos: false, yieldMs: 0, signal: c.signal, onStep: () => void (++steps === 2 && c.abort(new Error("enough"))) }), isInterrupted);
  assert.equal(steps, 2);
});

test("finetune stops after the step of an abort with a checkpoint, and resume: true finishes the run", async () => {
  const out = path.join(tmpDir(), "ft");
  const c = new AbortController();
  const opts = { data: [TEXT], out, seq: 32, batch: 2, tokens: 4 * 64, progress: null };
  const r = await finetune("stories260K", { ...opts, progress: abortingAtStep(c), signal: c.signal });
  assert.equal(r.stoppedEarly, true);
  assert.equal(r.steps, 1);
  assert.equal(r.checkpointStep, 1);
  const done = await finetune("stories260K", { ...opts, resume: true });
  assert.equal(done.stoppedEarly, false);
  assert.equal(done.steps, 4);
});

test("pipeline stops inside the phase under way (convert at a layer, the fine-tune after a step with its checkpoint) and the same call resumes by phase", async () => {
  const out = path.join(tmpDir(), "pl");
  const opts = { out, convert: { rank: 4, ropePairs: 1 }, finetune: { data: [TEXT], seq: 32, batch: 2, tokens: 4 * 64 }, evalText: TEXT, evalTokens: 200, evalCtx: 32 };
  const resumes = (e: unknown) => isInterrupted(e) && /hint: the finished phases are kept in .* call pipeline\(\) again with the same options to resume/.test((e as Error).message);
  // The first progress line is the conversion's first layer.
  const c = new AbortController();
  const sink = abortingSink(c);
  await assert.rejects(pipeline("stories260K", { ...opts, progress: sink, signal: c.signal }), resumes);
  assert.equal(sink.lines, 1, "one layer's progress, then the stop");
  assert.deepEqual(fs.readdirSync(out), ["pipeline.json"], "no model folder, whole or temporary");
  const c2 = new AbortController();
  await assert.rejects(pipeline("stories260K", { ...opts, progress: abortingAtStep(c2), signal: c2.signal }), resumes);
  assert.ok(fs.existsSync(path.join(out, "finetune", "checkpoint", "state.json")), "the stopped fine-tune's checkpoint");
  assert.ok(!fs.existsSync(path.join(out, "finetune", "finetune.json")), "nor is the fine-tune done");
  const logged: string[] = [];
  const r = await pipeline("stories260K", { ...opts, logger: { info: (m) => logged.push(m), warn: () => {} } });
  assert.deepEqual(r.phases.map((p) => `${p.name}${p.skipped ? " (skipped)" : ""}`), ["convert (skipped)", "eval original (skipped)", "eval converted (skipped)", "finetune", "eval fine-tuned", "report"]);
  assert.ok(logged.some((m) => /^resuming at step 1\//.test(m)), logged.join("\n"));
});
