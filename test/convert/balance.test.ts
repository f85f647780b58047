// BKV (--balance-kv): keys are divided by α before the joint SVD and k_up takes α back, so without
// truncation the conversion is unchanged, with truncation the SVD weighs keys and values equally.
import { test } from "node:test";
import assert from "node:assert/strict";
import { balanceFactor, factorLayer } from "../../src/convert/factor.js";
import { seededRand } from "../helpers.js";

const G = 2;
const Dh = 8;
const D = 24;

function layer(keyScale: number) {
  const rand = seededRand(11, Float32Array);
  const wv = rand(G * Dh * D);
  const wk = wv.map((x) => x * keyScale);
  return { wk, wv };
}

/** Rows of k_up·kv_down [Hkv·(Dh−2R), D]. */
function keyReconstruction(f: { kUp: Float32Array; kvDown: Float32Array; latentDim: number }): Float64Array {
  const L = f.latentDim;
  const rows = f.kUp.length / L;
  const out = new Float64Array(rows * D);
  for (let r = 0; r < rows; r++) for (let j = 0; j < L; j++) for (let c = 0; c < D; c++) out[r * D + c] += f.kUp[r * L + j]! * f.kvDown[j * D + c]!;
  return out;
}

test("α equalizes the mean row energy of keys and values", () => {
  const { wk, wv } = layer(5);
  const rows = Array.from({ length: G * Dh }, (_, i) => i);
  assert.ok(Math.abs(balanceFactor(wk, rows, wv, rows, D) - 5) < 1e-6);
});

test("balanced and plain joint SVD agree without truncation and differ with it", async () => {
  const { wk, wv } = layer(5);
  const base = { wk, wv, bk: null, bv: null, kvHeads: G, headDim: Dh, hidden: D, selection: [[0], [1]], svd: "joint" as const, whiten: null };
  const full = Math.floor(D / G);
  const [a, b] = [await factorLayer({ ...base, rank: full }), await factorLayer({ ...base, rank: full, balance: true })];
  const [ra, rb] = [keyReconstruction(a), keyReconstruction(b)];
  for (let i = 0; i < ra.length; i++) assert.ok(Math.abs(ra[i]! - rb[i]!) < 1e-4, `full rank, element ${i}`);
  const [c, d] = [await factorLayer({ ...base, rank: 2 }), await factorLayer({ ...base, rank: 2, balance: true })];
  const [rc, rd] = [keyReconstruction(c), keyReconstruction(d)];
  assert.ok(rc.some((x, i) => Math.abs(x - rd[i]!) > 1e-3), "truncation sees the balanced matrix");
});
