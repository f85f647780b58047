/**
 * convert and export score their --eval-text with eval's own checks, which name eval's flags: their
 * messages must name the flags the user typed (--eval-tokens, --eval-ctx), and come before the work,
 * not after a conversion.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { convert } from "../../src/convert/pipeline.js";
import { convertDeepseek } from "../../src/deepseek/export.js";
import { exportDeepseek } from "../../src/deepseek/fromMla.js";
import { evaluate } from "../../src/eval/evaluate.js";
import { pipeline } from "../../src/pipeline.js";
import { MlaError } from "../../src/errors.js";
import { FIXTURES, MODELS, ROOT, tmpDir } from "../helpers.js";

const MODEL = path.join(MODELS, "stories260K");
const TEXT = path.join(FIXTURES, "text", "tinystories_heldout.txt");
const BAD = [
  [{ evalTokens: 0 }, /^--eval-tokens 0 is not a positive count\n  hint: pass a whole number ≥ 1, or leave --eval-tokens out/],
  [{ evalTokens: 2.5 }, /^--eval-tokens 2\.5 is not a positive count/],
  [{ evalCtx: 1 }, /^--eval-ctx 1 is too small\n  hint: use at least 2/],
] as const;

const named = (re: RegExp) => (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message);

test("convert (both formats) and export name --eval-tokens and --eval-ctx, and refuse them before writing anything", async () => {
  const mla = path.join(tmpDir(), "mla");
  await convert(MODEL, { rank: 2, ropePairs: 1, ropeStrategy: "uniform", ropeDisjoint: true, out: mla, progress: null, device: "cpu" });
  const parent = tmpDir();
  const out = path.join(parent, "never");
  for (const [bad, re] of BAD) {
    const o = { evalText: TEXT, ...bad, out, progress: null, device: "cpu" as const };
    await assert.rejects(convert(MODEL, { rank: 2, ...o }), named(re), `convert ${JSON.stringify(bad)}`);
    await assert.rejects(convertDeepseek(MODEL, { rank: 2, ...o }), named(re), `convert --format deepseek ${JSON.stringify(bad)}`);
    await assert.rejects(exportDeepseek(mla, o), named(re), `export ${JSON.stringify(bad)}`);
  }
  assert.deepEqual(fs.readdirSync(parent), [], "no output or temporary folder left");
  const r = spawnSync(process.execPath, [path.join(ROOT, "dist", "src", "cli", "main.js"), "export", mla, "--format", "deepseek", "--out", out, "--eval-text", TEXT, "--eval-ctx", "1"], { encoding: "utf8" });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^error: --eval-ctx 1 is too small$/m);
});

test("convert refuses --eval-tokens without --eval-text, which it would do nothing without", async () => {
  const parent = tmpDir();
  await assert.rejects(convert(MODEL, { rank: 2, evalTokens: 100, out: path.join(parent, "never"), progress: null, device: "cpu" }), named(/^--eval-tokens has no effect without --eval-text FILE/));
  assert.deepEqual(fs.readdirSync(parent), []);
});

test("eval itself still names --tokens and --ctx", async () => {
  await assert.rejects(evaluate(MODEL, { text: TEXT, tokens: 0, device: "reference" }), named(/^--tokens 0 is not a positive count/));
  await assert.rejects(evaluate(MODEL, { text: TEXT, ctx: 1, device: "reference" }), named(/^--ctx 1 is too small/));
  await assert.rejects(evaluate(MODEL, { text: TEXT, ctx: 2.5, device: "reference" }), named(/^--ctx 2.5 is not a whole number of tokens/));
});

test("an --eval-ctx past the model's positions is warned about once: in a dry run, and in a conversion that evaluates twice", async () => {
  const warned = () => {
    const warnings: string[] = [];
    return { warnings, logger: { info: () => {}, warn: (m: string) => void warnings.push(m) } };
  };
  const past = (ws: string[]) => ws.filter((w) => /--eval-ctx 600 passes the model's 512 positions \(max_position_embeddings\)/.test(w)).length;
  const dry = warned();
  await convert(MODEL, { rank: 2, evalText: TEXT, evalTokens: 700, evalCtx: 600, dryRun: true, progress: null, device: "cpu", logger: dry.logger });
  assert.equal(past(dry.warnings), 1, "the dry run warns");
  const run = warned();
  const r = await convert(MODEL, { rank: 2, evalText: TEXT, evalTokens: 700, evalCtx: 600, out: path.join(tmpDir(), "c"), progress: null, device: "cpu", logger: run.logger });
  assert.ok(r.report, "it evaluated before and after");
  assert.equal(past(run.warnings), 1, "before the conversion, not again at each evaluation");
  const ds = warned();
  await convertDeepseek(MODEL, { rank: 2, evalText: TEXT, evalTokens: 700, evalCtx: 600, out: path.join(tmpDir(), "d"), progress: null, device: "cpu", logger: ds.logger });
  assert.equal(past(ds.warnings), 1, "--format deepseek too");
  // pipeline evaluates before and after too: one warning, up front.
  const pl = warned();
  await pipeline(MODEL, { convert: { rank: 2 }, evalText: TEXT, evalTokens: 700, evalCtx: 600, out: path.join(tmpDir(), "p"), progress: null, device: "cpu", logger: pl.logger });
  assert.equal(past(pl.warnings), 1, "pipeline too");
  // eval itself warns (with its own flag's name).
  const ev = warned();
  await evaluate(MODEL, { text: TEXT, tokens: 700, ctx: 600, device: "cpu", progress: null, logger: ev.logger });
  assert.deepEqual(ev.warnings.filter((w) => /passes the model's/.test(w)), ["--ctx 600 passes the model's 512 positions (max_position_embeddings): windows past them score poorly"]);
});
