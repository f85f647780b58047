/**
 * `eval`'s option checks, which `pipeline` also makes before its first phase (test/cli/pipelineFlags):
 * a task setting without --tasks, or --tokens without --text, would do nothing and is refused, naming
 * both flags, before the model is loaded.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { evaluate } from "../../src/eval/evaluate.js";
import { FIXTURES, MODELS } from "../helpers.js";

const TEXT = path.join(FIXTURES, "text", "tinystories.txt");

test("eval refuses --limit and --data-dir without --tasks, and --tokens without --text", async () => {
  const cases: [Parameters<typeof evaluate>[1], RegExp][] = [
    [{ text: TEXT, limit: 5 }, /--limit has no effect without --tasks a,b .*\n {2}hint: add --tasks a,b, or leave --limit out/],
    [{ text: TEXT, limit: 5, dataDir: FIXTURES }, /--limit and --data-dir have no effect without --tasks a,b/],
    [{ tasks: ["arc-easy"], tokens: 100 }, /--tokens has no effect without --text FILE .*\n {2}hint: add --text FILE, or leave --tokens out/],
  ];
  for (const [opts, re] of cases)
    await assert.rejects(evaluate(path.join(MODELS, "no-such-model"), { ...opts, progress: null }), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message), `${JSON.stringify(opts)} → ${re}`);
});
