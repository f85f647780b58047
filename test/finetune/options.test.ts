/**
 * The fine-tune's option checks (src/finetune/options.ts), which the trainer, pipeline and study make
 * before any work: every fraction, coefficient and bound is refused outside its range, naming the flag.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { checkFinetuneOptions } from "../../src/finetune/options.js";
import { lrAt } from "../../src/finetune/schedule.js";

test("fractions, AdamW's coefficients and the clip bound are refused outside their ranges, naming the flag", () => {
  const cases: [Parameters<typeof checkFinetuneOptions>[0], RegExp][] = [
    [{ valFraction: 1 }, /^--val-fraction 1 is outside \[0, 1\)/],
    [{ fraction: 0 }, /^--fraction 0 is outside \(0, 1\]/],
    [{ decayFraction: 1.5 }, /^--decay-fraction 1\.5 is outside \[0, 1\]/],
    [{ weightDecay: -0.1 }, /^--weight-decay -0\.1 is outside \[0, ∞\)/],
    [{ clip: -1 }, /^--clip -1 is outside \[0, ∞\)\n {2}hint: the global gradient-norm bound/],
    [{ clip: NaN }, /^--clip NaN is outside/],
    [{ beta2: 1 }, /^beta2 1 is outside \[0, 1\)/],
    [{ eps: 0 }, /^eps 0 is outside \(0, ∞\)/],
    [{ warmup: 1 }, /^--warmup 1 is outside \[0, 1\)/],
    [{ seed: -1 }, /^--seed -1 is not a whole number/],
  ];
  for (const [o, re] of cases) assert.throws(() => checkFinetuneOptions(o), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message), `${JSON.stringify(o)} → ${re}`);
  for (const o of [{}, { valFraction: 0, fraction: 1, decayFraction: 0, weightDecay: 0, clip: 0, beta1: 0, eps: 1e-12 }, { decayFraction: 1 }])
    assert.doesNotThrow(() => checkFinetuneOptions(o), JSON.stringify(o));
});

test("a schedule's setting is refused under another schedule (it did nothing, yet --resume refused changing it)", () => {
  const refusedWith = (o: Parameters<typeof checkFinetuneOptions>[0], re: RegExp) => assert.throws(() => checkFinetuneOptions(o), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message), JSON.stringify(o));
  refusedWith({ schedule: "cosine", decayFraction: 0.9 }, /^--decay-fraction has no effect without --schedule wsd[\s\S]*hint:/);
  refusedWith({ schedule: "constant", decayFraction: 0.2 }, /^--decay-fraction has no effect without --schedule wsd/);
  refusedWith({ minLrFraction: 0.1 }, /^minLrFraction has no effect without schedule: "cosine"/);
  for (const o of [{ schedule: "wsd", decayFraction: 0.9 }, { schedule: "cosine", minLrFraction: 0.1 }] as const) assert.doesNotThrow(() => checkFinetuneOptions(o), JSON.stringify(o));
  // null means "not given", as refuseInert reads it everywhere (it let decayFraction through before).
  const nulls = [{ schedule: "cosine", decayFraction: null }, { schedule: "wsd", minLrFraction: null }, { distillWeight: null, temperature: null }];
  for (const o of nulls) assert.doesNotThrow(() => checkFinetuneOptions(o as unknown as Parameters<typeof checkFinetuneOptions>[0]), JSON.stringify(o));
});

test("wsd's decay starts after warmup at the earliest (warmup 0.5 with decay 0.8 held the peak one step, then cut it 61%)", () => {
  const s = { name: "wsd" as const, lr: 1, warmupSteps: 5, decayFraction: 0.8, minLrFraction: 0 };
  assert.equal(lrAt(s, 4, 10), 1);
  assert.equal(lrAt(s, 5, 10), 1);
  assert.ok(Math.abs(lrAt(s, 6, 10) - (1 - Math.sqrt(1 / 5))) < 1e-12);
  for (let step = 5; step < 9; step++) assert.ok(lrAt(s, step + 1, 10) < lrAt(s, step, 10), `decreasing at ${step}`);
});

test("wsd decays a short run too: at least two decay steps, so its last step is below the peak (4 steps at the default 0.2 never decayed)", () => {
  const s = { name: "wsd" as const, lr: 1, warmupSteps: 0, decayFraction: 0.2, minLrFraction: 0 };
  for (const total of [2, 3, 4, 5, 7]) {
    assert.equal(lrAt(s, total - 2, total), 1, `${total} steps: the decay starts at the peak`);
    assert.ok(Math.abs(lrAt(s, total - 1, total) - (1 - Math.sqrt(1 / 2))) < 1e-12, `${total} steps: the last step decays`);
  }
  assert.equal(lrAt({ ...s, decayFraction: 0 }, 3, 4), 1, "no decay asked: none");
  assert.equal(lrAt(s, 79, 100), 1, "long runs as before");
  assert.equal(lrAt(s, 80, 100), 1);
});
