/** Shared test helpers: fixture paths, tolerance checks, temporary folders. */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import assert from "node:assert/strict";
import { spawnSync, type ChildProcess } from "node:child_process";
import { packageRoot } from "../src/io/modelDir.js";
import type { LlamaModel } from "../src/model/llama.js";
import type { DecodeCache } from "../src/model/kvCache.js";
import { loadNativeCpu, NativeCpuBackend } from "../src/backends/native/cpu.js";
import { LOCK_FILE } from "../src/io/outLock.js";

export const ROOT = packageRoot();
export const FIXTURES = path.join(ROOT, "fixtures");
export const GOLDEN = path.join(FIXTURES, "golden");
export const MODELS = path.join(FIXTURES, "models");
/** ../shared beside the checkout, where the full data lives (present in CI and on dev machines). */
export const SHARED = path.resolve(ROOT, "..", "shared");

/**
 * loadModel options for a test whose subject is not a backend: the native CPU backend where its library
 * loads (several times the reference backend's speed on these models; the two agree to ~1e-7), else none
 * (the reference backend).
 */
export function fastCpu(): { backend?: NativeCpuBackend } {
  const lib = loadNativeCpu();
  return typeof lib === "string" ? {} : { backend: new NativeCpuBackend(lib) };
}

/**
 * The command prefix that runs a child process as a user whom a folder without write permission stops:
 * none for a user other than root; root goes through setpriv as nobody; null where root has no setpriv.
 */
export const AS_UNPRIVILEGED: string[] | null = process.getuid?.() !== 0 ? [] : spawnSync("setpriv", ["--version"]).status === 0 ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : null;
export const NO_UNPRIVILEGED = "running as root without setpriv: every folder is writable";

/**
 * For a command run AS_UNPRIVILEGED: a fresh folder it may write in (`dir`) holding `locked`, one it
 * may not, and the command line prefix that runs node as that user.
 */
export function lockedFolder(): { dir: string; locked: string; node: string[] } {
  const dir = tmpDir();
  fs.chmodSync(dir, 0o777);
  const locked = path.join(dir, "locked");
  fs.mkdirSync(locked);
  fs.chmodSync(locked, 0o555);
  return { dir, locked, node: [...AS_UNPRIVILEGED!, process.execPath] };
}

const created: string[] = [];
process.on("exit", () => {
  for (const d of created) fs.rmSync(d, { recursive: true, force: true });
});

/** A fresh temporary folder, removed when the test process exits. */
export function tmpDir(prefix = "mha2mla-test-"): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  created.push(d);
  return d;
}

/** A fresh folder holding a copy of stories260K's tokenizer files: one a test may change, or give a worker thread of its own. */
export function storiesTokenizerCopy(): string {
  const dir = tmpDir();
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(MODELS, "stories260K", f), path.join(dir, f));
  return dir;
}

/**
 * A copy of stories260K whose tokenizer.json adds "<zz>" as id 600, past the model's 512 embedding rows
 * (a tokenizer of another model): a text holding "<zz>" tokenizes to an id the model cannot embed.
 */
export function pastVocabModel(): string {
  const dir = path.join(tmpDir(), "model");
  fs.cpSync(path.join(MODELS, "stories260K"), dir, { recursive: true });
  const file = path.join(dir, "tokenizer.json");
  const tok = JSON.parse(fs.readFileSync(file, "utf8")) as { added_tokens: object[] };
  tok.added_tokens.push({ id: 600, content: "<zz>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: false });
  fs.writeFileSync(file, JSON.stringify(tok));
  return dir;
}

/** A task data folder whose piqa.test.json holds one item with "<zz>" in a solution: an id past the vocabulary for pastVocabModel. */
export function pastVocabPiqa(): string {
  const dir = tmpDir();
  const item = { instruction: "Please choose the correct solution to the question: How do I dry a cup?\n\nSolution1: Wipe it with a towel.\n\nSolution2: Fill it with <zz> water.\n\nAnswer format: solution1/solution2", input: "", output: "the correct answer is solution1", answer: "solution1" };
  fs.writeFileSync(path.join(dir, "piqa.test.json"), JSON.stringify([item]));
  return dir;
}

/** An --out that holds an earlier run's result, which a refused command must leave as it was (assertKept). */
export function earlierOut(): string {
  const out = path.join(tmpDir(), "earlier");
  fs.mkdirSync(out);
  fs.writeFileSync(path.join(out, "report.md"), "earlier run");
  return out;
}

/** The earlier result in `out` (earlierOut) is all there is: no phase or run started, and --force cleared nothing. */
export function assertKept(out: string, what = ""): void {
  assert.deepEqual(fs.readdirSync(out), ["report.md"], `${what}${what ? ": " : ""}no phase or run started, and --force cleared nothing`);
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

/** max |a − b| relative to max |b| (logits, gradients: one scale for the whole tensor). */
export function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    s = Math.max(s, Math.abs(b[i]!));
  }
  return d / Math.max(s, 1e-30);
}

/** A seeded uniform(−scale, scale) generator of typed arrays, for op tests. */
export function seededRand<A extends Float32Array | Float64Array>(seed: number, Ctor: { new (n: number): A }): (n: number, scale?: number) => A {
  let s = seed >>> 0;
  return (n, scale = 1) => {
    const a = new Ctor(n);
    for (let i = 0; i < n; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      a[i] = ((s / 4294967296) * 2 - 1) * scale;
    }
    return a;
  };
}

/**
 * Polls `cond` every `everyMs` until it holds. The limit is generous on purpose: tests wait for an
 * event (a folder, a log line), not for a duration, so a busy machine only makes them slower.
 */
export async function waitFor(cond: () => boolean, what: string, limitMs = 300_000, everyMs = 10): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > limitMs) throw new Error(`timed out after ${limitMs / 1000} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * A spawned CLI: its stderr so far, and its exit code once its output streams have closed. `until`
 * waits for a state the child reaches while running, and fails at once, with its stderr, if the
 * child exits first (waiting out waitFor's limit would only hide why).
 */
export function watchChild(child: ChildProcess): { stderr: () => string; exited: Promise<number | null>; until: (cond: () => boolean, what: string) => Promise<void> } {
  let err = "";
  child.stderr?.on("data", (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
  const until = async (cond: () => boolean, what: string) => {
    await waitFor(() => cond() || child.exitCode !== null || child.signalCode !== null, what);
    if (!cond()) throw new Error(`the child exited (${child.exitCode ?? child.signalCode}) before ${what}:\n${err}`);
  };
  return { stderr: () => err, exited, until };
}

/**
 * Central finite differences at a few fixed elements of a float64 weight `w` (edited in place and
 * restored) against its analytic gradient `g`: returns the relative error ‖g − n‖/‖n‖ and ‖n‖.
 * The step is h·max(1, |w_j|), so large weights (DeepSeek's norm constants) are probed at their scale.
 */
export function finiteDifference(w: Float64Array | Float32Array, g: ArrayLike<number>, loss: () => number, h = 1e-6, samples: number | readonly number[] = 6): { rel: number; norm: number } {
  let num2 = 0;
  let diff2 = 0;
  // `samples`: how many elements to probe (spread by a hash), or which.
  const picks = typeof samples === "number" ? Array.from({ length: Math.min(samples, w.length) }, (_, k) => Math.floor((k * 2654435761) % w.length)) : samples;
  for (const j of picks) {
    const orig = w[j]!;
    const step = h * Math.max(1, Math.abs(orig));
    w[j] = orig + step;
    const up = loss();
    w[j] = orig - step;
    const down = loss();
    w[j] = orig;
    const n = (up - down) / (2 * step);
    num2 += n * n;
    diff2 += (g[j]! - n) ** 2;
  }
  return { rel: Math.sqrt(diff2) / Math.max(Math.sqrt(num2), 1e-10), norm: Math.sqrt(num2) };
}

/**
 * Decode equals the full forward: `ids` [T] prefilled `prefill` tokens into a fresh cache, then fed
 * one token per step through the absorbed path, each step's logits within `tol` of row t of the
 * full forward. Returns the cache (for callers that check its size).
 */
export function assertDecodeMatchesForward(model: LlamaModel, ids: Int32Array, label: string, prefill = 3, tol = 1e-4): DecodeCache {
  const V = model.config.vocabSize;
  const full = model.forward(ids).toArray();
  const cache = model.newCache();
  model.forward(ids.subarray(0, prefill), cache);
  for (let t = prefill; t < ids.length; t++) {
    const got = model.forward(ids.subarray(t, t + 1), cache, { absorb: true }).toArray();
    const e = maxAbsDiff(got, full.subarray(t * V, (t + 1) * V));
    assert.ok(e <= tol, `${label}, step ${t}: max |Δ logits| ${e}`);
  }
  return cache;
}

/** The steps of the loss lines in the fine-tune run `runDir`'s train_log.jsonl, in order (a step logged twice shows twice). */
export function loggedSteps(runDir: string): number[] {
  const rows = fs.readFileSync(path.join(runDir, "train_log.jsonl"), "utf8").trimEnd().split("\n");
  return rows.map((l) => JSON.parse(l) as { step: number; loss?: number }).filter((r) => r.loss !== undefined).map((r) => r.step);
}

/** Every run-folder lock (.mha2mla.lock) under `dir`, as paths relative to it. */
export const lockFiles = (dir: string) => fs.readdirSync(dir, { recursive: true }).map(String).filter((f) => path.basename(f) === LOCK_FILE);

/** A pid that ran on this machine and has ended. */
export function deadPid(): number {
  const r = spawnSync(process.execPath, ["-e", ""]);
  assert.ok(r.pid && r.status === 0);
  return r.pid;
}

/** Writes the lock of run folder `dir` as a run of `command` with `pid` started `started` on this host (or `host`) would; returns its path. */
export function writeLock(dir: string, h: { pid: number; command: string; started: string; host?: string }): string {
  const file = path.join(dir, LOCK_FILE);
  fs.writeFileSync(file, JSON.stringify({ pid: h.pid, host: h.host ?? os.hostname(), command: h.command, started: h.started }));
  return file;
}
