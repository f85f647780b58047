/** pickToken against the distributions it should draw from: greedy, temperature, top-k and the nucleus; tokenLogprobs against a float64 log-softmax. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { seed32 } from "../../src/serve/completionRequest.js";
import { pickToken, seededRandom, tokenLogprobs } from "../../src/model/sampling.js";
import { checkSampling } from "../../src/model/generate.js";

/** Frequencies of `n` draws. */
function draws(logits: Float32Array, opts: Parameters<typeof pickToken>[1], n = 20000): number[] {
  const rand = seededRandom(7);
  const counts = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < n; i++) counts[pickToken(logits, opts, rand)]!++;
  return counts.map((c) => c / n);
}

const logits = Float32Array.from([2, 1, 0.5, 0, -1, -3]);
const softmax = (x: Float32Array, t: number, keep: number[]): number[] => {
  const e = Array.from(x, (v, i) => (keep.includes(i) ? Math.exp(v / t) : 0));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
};

test("greedy takes the largest logit, whatever top-k and top-p say", () => {
  assert.equal(pickToken(logits, { temperature: 0, topK: 3, topP: 0.1 }, seededRandom(1)), 0);
  assert.equal(pickToken(Float32Array.from([0, 5, 5, 1]), { temperature: 0 }, seededRandom(1)), 1, "ties go to the first");
});

test("sampling at a temperature draws softmax(logits / T)", () => {
  const got = draws(logits, { temperature: 0.7 });
  const want = softmax(logits, 0.7, [0, 1, 2, 3, 4, 5]);
  got.forEach((g, i) => assert.ok(Math.abs(g - want[i]!) < 0.015, `id ${i}: ${g} vs ${want[i]}`));
});

test("top-k keeps the k most likely ids, renormalized", () => {
  const got = draws(logits, { temperature: 1, topK: 2 });
  const want = softmax(logits, 1, [0, 1]);
  got.forEach((g, i) => assert.ok(Math.abs(g - want[i]!) < 0.015, `id ${i}: ${g} vs ${want[i]}`));
  assert.equal(pickToken(logits, { temperature: 5, topK: 1 }, seededRandom(3)), 0);
});

test("top-p keeps the fewest most likely ids reaching p, renormalized", () => {
  const p = softmax(logits, 1, [0, 1, 2, 3, 4, 5]);
  // p ≈ [0.54, 0.20, 0.12, 0.07, 0.03, 0.00]: 0.8 needs the first three (0.54 + 0.20 < 0.8).
  assert.ok(p[0]! + p[1]! < 0.8 && p[0]! + p[1]! + p[2]! >= 0.8);
  const got = draws(logits, { temperature: 1, topP: 0.8 });
  const want = softmax(logits, 1, [0, 1, 2]);
  got.forEach((g, i) => assert.ok(Math.abs(g - want[i]!) < 0.015, `id ${i}: ${g} vs ${want[i]}`));
  assert.equal(pickToken(logits, { temperature: 1, topP: 0.01 }, seededRandom(3)), 0, "a tiny p keeps only the most likely id");
});

test("top-p over a large vocabulary finds the nucleus among the likely ids", () => {
  // 32000 ids: a handful likely, the rest a long flat tail that together holds most of the mass.
  const V = 32000;
  const big = new Float32Array(V).fill(-2);
  big[10] = 8;
  big[20] = 7.5;
  const tail = (V - 2) * Math.exp(-2);
  const head = Math.exp(8) + Math.exp(7.5);
  assert.ok(tail > head * 0.9, "the tail holds a sizeable share");
  // p = 0.5 lies within the two likely ids; 0.9 reaches into the flat tail.
  const got = draws(big, { temperature: 1, topP: Math.exp(8) / (head + tail) + 0.01 }, 400);
  assert.ok(got[10]! > 0.3 && got[20]! > 0.3 && got[10]! + got[20]! === 1, `only the two likely ids: ${got[10]}, ${got[20]}`);
  const wide = draws(big, { temperature: 1, topP: 0.95 }, 400);
  assert.ok(wide[10]! + wide[20]! < 0.8, "a wide nucleus reaches the tail");
});

test("the sampling settings are checked, naming the flag", () => {
  assert.throws(() => checkSampling({ temperature: -1 }), /--temperature -1/);
  assert.throws(() => checkSampling({ temperature: 1, topK: 1.5 }), /--top-k 1.5/);
  assert.throws(() => checkSampling({ temperature: 1, topP: 0 }), /--top-p 0 /);
  assert.throws(() => checkSampling({ temperature: 1, topP: 1.2 }), /--top-p 1.2/);
  assert.deepEqual(checkSampling({}), { temperature: 0, topK: 0, topP: 1 });
});

test("greedy decoding refuses top-k, top-p and min-p as the CLI does, their defaults' values too (it reads none of them)", () => {
  for (const [opts, named] of [[{ topK: 5 }, "--top-k has"], [{ temperature: 0, topK: 0 }, "--top-k has"], [{ temperature: 0, topP: 0.9, minP: 0.1 }, "--top-p and --min-p have"]] as const)
    assert.throws(() => checkSampling(opts), (e: Error) => new RegExp(`^${named} no effect without --temperature T > 0 \\(settings of sampling; --temperature 0, the default, is greedy\\)\n  hint: add e\\.g\\. --temperature 0\\.8`).test(e.message));
  assert.deepEqual(checkSampling({ temperature: 0, topK: undefined, topP: null as unknown as undefined }), { temperature: 0, topK: 0, topP: 1 }, "undefined and null are not given");
  assert.deepEqual(checkSampling({ temperature: 0.5, topK: 5 }), { temperature: 0.5, topK: 5, topP: 1 });
});

test("seededRandom refuses a seed it would wrap into another's 32 bits (a negative, a fraction, NaN, 2^32)", () => {
  for (const seed of [-1, 1.5, NaN, 2 ** 32, Infinity])
    assert.throws(() => seededRandom(seed), (e: Error) => e.message === `seededRandom(): the seed ${seed} is not a whole number in [0, 2^32)\n  hint: pass e.g. seededRandom(0); the generator takes 32 bits`);
  assert.throws(() => seededRandom("7" as unknown as number), /the seed "7" \(a string\) is not a whole number/);
  assert.notEqual(seededRandom(2 ** 32 - 1)(), seededRandom(0)(), "the largest seed is its own");
});

test("min-p keeps the ids at least that fraction as likely as the most likely one, renormalized, before top-k", () => {
  // exp(1 − 2) ≈ 0.37 ≥ 0.3 > exp(0.5 − 2) ≈ 0.22: the first two stay.
  const got = draws(logits, { temperature: 1, minP: 0.3 });
  const want = softmax(logits, 1, [0, 1]);
  got.forEach((g, i) => assert.ok(Math.abs(g - want[i]!) < 0.015, `id ${i}: ${g} vs ${want[i]}`));
  // After the temperature: at T = 2 the ratios are square roots, so a third id clears 0.3.
  assert.deepEqual(draws(logits, { temperature: 2, minP: 0.3, topK: 2 }).map((g) => g > 0), [true, true, false, false, false, false], "then top-k of what min-p kept");
  assert.ok(draws(logits, { temperature: 2, minP: 0.3 })[2]! > 0);
  assert.throws(() => checkSampling({ temperature: 1, minP: 1.5 }), /--min-p 1.5 is not a fraction in \[0, 1\]/);
});

test("top-p applies to what top-k kept, as vLLM and HF apply them; ids tied with the k-th stay", () => {
  // p = [.5, .3, .2]: top-k 2 keeps .5 and .3 (mass .8); top-p .6 of that is .48, which .5 alone covers.
  const l = Float32Array.from([Math.log(0.5), Math.log(0.3), Math.log(0.2)]);
  const got = draws(l, { temperature: 1, topK: 2, topP: 0.6 }, 2000);
  assert.deepEqual(got, [1, 0, 0]);
  const tied = draws(Float32Array.from([3, 1, 1, 0]), { temperature: 1, topK: 2 }, 4000);
  assert.ok(tied[1]! > 0.05 && tied[2]! > 0.05 && tied[3] === 0, `ids 1 and 2 tie at the 2nd value: ${tied}`);
});

test("NaN logits weigh nothing, +∞ wins, and logits with no number at all are refused", () => {
  const r = seededRandom(1);
  for (const opts of [{ temperature: 0 }, { temperature: 1 }, { temperature: 1, topP: 0.9 }, { temperature: 1, topK: 2 }]) {
    for (let i = 0; i < 50; i++) assert.notEqual(pickToken(Float32Array.from([NaN, 5, 1]), opts, r), 0, JSON.stringify(opts));
    assert.equal(pickToken(Float32Array.from([0, Infinity, 1]), opts, r), 1);
    assert.throws(() => pickToken(Float32Array.from([NaN, NaN]), opts, r), /logits for the next token hold no number[^]*diverged/);
    assert.throws(() => pickToken(Float32Array.from([-Infinity, -Infinity]), opts, r), /hold no number/);
  }
});

test("tokenLogprobs: the chosen token's log-softmax and the top ones, most likely first, ties to the lower id", () => {
  const logits = Float32Array.of(1, 3, 3, -2, 0.5, 2);
  const norm = Math.log(Array.from(logits).reduce((a, x) => a + Math.exp(x), 0));
  const r = tokenLogprobs(logits, 4, 3);
  assert.ok(Math.abs(r.logprob - (0.5 - norm)) < 1e-12);
  assert.deepEqual(r.top.map((t) => t.id), [1, 2, 5]);
  r.top.forEach((t) => assert.ok(Math.abs(t.logprob - (logits[t.id]! - norm)) < 1e-12));
  assert.deepEqual(tokenLogprobs(logits, 0, 0).top, []);
  assert.equal(tokenLogprobs(logits, 0, 10).top.length, 6, "at most the vocabulary");
});

test("a request's seed: [0, 2^32) is the sampler's seed itself; larger and negative seeds fold their high bits in, so 0, 2^32 and -2^32 draw differently", () => {
  for (const v of [0, 1, 2 ** 32 - 1]) assert.equal(seed32(v), v);
  const folded = [2 ** 32, -(2 ** 32), -1, 2 ** 53 - 1].map(seed32);
  assert.equal(new Set([0, ...folded]).size, 5, `distinct: ${folded}`);
  for (const f of folded) assert.ok(Number.isInteger(f) && f >= 0 && f < 2 ** 32);
});
