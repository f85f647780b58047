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
import { convert } from "../../src/convert/pipeline.js";
import { convertDeepseek } from "../../src/deepseek/export.js";
import { exportDeepseek } from "../../src/deepseek/fromMla.js";
import { AS_UNPRIVILEGED, FIXTURES, lockedFolder, MODELS, NO_UNPRIVILEGED, ROOT, tmpDir } from "../helpers.js";

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

test("--json at an empty existing file (touch, a truncating redirection) replaces it with the result (refused as \"not JSON\"); a non-empty file that is not JSON, or an empty run record, is still refused", () => {
  const dir = tmpDir();
  const empty = path.join(dir, "inspect.json");
  fs.writeFileSync(empty, "");
  const r = cli(["inspect", "stories260K", "--json", empty]);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(isEarlierResult(JSON.parse(fs.readFileSync(empty, "utf8"))), "the result was written over the empty file");
  const blank = path.join(dir, "blank.json");
  fs.writeFileSync(blank, "\n");
  const refused = cli(["inspect", "stories260K", "--json", blank]);
  assert.equal(refused.code, 1);
  assert.equal(refused.stderr, `error: --json ${blank} exists and is not JSON: --json replaces only an earlier result\n  hint: choose a new file name for --json, or move that file away first\n`);
  assert.equal(fs.readFileSync(blank, "utf8"), "\n", "left as it was");
  // An empty record a run resumes from is still that run's: refused by its name, kept.
  const record = path.join(dir, "run", "finetune.json");
  fs.mkdirSync(path.dirname(record));
  fs.writeFileSync(record, "");
  assert.match(cli(["inspect", "stories260K", "--json", record]).stderr, /exists and is the record a fine-tuning run, pipeline or study resumes from/);
  assert.equal(fs.statSync(record).size, 0);
});

test("--json at the --out folder, or at a file the command writes there (given or default --out), is refused before any work; another name inside it is written after the folder", () => {
  const dir = tmpDir();
  const out = path.join(dir, "m");
  const convert = (...extra: string[]) => spawnSync(process.execPath, [MAIN, "convert", "stories260K", "--rank", "4", "--rope-pairs", "1", "--calib", TEXT, ...extra], { encoding: "utf8", cwd: dir });
  for (const json of [out, path.join(out, "config.json"), path.join(out, "mla_conversion.json"), path.join(out, "model.safetensors"), path.join(out, "model-00001-of-00002.safetensors")]) {
    const r = convert("--out", out, "--json", json);
    assert.equal(r.status, 1, json);
    assert.match(r.stderr, /^error: --json \S+ is (--out \S+|one of the files this command writes in --out \S+)\n  hint: write the result beside it or under another name, e\.g\. --json \S+(m\.json|result\.json)/, json);
    assert.equal(fs.existsSync(out), false, "nothing written");
  }
  // Without --out: the default folder, ./stories260K-mla-r4.
  const byDefault = convert("--json", path.join("stories260K-mla-r4", "config.json"));
  assert.equal(byDefault.status, 1, byDefault.stderr);
  assert.match(byDefault.stderr, /one of the files this command writes in --out \S+stories260K-mla-r4/);
  assert.equal(fs.existsSync(path.join(dir, "stories260K-mla-r4")), false);
  // Another name inside the folder: the result lands there, after the folder.
  const beside = convert("--out", out, "--json", path.join(out, "result.json"));
  assert.equal(beside.status, 0, beside.stderr);
  assert.ok(isEarlierResult(JSON.parse(fs.readFileSync(path.join(out, "result.json"), "utf8"))));
});

test("convert (both formats) and export --json name what they share alike: the evaluation's nll_delta and ppl_change_percent, the deepseek_v3 widths and kvPerToken.changePercent (docs/formats.md)", async () => {
  const dir = tmpDir();
  const src = path.join(MODELS, "stories260K");
  const common = { evalText: TEXT, evalTokens: 200, evalCtx: 64, progress: null, device: "cpu" as const };
  // What --json prints: the result as JSON.
  const json = (r: unknown) => JSON.parse(JSON.stringify(r)) as Record<string, any>;
  const ours = json(await convert(src, { rank: 2, ropePairs: 1, ropeStrategy: "uniform", ropeDisjoint: true, out: path.join(dir, "mla"), ...common }));
  const ds = json(await convertDeepseek(src, { rank: 2, ropePairs: 1, out: path.join(dir, "ds"), ...common }));
  const ex = json(await exportDeepseek(path.join(dir, "mla"), { out: path.join(dir, "ex"), ...common }));
  const widths = ["out", "ropeDim", "kvLoraRank", "nopeDim", "ropeTheta", "spacing", "kvPerToken", "layers", "eval", "latentNormError"];
  assert.deepEqual(Object.keys(ds), [...widths.slice(0, -2), "energy", ...widths.slice(-2)], "convert --format deepseek: energy of its factorization besides");
  assert.deepEqual(Object.keys(ex), widths);
  for (const [name, r] of [["convert --format deepseek", ds], ["export", ex]] as const) {
    const { before, after, changePercent } = r.kvPerToken;
    assert.ok(Math.abs(changePercent - (100 * (after - before)) / before) < 1e-9, name);
    assert.deepEqual(Object.keys(r.eval), ["text", "tokens", "ctx", "before", "after", "nll_delta", "ppl_change_percent"], name);
    assert.ok(Math.abs(r.eval.nll_delta - (r.eval.after - r.eval.before)) < 1e-12, name);
    assert.ok(Math.abs(r.eval.ppl_change_percent - 100 * (Math.exp(r.eval.nll_delta) - 1)) < 1e-6, name);
    // The keys the deepseek evaluation shares with our format's report mean the same there.
    for (const k of ["text", "tokens", "ctx"]) assert.equal(r.eval[k], ours.report[k], `${name}: ${k}`);
  }
  assert.ok(Math.abs(ours.report.ppl_change_percent - 100 * (Math.exp(ours.report.nll_delta) - 1)) < 1e-6);
  assert.equal(ex.eval.before, ours.report.after.nll, "export's source is our conversion");
});

test("--json in a folder that cannot be written is refused before any work (convert had written its model, then exited 1 at the JSON)", { skip: AS_UNPRIVILEGED === null ? NO_UNPRIVILEGED : false }, () => {
  const { dir, locked, node } = lockedFolder();
  const out = path.join(dir, "mla");
  const [cmd, ...pre] = node;
  const r = spawnSync(cmd!, [...pre, MAIN, "convert", "stories260K", "--rank", "4", "--rope-pairs", "1", "--out", out, "--json", path.join(locked, "sub", "c.json")], { encoding: "utf8", cwd: ROOT });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /^error: --json \S+c\.json: cannot write in \S+locked: permission denied\n {2}hint: /m);
  assert.ok(!fs.existsSync(out), "no model written");
});
