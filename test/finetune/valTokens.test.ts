/**
 * --val-tokens: each validation scores the first N tokens of the held-out tail, not all of it (on a
 * corpus the tail is a fraction of the data, far more than a short fine-tune trains on); a run says
 * so when its tail is larger than its training, and --resume holds it to the run's value.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { finetune, type FinetuneOptions } from "../../src/finetune/trainer.js";
import { checkFinetuneOptions } from "../../src/finetune/options.js";
import { FIXTURES, MODELS, tmpDir } from "../helpers.js";

const MODEL = path.join(MODELS, "stories260K");
const DATA = path.join(FIXTURES, "text", "tinystories_25k.txt");
// 12k tokens: a 10% tail of ~1.2k, against 2 steps of 4 × 32 = 256 tokens trained.
const common: FinetuneOptions = { data: [DATA], out: "", tokens: 2 * 4 * 32, seq: 32, batch: 4, progress: null };

function logged(): { lines: string[]; logger: { info(m: string): void; warn(m: string): void } } {
  const lines: string[] = [];
  return { lines, logger: { info: (m) => lines.push(m), warn: (m) => lines.push(`warning: ${m}`) } };
}

test("--val-tokens scores the tail's first N tokens; N past the tail scores all of it; the run without it says its tail is larger than its training", async () => {
  const all = logged();
  const whole = await finetune(MODEL, { ...common, out: path.join(tmpDir(), "whole"), logger: all.logger });
  assert.ok(all.lines.some((l) => /^each validation scores the \d+ tokens held out \(--val-fraction 0\.1\), more than the 256 trained on; --val-tokens N scores only the first N$/.test(l)), all.lines.join("\n"));
  const capped = logged();
  const few = await finetune(MODEL, { ...common, out: path.join(tmpDir(), "few"), valTokens: 100, logger: capped.logger });
  assert.ok(!capped.lines.some((l) => l.startsWith("each validation scores")), "no note where --val-tokens is given");
  assert.ok(few.valNllBefore !== null && whole.valNllBefore !== null);
  assert.notEqual(few.valNllBefore, whole.valNllBefore, "100 tokens score otherwise than the whole tail");
  const past = await finetune(MODEL, { ...common, out: path.join(tmpDir(), "past"), valTokens: 1e6 });
  assert.equal(past.valNllBefore, whole.valNllBefore, "a cap past the tail scores all of it");
  assert.equal(past.valNllAfter, whole.valNllAfter);
});

test("--val-tokens is refused below 2, with --val-fraction 0, and when --resume gives another", async () => {
  const refused = (o: Parameters<typeof checkFinetuneOptions>[0], re: RegExp) => assert.throws(() => checkFinetuneOptions(o), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message), JSON.stringify(o));
  refused({ valTokens: 1 }, /^--val-tokens 1 is not a whole number of tokens ≥ 2\n {2}hint: pass e\.g\. --val-tokens 100k/);
  refused({ valTokens: 2.5 }, /^--val-tokens 2\.5 is not a whole number/);
  refused({ valTokens: 100, valFraction: 0 }, /^--val-tokens has no effect with --val-fraction 0/);
  const out = path.join(tmpDir(), "resume");
  await finetune(MODEL, { ...common, out, valTokens: 100 });
  await assert.rejects(finetune(MODEL, { ...common, out, valTokens: 200, resume: true }), (e: unknown) => e instanceof MlaError && /--val-tokens is 200 here but the run in .* was started with 100/.test(e.message));
});
