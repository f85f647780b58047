/**
 * The fine-tune's option checks (src/finetune/options.ts), which the trainer, pipeline and study make
 * before any work: every fraction, coefficient and bound is refused outside its range, naming the flag.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { checkFinetuneOptions } from "../../src/finetune/options.js";

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
