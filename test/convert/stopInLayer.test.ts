/**
 * A stop inside a layer: a layer whose factoring is several factorizations (the split SVD's keys and
 * values, the whitening roots before the SVD, the per-layer split choice's candidates) stops at the
 * first boundary after the one under way, not after the whole layer (minutes on a llama2-7b shape on
 * the CPU). The abort comes from inside the first factorization (the native eigendecomposition every
 * CPU factorization makes once, counted here), on a later turn of the event loop as the CLI's Ctrl-C
 * handler makes it: the work must give the loop a turn at the boundary for the abort to be seen.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { loadNativeCpu, nativeLinalg } from "../../src/backends/native/cpu.js";
import { linalgScope, useLinalg, type Linalg } from "../../src/backends/native/linalg.js";
import { factorLayer } from "../../src/convert/factor.js";
import { convert, type ConvertOptions } from "../../src/convert/pipeline.js";
import { MlaError } from "../../src/errors.js";
import { FIXTURES, MODELS, tmpDir } from "../helpers.js";

const STORIES = path.join(MODELS, "stories260K");
const TEXT = path.join(FIXTURES, "text", "tinystories.txt");
const lib = loadNativeCpu();
const skip = typeof lib === "string" || process.env["MHA2MLA_SKIP_NATIVE_LINALG"] ? "the native CPU float64 routines are not in use (their eigendecomposition is what the test counts)" : false;

function isInterrupted(e: unknown): boolean {
  assert.ok(e instanceof MlaError, String(e));
  assert.equal(e.code, "INTERRUPTED");
  assert.equal((e.cause as Error).message, "enough");
  return true;
}

/**
 * Runs `work` with the native eigendecomposition counted; the first call schedules `c`'s abort on the
 * next turn of the event loop (a signal handler's). Returns the number of calls.
 */
async function countingEigens(c: AbortController, work: () => Promise<unknown>): Promise<number> {
  if (typeof lib === "string") throw new Error(lib);
  const eigen = lib.symmetricEigen;
  let calls = 0;
  lib.symmetricEigen = ((...args: unknown[]) => {
    if (++calls === 1) setImmediate(() => c.abort(new Error("enough")));
    return (eigen as (...a: unknown[]) => unknown)(...args);
  }) as typeof eigen;
  try {
    await work();
  } finally {
    lib.symmetricEigen = eigen;
  }
  return calls;
}

const CASES: { what: string; opts: Omit<ConvertOptions, "out">; lines: RegExp }[] = [
  { what: "the split SVD: keys, then values", opts: { rank: 2, ropePairs: 1, svd: "split" }, lines: /^convert / },
  { what: "the activation-aware SVD: the whitening roots, then the SVD", opts: { rank: 2, ropePairs: 1, svdInit: "activations", calib: TEXT, calibSamples: 4, calibLen: 32 }, lines: /^convert / },
  { what: "the per-layer split choice with the split SVD: a candidate's keys, then its values", opts: { rank: 4, ropePairs: 1, svd: "split", kvSplit: "per-layer", calib: TEXT, calibSamples: 4, calibLen: 32 }, lines: /^(choose kv split|convert) / },
  { what: "the per-layer split choice with the joint SVD: a candidate's factorization, then its scoring", opts: { rank: 4, ropePairs: 1, kvSplit: "per-layer", calib: TEXT, calibSamples: 4, calibLen: 32 }, lines: /^(choose kv split|convert) / },
];

for (const { what, opts, lines } of CASES)
  test(`convert stops inside the first layer at the boundary after its first factorization (${what}), and leaves no output folder`, { skip }, async () => {
    const parent = tmpDir();
    const out = path.join(parent, "mla");
    const whole = await countingEigens(new AbortController(), () => convert(STORIES, { ...opts, out, device: "cpu", progress: null }));
    assert.ok(whole >= 2 * 5, `an uninterrupted run factors more than once per layer (${whole} eigendecompositions)`);
    fs.rmSync(out, { recursive: true });
    const c = new AbortController();
    const printed: string[] = [];
    const logged: string[] = [];
    const run = () => convert(STORIES, { ...opts, out, device: "cpu", progress: { write: (s) => void printed.push(s) }, logger: { info: (m) => void logged.push(m), warn: () => {} }, signal: c.signal });
    const calls = await countingEigens(c, () => assert.rejects(run(), isInterrupted));
    assert.equal(calls, 1, "the stop came before a second factorization");
    assert.deepEqual(printed.filter((s) => lines.test(s)), [], "no layer or candidate finished");
    assert.deepEqual(logged.filter((m) => /^kv split, layer /.test(m)), []);
    assert.deepEqual(fs.readdirSync(parent), [], "no output folder, whole or temporary");
  });

test("factorLayer: the split SVD given a signal gives the event loop a turn between its key and value factorizations, and stops there on an abort made meanwhile", { skip }, async () => {
  const [kvHeads, headDim, hidden] = [2, 8, 16];
  let seed = 1;
  const random = (n: number) => Float32Array.from({ length: n }, () => (seed = (seed * 16807) % 2147483647) / 2147483647 - 0.5);
  const input = { wk: random(kvHeads * headDim * hidden), wv: random(kvHeads * headDim * hidden), bk: null, bv: null, kvHeads, headDim, hidden, selection: [[0], [1]], rank: 2, svd: "split" as const, whiten: null };
  const base = nativeLinalg()!;
  let eigens = 0;
  let c: AbortController | null = null;
  // The first factorization asks for the abort on a later turn, as a signal handler would run.
  const counting: Linalg = { name: "counting", gram: (A, M, N) => base.gram(A, M, N), matmul: (X, Y, a, b, k) => base.matmul(X, Y, a, b, k), eigen: (S, n) => (eigens++ === 0 && c && setImmediate(() => c!.abort(new Error("enough"))), base.eigen(S, n)) };
  await linalgScope(async () => {
    useLinalg(counting);
    assert.equal((await factorLayer(input)).latentDim, 2 * 2 * kvHeads, "without a signal: both factorizations");
    assert.equal(eigens, 2);
    eigens = 0;
    c = new AbortController();
    await assert.rejects(factorLayer({ ...input, signal: c.signal }), isInterrupted);
    assert.equal(eigens, 1, "the keys' factorization only");
  });
});
