/**
 * evaluate's tokenizing of a long --text: encodeLong's ids, which are tokenizeForEval's, with a progress
 * line, and a stop (the CLI's Ctrl-C aborts the signal) ending it with INTERRUPTED.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { evalTokens, evaluate } from "../../src/eval/evaluate.js";
import { tokenizeForEval } from "../../src/eval/perplexity.js";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { FIXTURES, MODELS, tmpDir } from "../helpers.js";

const stories = loadTokenizer(path.join(MODELS, "stories260K"));
const text = fs.readFileSync(path.join(FIXTURES, "text", "tinystories_25k.txt"), "utf8").repeat(45); // ~1.1 MB

test("a --text over a million characters is tokenized in pieces with a progress line: the ids of one encode", async () => {
  assert.ok(text.length > 1_000_000);
  const lines: string[] = [];
  const ids = await evalTokens(stories, text, { text: "/data/long.txt" }, { info: (m) => lines.push(m), warn: () => {} });
  assert.deepEqual(ids, tokenizeForEval(stories, text));
  assert.match(lines[0]!, /^tokenizing long\.txt: 1\.1 MB in \d+ piece\(s\)/);
  assert.match(lines[lines.length - 1]!, /^tokenized long\.txt: /);
  // A prefix (--tokens) or a short text is tokenized as before, without a line.
  const quiet: string[] = [];
  assert.deepEqual(await evalTokens(stories, text, { text: "x.txt", tokens: 500 }, { info: (m) => quiet.push(m), warn: () => {} }), tokenizeForEval(stories, text, 500));
  assert.deepEqual(quiet, []);
});

test("an aborted signal stops the tokenizing of a long --text with INTERRUPTED", async () => {
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(evalTokens(stories, text, { text: "long.txt", signal: ac.signal }, { info: () => {}, warn: () => {} }), (e: unknown) => e instanceof MlaError && e.code === "INTERRUPTED");
});

test("a .jsonl --text is scored as its documents' text (a blank line between them), not as JSON", async () => {
  const dir = tmpDir();
  const docs = ["Once upon a time there was a cat.", "Tom had a red ball. He liked to play.", "The sun was warm."];
  const jsonl = path.join(dir, "docs.jsonl"), txt = path.join(dir, "docs.txt");
  fs.writeFileSync(jsonl, docs.map((text) => JSON.stringify({ text })).join("\n") + "\n");
  fs.writeFileSync(txt, docs.join("\n\n"));
  const [a, b] = await Promise.all([jsonl, txt].map((text) => evaluate(path.join(MODELS, "stories260K"), { text, progress: null, device: "cpu" })));
  assert.ok(Number.isFinite(a!.nll) && (a!.tokens ?? 0) > 20, JSON.stringify(a));
  assert.equal(a!.nll, b!.nll);
  assert.equal(a!.tokens, b!.tokens);
  assert.equal(a!.text_hash, b!.text_hash, "the same text scored");
});
