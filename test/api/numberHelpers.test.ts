/**
 * The public helpers whose callers inside the toolkit pass checked numbers (pickToken, lrAt,
 * defaultRopePairs), called from a script with bad ones: an MlaError BAD_ARGUMENT naming the argument
 * and its range, never a silent draw, a NaN learning rate, or a pair count no head has.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import * as api from "../../src/index.js";
import { MlaError } from "../../src/errors.js";

type Loose = any;
const refused = (f: () => unknown, re: RegExp, what: string) =>
  assert.throws(f, (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message) && /\n  hint: \S/.test(e.message), what);

test("pickToken refuses logits, settings and a generator it cannot draw with; good ones draw as before", () => {
  const logits = Float32Array.of(0, 2, 1);
  const rand = api.seededRandom(1);
  refused(() => api.pickToken(new Float32Array(0), { temperature: 1 }, rand), /logits are empty/, "no logits");
  refused(() => api.pickToken([0, 1] as Loose, { temperature: 1 }, rand), /logits are \[0, 1\] \(an array\)/, "a plain array");
  refused(() => api.pickToken(logits, undefined as Loose, rand), /options are undefined/, "no options");
  for (const [opts, re] of [
    [{ temperature: NaN }, /temperature NaN/],
    [{ temperature: -1 }, /temperature -1/],
    [{ temperature: "1" }, /temperature "1" \(a string\)/],
    [{ temperature: 1, topK: 1.5 }, /topK 1\.5/],
    [{ temperature: 1, topP: 0 }, /topP 0 .*\(0, 1\]/],
    [{ temperature: 1, topP: NaN }, /topP NaN/],
    [{ temperature: 1, minP: 2 }, /minP 2/],
  ] as const)
    refused(() => api.pickToken(logits, opts as Loose, rand), re, JSON.stringify(opts));
  refused(() => api.pickToken(logits, { temperature: 1 }, 7 as Loose), /rand is 7 \(a number\), not a function/, "rand");
  assert.equal(api.pickToken(logits, { temperature: 0 }, rand), 1);
  assert.equal(api.pickToken(logits, { temperature: Infinity, topK: 1 }, rand), 1, "an infinite temperature is a valid (uniform) one; top-1 keeps the best");
  assert.ok([0, 1, 2].includes(api.pickToken(Float64Array.of(0, 2, 1), { temperature: 1, topP: 1, minP: 0 }, rand)));
});

test("lrAt refuses a schedule, step or total that would give a NaN or undefined rate", () => {
  const s = { name: "wsd", lr: 1e-4, warmupSteps: 2, decayFraction: 0.2, minLrFraction: 0.1 } as const;
  for (const [bad, re] of [
    [{ ...s, name: "linear" }, /name "linear" \(one of wsd, cosine, constant\)/],
    [{ ...s, lr: NaN }, /lr NaN/],
    [{ ...s, warmupSteps: 1.5 }, /warmupSteps 1\.5/],
    [{ ...s, decayFraction: 2 }, /decayFraction 2/],
    [{ ...s, minLrFraction: -0.1 }, /minLrFraction -0\.1/],
  ] as const)
    refused(() => api.lrAt(bad as Loose, 0, 10), re, JSON.stringify(bad));
  refused(() => api.lrAt(null as Loose, 0, 10), /schedule is null/, "no schedule");
  refused(() => api.lrAt(s, 0, 0), /total 0/, "no steps");
  refused(() => api.lrAt(s, NaN, 10), /step NaN/, "a NaN step");
  refused(() => api.lrAt(s, -1, 10), /step -1/, "a negative step");
  assert.equal(api.lrAt(s, 0, 10), 5e-5, "warmup as before");
  assert.equal(api.lrAt({ ...s, lr: 0 }, 5, 10), 0, "a zero rate is a rate");
});

test("defaultRopePairs refuses a head_dim that is not an even whole number", () => {
  for (const d of [NaN, 0, 7, 64.5, -16]) refused(() => api.defaultRopePairs(d), new RegExp(`head_dim ${d} is not an even whole number`), String(d));
  assert.equal(api.defaultRopePairs(128), 8);
  assert.equal(api.defaultRopePairs(8), 1);
  assert.equal(api.defaultRopePairs(2), 1);
});
