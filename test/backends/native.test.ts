/**
 * The native CPU backend: the shared parity suite (./parity.ts, every op forward and backward vs the
 * reference backend, float32 tolerance 1e-4 relative), error messages, and the host-array kernels
 * (optimizer, calibration) and float64 linear algebra against their TypeScript routes.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { spawnSync } from "node:child_process";
import { checkCpuEnv, loadNativeCpu, NativeCpuBackend } from "../../src/backends/native/cpu.js";
import { AdamW, clipGradients, gradNorm } from "../../src/finetune/optimizer.js";
import { addCovariance, addPairNorms } from "../../src/ropeSelect/calibrate.js";
import { maxAbsDiff, seededRand } from "../helpers.js";
import { checkLinalg } from "./linalgCheck.js";
import { formatParity, runParity } from "./parity.js";

const lib = loadNativeCpu();
const skip = typeof lib === "string" && process.env["MHA2MLA_SKIP_NATIVE"] ? `native CPU library not built (MHA2MLA_SKIP_NATIVE): ${lib}` : false;

test("native CPU library is built and loads (the CUDA backend has its own test)", { skip }, () => {
  assert.equal(typeof lib, "object", typeof lib === "string" ? lib : "");
});

test("parity: every backend op (forward and backward) of the native CPU backend vs the reference backend", { skip }, (t) => {
  const lines = runParity(new NativeCpuBackend(lib as Exclude<typeof lib, string>), 1e-4);
  for (const line of formatParity(lines).split("\n")) t.diagnostic(line);
  const bad = lines.filter((l) => !l.ok);
  assert.equal(bad.length, 0, formatParity(bad));
  assert.ok(lines.length > 60, `only ${lines.length} comparisons`);
});

test("native CPU errors name the culprit", { skip }, () => {
  const N = new NativeCpuBackend(lib as Exclude<typeof lib, string>);
  assert.throws(() => N.crossEntropy(N.upload(new Float32Array(6), [2, 3]), Int32Array.of(0, 3)), /target 3 is outside the vocabulary of 3/);
  assert.throws(() => N.embedding(N.upload(new Float32Array(6), [3, 2]), Int32Array.of(1, 7)), /token id 7 at position 1 is outside the vocabulary of 3/);
  assert.throws(() => N.rope(N.upload(new Float32Array(12), [2, 1, 6]), Int32Array.of(0, 1), new Float64Array(2), 6), /2 frequencies/);
});

test("MHA2MLA_CPU_SERIAL_MACS: a whole number is taken, anything else refused by name; the thread team and the calling thread compute the same products and attention", { skip }, () => {
  for (const v of [undefined, "", "0", "1048576", "65536"]) assert.doesNotThrow(() => checkCpuEnv({ MHA2MLA_CPU_SERIAL_MACS: v }), `${v}`);
  for (const v of ["-1", "1e6", "lots", "2^20", " 5"]) assert.throws(() => checkCpuEnv({ MHA2MLA_CPU_SERIAL_MACS: v }), (e: Error) => e.message.includes(`MHA2MLA_CPU_SERIAL_MACS=${v}`), `${v}`);
  assert.doesNotThrow(() => checkCpuEnv({ MHA2MLA_BLAS: "own" }));
  assert.throws(() => checkCpuEnv({ MHA2MLA_BLAS: "foo" }), /MHA2MLA_BLAS=foo is not known/);
  // The library reads the bound once per process: run a one-row product and one decode query (both
  // below the default bound, so on the calling thread) in child processes, once through the team (0).
  const cpu = new URL("../../src/backends/native/cpu.js", import.meta.url).href;
  const script = `
    const { loadNativeCpu, NativeCpuBackend } = await import(${JSON.stringify(cpu)});
    const N = new NativeCpuBackend(loadNativeCpu());
    let s = 1; const rand = (n) => Float32Array.from({ length: n }, () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32) - 0.5);
    const y = N.linear(N.upload(rand(512), [1, 512]), N.upload(rand(1024 * 512), [1024, 512])).toArray();
    const q = N.upload(rand(4 * 64), [1, 4, 64]), k = N.upload(rand(300 * 2 * 64), [300, 2, 64]), v = N.upload(rand(300 * 2 * 64), [300, 2, 64]);
    const o = N.attention(q, k, v, { scale: 0.125, queryOffset: 299, window: null }).toArray();
    process.stdout.write(JSON.stringify([...y, ...o]));`;
  const run = (env: Record<string, string>) => {
    const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8", env: { ...process.env, OMP_NUM_THREADS: "2", ...env } });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout) as number[];
  };
  const alone = run({}), team = run({ MHA2MLA_CPU_SERIAL_MACS: "0" });
  assert.equal(alone.length, 1024 + 4 * 64);
  let worst = 0;
  for (let i = 0; i < alone.length; i++) worst = Math.max(worst, Math.abs(alone[i]! - team[i]!) / (Math.abs(alone[i]!) + 1e-3));
  assert.ok(worst < 1e-5, `team vs calling thread: ${worst}`);
});

test("native optimizer and calibration kernels match their TypeScript loops", { skip }, () => {
  const N = new NativeCpuBackend(lib as Exclude<typeof lib, string>);
  const kernels = N.optimizerLoops();
  const rand = seededRand(11, Float32Array);
  for (const n of [1, 7, 100_003]) {
    const p = rand(n), g = rand(n, 2);
    const cfg = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
    const mine = new AdamW(cfg, [n], kernels);
    const ref = new AdamW(cfg, [n]);
    const pn = p.slice(), pr = p.slice();
    for (let s = 0; s < 3; s++) {
      mine.update([pn], [g], 1e-3);
      ref.update([pr], [g], 1e-3);
    }
    assert.ok(maxAbsDiff(pn, pr) <= 1e-6, `adamw n=${n}: ${maxAbsDiff(pn, pr)}`);
    assert.ok(maxAbsDiff(mine.v[0]!, ref.v[0]!) <= 1e-6, "second moments");
    const gn = gradNorm([g, null], kernels), gr = gradNorm([g, null]);
    assert.ok(Math.abs(gn - gr) <= 1e-9 * gr, `grad norm ${gn} vs ${gr}`);
    const gc = g.slice(), gcr = g.slice();
    clipGradients([gc], 0.5, kernels);
    clipGradients([gcr], 0.5);
    assert.ok(maxAbsDiff(gc, gcr) <= 1e-7, "clipping");
  }
  const cal = N.calibration;
  for (const [T, heads, Dh] of [[1, 1, 2], [13, 3, 8], [64, 4, 64]] as const) {
    const y = rand(T * heads * Dh);
    const a = new Float64Array(heads * (Dh / 2)).fill(0.5), b = a.slice();
    cal.pairNorms(N.upload(y, [T, heads, Dh]), T, heads, Dh, a);
    addPairNorms(y, T, heads, Dh, b);
    assert.ok(maxAbsDiff(a, b) <= 1e-12, `pair norms [${T},${heads},${Dh}]: ${maxAbsDiff(a, b)}`);
    const D = heads * Dh;
    const ca = new Float64Array(D * D), cb = new Float64Array(D * D);
    cal.covariance!(y, T, D, ca);
    addCovariance(y, T, D, cb);
    assert.ok(maxAbsDiff(ca, cb) <= 1e-9, `covariance [${T},${D}]: ${maxAbsDiff(ca, cb)}`);
  }
});

test("float64 Gram, matmul and symmetric eigendecomposition match the TypeScript route", { skip }, async () => {
  const { nativeLinalg } = await import("../../src/backends/native/cpu.js");
  checkLinalg(nativeLinalg()!, [[1, 1], [7, 5], [33, 65], [130, 64]], { gram: 1e-12, matmul: 1e-10 });
});
