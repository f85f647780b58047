/**
 * `--json FILE` replaces only an earlier result (src/cli/output.ts): every command's real result is
 * recognized as one, so re-running a command over its own file works, and JSON that is not one (a
 * package.json, a tsconfig, a task's data, a vocabulary) is refused and left as it was.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { isEarlierResult } from "../../src/cli/output.js";
import { FIXTURES, ROOT, tmpDir } from "../helpers.js";

const MAIN = path.join(ROOT, "dist", "src", "cli", "main.js");
const TEXT = path.join(FIXTURES, "text", "tinystories.txt");

function cli(args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: "utf8", cwd: ROOT });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

test("every command's --json result is an earlier result that a re-run may replace", () => {
  const dir = tmpDir();
  const mla = path.join(dir, "mla");
  const runs: [string, string[]][] = [
    ["inspect", ["inspect", "stories260K"]],
    ["eval", ["eval", "stories260K", "--text", TEXT, "--tokens", "200", "--ctx", "64"]],
    ["convert", ["convert", "stories260K", "--rank", "4", "--rope-pairs", "1", "--calib", TEXT, "--out", mla]],
    ["convert --format deepseek", ["convert", "stories260K", "--format", "deepseek", "--rank", "8", "--out", path.join(dir, "ds")]],
    ["convert, disjoint rope", ["convert", "stories260K", "--rank", "2", "--rope-pairs", "1", "--rope-strategy", "uniform", "--rope-disjoint", "--out", path.join(dir, "mla1")]],
    ["export", ["export", path.join(dir, "mla1"), "--format", "deepseek", "--out", path.join(dir, "ex")]],
    ["finetune", ["finetune", mla, "--data", TEXT, "--tokens", "512", "--seq", "32", "--batch", "2", "--out", path.join(dir, "ft")]],
    ["synth", ["synth", "--arch", "llama2-7b", "--layers", "1", "--dtype", "bf16", "--out", path.join(dir, "syn")]],
  ];
  for (const [name, words] of runs) {
    const target = path.join(dir, `${name.replace(/\W+/g, "-")}.json`);
    const first = cli([...words, "--json", target]);
    assert.equal(first.code, 0, `${name}: ${first.stderr}`);
    assert.ok(isEarlierResult(JSON.parse(fs.readFileSync(target, "utf8"))), `${name}: its result reads as an earlier result`);
  }
  // A re-run over its own result (inspect: cheap, and the check is the same for every command).
  assert.equal(cli(["inspect", "stories260K", "--json", path.join(dir, "inspect.json")]).code, 0);
});

test("--json refuses JSON files that are not an earlier result, before any work, and leaves them as they were", () => {
  const dir = tmpDir();
  const files: [string, unknown][] = [
    ["package.json", { name: "my-project", version: "1.0.0", scripts: { test: "node --test" } }],
    ["tsconfig.json", { compilerOptions: { strict: true } }],
    ["piqa.test.json", [{ goal: "g", sol1: "a", sol2: "b", label: 0 }]],
    ["vocab.json", { hello: 0, world: 1 }],
    ["result.json", { nll: 1 }],
  ];
  for (const [name, value] of files) {
    const f = path.join(dir, name);
    fs.writeFileSync(f, JSON.stringify(value));
    const before = fs.readFileSync(f);
    const r = cli(["inspect", "stories260K", "--json", f]);
    assert.equal(r.code, 1, name);
    assert.match(r.stderr, /exists and is JSON, but not a result this tool wrote \(eval, inspect, convert, export, finetune or synth\): --json replaces only an earlier result\n  hint: choose a new file name/, name);
    assert.deepEqual(fs.readFileSync(f), before, `${name} left as it was`);
  }
});

test("--json at or inside the --out folder is refused before any work (the folder is written whole: the result was lost after the work, and the command failed)", () => {
  const dir = tmpDir();
  const out = path.join(dir, "m");
  for (const json of [out, path.join(out, "config.json"), path.join(out, "result.json")]) {
    const r = cli(["convert", "stories260K", "--rank", "4", "--rope-pairs", "1", "--calib", TEXT, "--out", out, "--json", json]);
    assert.equal(r.code, 1, json);
    assert.match(r.stderr, /^error: --json \S+ is (inside )?--out \S+, the folder this command writes\n  hint: write the result beside it, e\.g\. --json \S+m\.json/, json);
    assert.equal(fs.existsSync(out), false, "nothing written");
  }
});
