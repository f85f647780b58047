/**
 * `signal` stops long calls: convert, evaluate and generateBatchAsync throw MlaError INTERRUPTED
 * (the signal's reason as `cause`) within one unit of work and leave no output; finetune stops as
 * shouldStop does, keeping a checkpoint it can resume from; pipeline stops inside the phase under way
 * and throws, and the same call resumes by phase; study likewise inside the run under way (its
 * conversion, training or decode measurement), resuming by run. Each abort comes from the work's own progress
 * callback or log line, so it lands mid-run deterministically, whatever the machine's speed.
 */
import test from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { convert, convertDeepseek, evaluate, finetune, generateBatchAsync, loadModel, MlaError, pipeline, study, type ProgressSink } from "../../src/index.js";
import { FIXTURES, tmpDir } from "../helpers.js";

const TEXT = path.join(FIXTURES, "text", "tinystories.txt");

/** A progress sink that aborts `c` at its first line, and counts the lines. */
function abortingSink(c: AbortController): ProgressSink & { lines: number } {
  const sink = { lines: 0, write: () => void (sink.lines++ === 0 && c.abort(new Error("enough"))) };
  return sink;
}

/**
 * A progress sink that aborts `c` on a later turn of the event loop, as the CLI's SIGINT handler does,
 * at its first line matching `when`; `lines` keeps those lines. Work that never yields between its
 * units would not see such an abort until its end (convert's layer loop on the CPU once did).
 */
function abortingOnNextTurn(c: AbortController, when: RegExp): ProgressSink & { lines: string[] } {
  const sink = { lines: [] as string[], write: (s: string) => void (when.test(s) && sink.lines.push(s.trim()) === 1 && setImmediate(() => c.abort(new Error("enough")))) };
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

test("convert and evaluate see an abort made on a later turn of the event loop (a signal handler's) at the next layer, window or item", async () => {
  const parent = tmpDir();
  const c = new AbortController();
  const sink = abortingOnNextTurn(c, /^convert /);
  await assert.rejects(convert("stories260K", { rank: 4, ropePairs: 1, out: path.join(parent, "mla"), progress: sink, signal: c.signal }), isInterrupted);
  assert.equal(sink.lines.length, 1, `stopped after the first of 5 layers: ${sink.lines.join(" | ")}`);
  assert.deepEqual(fs.readdirSync(parent), []);
  const c2 = new AbortController();
  const windows = abortingOnNextTurn(c2, /^eval /);
  await assert.rejects(evaluate("stories260K", { text: TEXT, ctx: 16, progress: windows, signal: c2.signal }), isInterrupted);
  assert.equal(windows.lines.length, 1, `stopped after the first window: ${windows.lines.join(" | ")}`);
  // Benchmark items: a piqa file of 20 copies of one item.
  const data = tmpDir();
  const item = { instruction: "Please choose the correct solution to the question: How do I dry a cup?\n\nSolution1: Wipe it with a towel.\n\nSolution2: Fill it with water.\n\nAnswer format: solution1/solution2", input: "", output: "the correct answer is solution1", answer: "solution1" };
  fs.writeFileSync(path.join(data, "piqa.test.json"), JSON.stringify(Array.from({ length: 20 }, () => item)));
  const c3 = new AbortController();
  const items = abortingOnNextTurn(c3, /^piqa /);
  await assert.rejects(evaluate("stories260K", { tasks: ["piqa"], dataDir: data, progress: items, signal: c3.signal }), isInterrupted);
  assert.equal(items.lines.length, 1, `stopped after the first item: ${items.lines.join(" | ")}`);
});

test("convertDeepseek sees an abort made on a later turn of the event loop (a signal handler's) in its per-layer frequency pass and between the layers it writes, and leaves no output folder", async () => {
  const parent = tmpDir();
  const base = { rank: 2, ropePairs: 1, out: path.join(parent, "ds"), device: "cpu" as const };
  // The frequency pass (every layer's PCA, before any layer is written) never leaves the JavaScript
  // thread on the CPU: aborted on the turn after its first log line (a warning before any work), it
  // stops there, before writing its first layer, let alone its last.
  const c = new AbortController();
  const written = abortingOnNextTurn(c, /^deepseek /);
  const warned: string[] = [];
  const logger = { info: () => {}, warn: (m: string) => void (warned.push(m) === 1 && setImmediate(() => c.abort(new Error("enough")))) };
  await assert.rejects(convertDeepseek("stories260K", { ...base, logger, progress: written, signal: c.signal }), isInterrupted);
  assert.ok(warned.length > 0, "a warning came before the work");
  assert.deepEqual(written.lines, [], "stopped before writing any layer");
  assert.deepEqual(fs.readdirSync(parent), [], "no output folder, whole or temporary");
  // Writing: stopped after the first of 5 layers.
  const c2 = new AbortController();
  const sink = abortingOnNextTurn(c2, /^deepseek /);
  await assert.rejects(convertDeepseek("stories260K", { ...base, progress: sink, signal: c2.signal }), isInterrupted);
  assert.equal(sink.lines.length, 1, `stopped after the first of 5 layers: ${sink.lines.join(" | ")}`);
  assert.deepEqual(fs.readdirSync(parent), [], "no output folder, whole or temporary");
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

test("pipeline stopped mid-conversion (after a layer) and mid-evaluation (between windows) keeps only whole phases, and the resumed run equals an uninterrupted one", async () => {
  const opts = { convert: { rank: 4, ropePairs: 1 }, evalText: TEXT, evalCtx: 8 };
  const whole = await pipeline("stories260K", { ...opts, out: path.join(tmpDir(), "whole"), progress: null });
  const out = path.join(tmpDir(), "pl");
  const resumes = (e: unknown) => isInterrupted(e) && /hint: the finished phases are kept in .* call pipeline\(\) again with the same options to resume/.test((e as Error).message);
  // Aborted as the CLI's Ctrl-C aborts: from a later turn of the event loop.
  const c = new AbortController();
  const layers = abortingOnNextTurn(c, /^convert /);
  await assert.rejects(pipeline("stories260K", { ...opts, out, progress: layers, signal: c.signal }), resumes);
  assert.equal(layers.lines.length, 1, `stopped after the first of 5 layers: ${layers.lines.join(" | ")}`);
  assert.deepEqual(fs.readdirSync(out), ["pipeline.json"], "no model folder, whole or temporary");
  const c2 = new AbortController();
  const windows = abortingOnNextTurn(c2, /^eval /);
  await assert.rejects(pipeline("stories260K", { ...opts, out, progress: windows, signal: c2.signal }), resumes);
  assert.equal(windows.lines.length, 1, `stopped after the first window: ${windows.lines.join(" | ")}`);
  assert.deepEqual(fs.readdirSync(out).sort(), ["mla", "pipeline.json"], "the conversion, and no eval-original.json, whole or temporary");
  const r = await pipeline("stories260K", { ...opts, out, progress: null });
  assert.deepEqual(r.phases.map((p) => `${p.name}${p.skipped ? " (skipped)" : ""}`), ["convert (skipped)", "eval original", "eval converted", "report"]);
  const scores = (evals: typeof r.evals) => evals.map((e) => ({ label: e.label, tokens: e.tokens, windows: e.windows, nll: e.nll, ppl: e.ppl, params: e.params, kv: e.kv_bytes_per_token }));
  assert.deepEqual(scores(r.evals), scores(whole.evals));
  assert.ok(fs.readFileSync(path.join(out, "mla", "model.safetensors")).equals(fs.readFileSync(path.join(whole.out, "mla", "model.safetensors"))), "the same converted weights");
});

test("study stopped mid-run, as the CLI's Ctrl-C stops it (an abort from a later turn), in its conversion and in its decode measurement, leaves nothing that looks finished, and the same call resumes without training again", async () => {
  const out = path.join(tmpDir(), "study");
  const opts = { like: "stories260K", variants: ["mla"] as const, ranks: ["d/2"], data: TEXT, tokens: 2 * 2 * 32, seq: 32, batch: 2, device: "cpu" as const, out };
  const resumes = (e: unknown) => isInterrupted(e) && /hint: the finished runs are kept in .* call study\(\) again with the same options to resume/.test((e as Error).message);
  // convert logs its float64 route just before its layers; its layer loop sees the abort after the
  // first layer (test above).
  const c = new AbortController();
  const logger = { info: (m: string) => void (/^factoring with/.test(m) && setImmediate(() => c.abort(new Error("enough")))), warn: () => {} };
  await assert.rejects(study({ ...opts, logger, signal: c.signal }), resumes);
  assert.deepEqual(fs.readdirSync(out).filter((f) => f.startsWith("mla-")), [], "no model folder, whole or temporary");
  // The measurement's 48 forward passes (16 prefills, 32 decode steps) report once at the first, then
  // every 5 s and at the last: no 100% line means it stopped before its end.
  const c2 = new AbortController();
  const passes = abortingOnNextTurn(c2, /^decode speed /);
  const all: string[] = [];
  await assert.rejects(study({ ...opts, progress: { write: (s) => (all.push(s), passes.write(s)) }, signal: c2.signal }), resumes);
  assert.equal(passes.lines.length, 1, passes.lines.join(" | "));
  assert.doesNotMatch(all.join(""), /^decode speed .*\(100\.0%\)/m, "stopped before the last forward pass");
  assert.match(all.join(""), /^convert .*\(100\.0%\)/m, "the conversion's per-layer lines reach the study's progress sink");
  const trained = path.join(out, "mla-L32-trained");
  assert.ok(fs.existsSync(path.join(trained, "finetune.json")), "the training run is whole and kept");
  assert.deepEqual(fs.readdirSync(out).filter((f) => /\.row\.json|study\.json|^report\.|\.tmp-/.test(f)), [], "no row, study.json or report, whole or temporary");
  const trainedAt = fs.statSync(path.join(trained, "train_log.jsonl")).mtimeMs;
  const logged: string[] = [];
  const r = await study({ ...opts, logger: { info: (m) => logged.push(m), warn: () => {} } });
  assert.ok(r.rows.length === 1 && r.rows[0]!.decodeTokensPerS > 0 && fs.existsSync(r.report!), JSON.stringify(r.rows));
  assert.ok(logged.some((m) => /has finished \(step 2\); nothing to resume/.test(m)), logged.join("\n"));
  assert.equal(fs.statSync(path.join(trained, "train_log.jsonl")).mtimeMs, trainedAt, "not trained again");
});
