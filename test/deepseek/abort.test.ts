/**
 * `signal` stops both deepseek_v3 writers (`convertDeepseek`, `exportDeepseek`) as it stops convert:
 * at once when already aborted, else at the next layer, calibration or evaluation window, with
 * MlaError INTERRUPTED and no output folder, whole or temporary. pipeline() hands its signal to both,
 * so it stops inside those phases too, and the same call resumes. Each abort comes from the work's own
 * progress line, so it lands mid-run whatever the machine's speed.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { convert } from "../../src/convert/pipeline.js";
import { convertDeepseek } from "../../src/deepseek/export.js";
import { exportDeepseek } from "../../src/deepseek/fromMla.js";
import { MlaError } from "../../src/errors.js";
import { pipeline } from "../../src/pipeline.js";
import type { ProgressSink } from "../../src/util/progress.js";
import { FIXTURES, MODELS, ROOT, tmpDir, watchChild } from "../helpers.js";

const MODEL = path.join(MODELS, "stories260K");
const CALIB = path.join(FIXTURES, "text", "tinystories.txt");
const TEXT = path.join(FIXTURES, "text", "tinystories_25k.txt");

/** A sink that aborts `c` at its first line matching `at`, and keeps the lines. */
function abortAt(c: AbortController, at: RegExp): ProgressSink & { lines: string[] } {
  const sink = { lines: [] as string[], write: (s: string) => void (sink.lines.push(s), at.test(s) && c.abort(new Error("enough"))) };
  return sink;
}

function isInterrupted(e: unknown): boolean {
  assert.ok(e instanceof MlaError, String(e));
  assert.equal(e.code, "INTERRUPTED", e.message);
  assert.match(e.message, /stopped: the AbortSignal was aborted \(enough\)/);
  return true;
}

/** The process's open file descriptors (Linux; elsewhere 0, and the check holds trivially). */
function openFiles(): number {
  return fs.existsSync("/proc/self/fd") ? fs.readdirSync("/proc/self/fd").length : 0;
}

/** A model in our MLA format that exports exactly (--rope-disjoint). */
async function mlaModel(): Promise<string> {
  const out = path.join(tmpDir(), "mla");
  await convert(MODEL, { rank: 2, ropePairs: 1, ropeStrategy: "uniform", ropeDisjoint: true, out, progress: null, device: "cpu" });
  return out;
}

test("exportDeepseek: an aborted signal stops it before, between layers and in its evaluation; nothing is left", async () => {
  const mla = await mlaModel();
  const parent = tmpDir();
  const out = path.join(parent, "ds");
  await assert.rejects(exportDeepseek(mla, { out, signal: AbortSignal.abort(new Error("enough")) }), isInterrupted);
  const c = new AbortController();
  const sink = abortAt(c, /^export /);
  const fds = openFiles();
  await assert.rejects(exportDeepseek(mla, { out, device: "cpu", progress: sink, signal: c.signal }), isInterrupted);
  assert.equal(sink.lines.length, 1, "one layer's progress, then the stop");
  assert.equal(openFiles(), fds, "the unfinished shard's file is closed");
  assert.deepEqual(fs.readdirSync(parent), [], "no output folder, whole or temporary");
  const c2 = new AbortController();
  await assert.rejects(exportDeepseek(mla, { out, device: "cpu", evalText: TEXT, evalCtx: 16, progress: abortAt(c2, /^eval /), signal: c2.signal }), isInterrupted);
  assert.deepEqual(fs.readdirSync(parent), []);
  // A stop asked during the last layer (its progress line at 100%) still leaves nothing.
  const c4 = new AbortController();
  await assert.rejects(exportDeepseek(mla, { out, device: "cpu", progress: abortAt(c4, /^export .*\(100\.0%\)/), signal: c4.signal }), isInterrupted);
  assert.deepEqual(fs.readdirSync(parent), [], "no output after a stop in the last layer");
  // An existing --out (an earlier output: a conversion's folder) replaced with --force stays as it was.
  fs.mkdirSync(out);
  fs.writeFileSync(path.join(out, "mla_conversion.json"), "kept");
  const c3 = new AbortController();
  await assert.rejects(exportDeepseek(mla, { out, force: true, device: "cpu", progress: abortAt(c3, /^export /), signal: c3.signal }), isInterrupted);
  assert.deepEqual(fs.readdirSync(parent), ["ds"]);
  assert.deepEqual(fs.readdirSync(out), ["mla_conversion.json"]);
});

test("convertDeepseek: an aborted signal stops it before, in calibration and between layers; nothing is left", async () => {
  const parent = tmpDir();
  const out = path.join(parent, "ds");
  const base = { rank: 2, ropePairs: 1, out, device: "cpu" as const };
  await assert.rejects(convertDeepseek(MODEL, { ...base, signal: AbortSignal.abort(new Error("enough")) }), isInterrupted);
  const c = new AbortController();
  const sink = abortAt(c, /^deepseek /);
  await assert.rejects(convertDeepseek(MODEL, { ...base, progress: sink, signal: c.signal }), isInterrupted);
  assert.equal(sink.lines.length, 1, "one layer's progress, then the stop");
  const c2 = new AbortController();
  const calib = abortAt(c2, /^calib/);
  await assert.rejects(convertDeepseek(MODEL, { ...base, calib: CALIB, calibSamples: 4, calibLen: 64, progress: calib, signal: c2.signal }), isInterrupted);
  assert.ok(calib.lines.every((l) => !/^deepseek /.test(l)), "stopped in calibration, before any layer was written");
  assert.deepEqual(fs.readdirSync(parent), []);
});

test("pipeline stops inside its deepseek conversion and its export phase, and the same call resumes", async () => {
  const resumes = (e: unknown) => isInterrupted(e) && /call pipeline\(\) again with the same options to resume/.test((e as Error).message);
  const common = { evalText: CALIB, evalTokens: 200, evalCtx: 32, device: "cpu" as const };
  const ds = path.join(tmpDir(), "pl-ds");
  const c = new AbortController();
  await assert.rejects(pipeline(MODEL, { ...common, out: ds, format: "deepseek", convert: { rank: 2, ropePairs: 1 }, progress: abortAt(c, /^deepseek /), signal: c.signal }), resumes);
  assert.deepEqual(fs.readdirSync(ds), ["pipeline.json"], "no model folder, whole or temporary");

  const out = path.join(tmpDir(), "pl-export");
  const opts = { ...common, out, convert: { rank: 2, ropePairs: 1, ropeDisjoint: true }, export: "deepseek" as const };
  const c2 = new AbortController();
  await assert.rejects(pipeline(MODEL, { ...opts, progress: abortAt(c2, /^export /), signal: c2.signal }), resumes);
  assert.ok(fs.existsSync(path.join(out, "mla", "config.json")), "the finished conversion is kept");
  assert.deepEqual(fs.readdirSync(out).filter((n) => n.includes("deepseek")), [], "no export folder, whole or temporary");
  const r = await pipeline(MODEL, { ...opts, progress: null });
  assert.deepEqual(r.phases.map((p) => `${p.name}${p.skipped ? " (skipped)" : ""}`), ["convert (skipped)", "eval original (skipped)", "eval converted (skipped)", "export", "eval exported (deepseek_v3)", "report"]);
});

test("export on the command line: Ctrl-C stops at the next layer or window, removes the unfinished output and exits 130", async () => {
  const mla = await mlaModel();
  // A text long enough that its evaluation is still running when the signal comes.
  const long = path.join(tmpDir(), "long.txt");
  fs.writeFileSync(long, fs.readFileSync(TEXT, "utf8").repeat(4));
  const parent = tmpDir();
  const args = [path.join(ROOT, "dist", "src", "cli", "main.js"), "export", mla, "--format", "deepseek", "--out", path.join(parent, "ds"), "--eval-text", long, "--eval-ctx", "16", "--device", "reference"];
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
  const w = watchChild(child);
  await w.until(() => /^eval /m.test(w.stderr()), "the evaluation's first progress line");
  child.kill("SIGINT");
  const code = await w.exited;
  assert.equal(code, 130, w.stderr());
  assert.match(w.stderr(), /SIGINT: stopping after the layer \(or evaluation window\) under way/);
  assert.match(w.stderr(), /^stopped \(SIGINT\): nothing was written/m);
  assert.doesNotMatch(w.stderr(), /^error:/m);
  assert.deepEqual(fs.readdirSync(parent), [], "no output folder, whole or temporary");
});
