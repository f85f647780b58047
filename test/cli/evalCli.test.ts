/** `eval` on the command line: --label lives in the JSON result only, so without --json it is refused (it was dropped unseen). */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { test } from "node:test";
import fs from "node:fs";
import { FIXTURES, ROOT, tmpDir } from "../helpers.js";

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
