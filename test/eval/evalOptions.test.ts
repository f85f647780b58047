/**
 * `eval`'s option checks, which `pipeline` also makes before its first phase (test/cli/pipelineFlags):
 * a task setting without --tasks, or --tokens without --text, would do nothing and is refused, naming
 * both flags, before the model is loaded.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { evaluate } from "../../src/eval/evaluate.js";
import { FIXTURES, MODELS, SHARED, tmpDir } from "../helpers.js";

const TEXT = path.join(FIXTURES, "text", "tinystories.txt");

test("eval refuses --limit and --data-dir without --tasks, and --tokens and --batch without --text", async () => {
  const cases: [Parameters<typeof evaluate>[1], RegExp][] = [
    [{ text: TEXT, limit: 5 }, /--limit has no effect without --tasks a,b .*\n {2}hint: add --tasks a,b, or leave --limit out/],
    [{ text: TEXT, limit: 5, dataDir: FIXTURES }, /--limit and --data-dir have no effect without --tasks a,b/],
    [{ tasks: ["arc-easy"], tokens: 100 }, /--tokens has no effect without --text FILE .*\n {2}hint: add --text FILE, or leave --tokens out/],
    [{ tasks: ["arc-easy"], batch: 4 }, /--batch has no effect without --text FILE/],
    [{ text: TEXT, batch: 0 }, /--batch 0: the windows scored per forward must be a positive integer/],
  ];
  for (const [opts, re] of cases)
    await assert.rejects(evaluate(path.join(MODELS, "no-such-model"), { ...opts, progress: null }), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message), `${JSON.stringify(opts)} → ${re}`);
});

test("--data-dir naming a task file, not its folder, is refused as a file, with its folder (it was \"FILE/ARC-Easy.test.json does not exist\")", async () => {
  const file = path.join(tmpDir(), "ARC-Easy.test.json");
  fs.writeFileSync(file, "[]");
  await assert.rejects(evaluate(path.join(MODELS, "no-such-model"), { tasks: ["arc-easy"], dataDir: file, progress: null }), (e: unknown) => e instanceof MlaError && e.message === `task data folder ${file} is a file, not a folder\n  hint: pass --data-dir the folder that holds the task files (ARC-*.test.json, piqa.test.json, hellaswag_val_full.txt.bz2, lambada_test.jsonl), e.g. ${path.dirname(file)}`);
});

test("every task's file is parsed before anything is scored: a truncated one is refused up front, not after the perplexity and the tasks before it", async () => {
  const DATA = path.join(SHARED, "data", "eval");
  if (!fs.existsSync(DATA)) return;
  const dir = tmpDir();
  fs.copyFileSync(path.join(DATA, "piqa.test.json"), path.join(dir, "piqa.test.json"));
  fs.writeFileSync(path.join(dir, "hellaswag_val_full.txt.bz2"), fs.readFileSync(path.join(DATA, "hellaswag_val_full.txt.bz2")).subarray(0, 100_000));
  // A model that does not exist: the refusal must come before it is even looked for.
  await assert.rejects(evaluate(path.join(MODELS, "no-such-model"), { text: TEXT, tasks: ["piqa", "hellaswag"], limit: 3, dataDir: dir, progress: null }), (e: unknown) => e instanceof MlaError && /hellaswag_val_full\.txt\.bz2/.test(e.message));
});

test("tasks refuse a model without BOS (items would start with token id 1), and a task named twice is scored once", async () => {
  const DATA = path.join(SHARED, "data", "eval");
  if (!fs.existsSync(DATA)) return;
  const dir = path.join(tmpDir(), "nobos");
  fs.cpSync(path.join(MODELS, "stories260K"), dir, { recursive: true });
  for (const f of ["config.json", "generation_config.json"]) {
    const file = path.join(dir, f);
    if (!fs.existsSync(file)) continue;
    const j = JSON.parse(fs.readFileSync(file, "utf8"));
    delete j.bos_token_id;
    fs.writeFileSync(file, JSON.stringify(j));
  }
  // Named by its folder's config.json, for tasks and a text alike.
  const named = (e: unknown) => e instanceof MlaError && e.message.startsWith(`${path.join(dir, "config.json")} has no bos_token_id\n  hint: scoring (perplexity windows, task items)`);
  await assert.rejects(evaluate(dir, { tasks: ["piqa"], limit: 2, dataDir: DATA, progress: null }), named);
  await assert.rejects(evaluate(dir, { text: path.join(FIXTURES, "text", "tinystories.txt"), progress: null }), named);
  const { parseTaskNames } = await import("../../src/eval/tasks/index.js");
  assert.deepEqual(parseTaskNames("piqa, piqa,arc-easy"), ["piqa", "arc-easy"]);
  // A script's array of names is a clear error, not a TypeError from inside.
  assert.throws(() => parseTaskNames(["arc-easy"] as unknown as string), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && /the task list is an array, not a string\n  hint: pass the names comma-separated/.test(e.message));
});
