/** `eval` on the command line: --label lives in the JSON result only, so without --json it is refused (it was dropped unseen). */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { test } from "node:test";
import fs from "node:fs";
import { FIXTURES, pastVocabModel, pastVocabPiqa, ROOT, tmpDir } from "../helpers.js";

const MAIN = path.join(ROOT, "dist", "src", "cli", "main.js");
const TEXT = path.join(FIXTURES, "text", "tinystories_25k.txt");

test("--label without --json is refused before any scoring; with --json it names the run", () => {
  const run = (...extra: string[]) => spawnSync(process.execPath, [MAIN, "eval", "stories260K", "--text", TEXT, "--tokens", "100", "--device", "reference", ...extra], { encoding: "utf8" });
  const bare = run("--label", "mine");
  assert.equal(bare.status, 1, bare.stderr);
  assert.equal(bare.stderr, "error: --label has no effect without --json FILE (it names the run in the JSON result, which report reads)\n  hint: add --json FILE, or leave --label out\n");
  const json = run("--label", "mine", "--json");
  assert.equal(json.status, 0, json.stderr);
  assert.equal(JSON.parse(json.stdout).label, "mine");
});

test("a .jsonl whose documents' texts are all empty is refused naming the file (joined, their blank lines were scored as text), as --calib and --data name theirs", () => {
  const file = path.join(tmpDir(), "empty.jsonl");
  fs.writeFileSync(file, '{"text": ""}\n{"text": ""}\n');
  const r = spawnSync(process.execPath, [MAIN, "eval", "stories260K", "--text", file, "--device", "reference"], { encoding: "utf8" });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^error: \S*empty\.jsonl: every document's text is empty\n {2}hint: /m);
});

test("--text /dev/stdin: a pipe is refused, naming it, with a way round (it had been called empty); text redirected from a file is read", () => {
  const args = [MAIN, "eval", "stories260K", "--text", "/dev/stdin", "--tokens", "100", "--ctx", "64", "--device", "reference"];
  const piped = spawnSync(process.execPath, args, { encoding: "utf8", input: fs.readFileSync(TEXT, "utf8") });
  assert.equal(piped.status, 1, piped.stderr);
  assert.equal(piped.stderr, "error: /dev/stdin is a pipe, not a text file\n  hint: save the text to a file first (e.g. `… > text.txt`) and pass that file\n");
  const fd = fs.openSync(TEXT, "r");
  try {
    const redirected = spawnSync(process.execPath, args, { encoding: "utf8", stdio: [fd, "pipe", "pipe"] });
    assert.equal(redirected.status, 0, redirected.stderr);
  } finally {
    fs.closeSync(fd);
  }
});

test("a tokenizer that gives ids past the model's vocabulary is named as the folder's mismatch (it blamed the caller's ids)", () => {
  const dir = pastVocabModel();
  const text = path.join(dir, "..", "t.txt");
  fs.writeFileSync(text, "Once upon a time <zz> there was a cat.\n");
  const r = spawnSync(process.execPath, [MAIN, "eval", dir, "--text", text, "--device", "reference"], { encoding: "utf8" });
  assert.equal(r.status, 1, r.stderr);
  assert.equal(r.stderr, `error: the model's tokenizer gives id 600 for ${text}, past its vocabulary of 512 (vocab_size in ${path.join(dir, "config.json")})\n  hint: the tokenizer and the model do not match: put the model's own tokenizer.json beside its weights\n`);
});

test("a task item whose ids pass the model's vocabulary is refused, naming its file and item, before the perplexity is scored (the embedding found it after the perplexity, naming no file)", () => {
  const dir = pastVocabModel();
  const data = pastVocabPiqa();
  const r = spawnSync(process.execPath, [MAIN, "eval", dir, "--text", TEXT, "--tasks", "piqa", "--data-dir", data, "--device", "reference"], { encoding: "utf8" });
  assert.equal(r.status, 1, r.stderr);
  assert.equal(r.stderr, `error: the model's tokenizer gives id 600 for ${path.join(data, "piqa.test.json")} item 0, past its vocabulary of 512 (vocab_size in ${path.join(dir, "config.json")})\n  hint: the tokenizer and the model do not match: put the model's own tokenizer.json beside its weights\n`);
});
