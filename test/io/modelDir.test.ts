import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { resolveModel } from "../../src/io/modelDir.js";
import { AS_UNPRIVILEGED, FIXTURES, MODELS, NO_UNPRIVILEGED, ROOT, tmpDir } from "../helpers.js";

function fakeCache(root: string, hubId: string, rev: string, withRef: boolean): string {
  const repo = path.join(root, "models--" + hubId.replace("/", "--"));
  const snap = path.join(repo, "snapshots", rev);
  fs.mkdirSync(snap, { recursive: true });
  fs.copyFileSync(path.join(MODELS, "stories260K", "config.json"), path.join(snap, "config.json"));
  if (withRef) {
    fs.mkdirSync(path.join(repo, "refs"), { recursive: true });
    fs.writeFileSync(path.join(repo, "refs", "main"), rev + "\n");
  }
  return snap;
}

test("a folder path resolves to itself; bundled names resolve to fixtures", () => {
  assert.equal(resolveModel(path.join(MODELS, "stories260K")).source, "path");
  assert.equal(resolveModel("stories260K").source, "bundled");
});

test("aliases and hub ids resolve through refs/main in HF_HUB_CACHE and HF_HOME/hub", () => {
  const cache = tmpDir();
  const snap = fakeCache(cache, "meta-llama/Llama-2-7b-hf", "abc123", true);
  fakeCache(cache, "meta-llama/Llama-2-7b-hf", "old999", false);
  assert.deepEqual(resolveModel("llama2-7b", { HF_HUB_CACHE: cache }), { dir: snap, source: "meta-llama/Llama-2-7b-hf" });
  const home = tmpDir();
  const snap2 = fakeCache(path.join(home, "hub"), "HuggingFaceTB/SmolLM-135M", "r1", false);
  assert.equal(resolveModel("smollm-135m", { HF_HOME: home }).dir, snap2);
  assert.equal(resolveModel("HuggingFaceTB/SmolLM-135M", { HF_HOME: home }).dir, snap2);
});

test("a miss lists where it looked and says nothing is downloaded", () => {
  const cache = tmpDir();
  assert.throws(
    () => resolveModel("llama3-8b", { HF_HUB_CACHE: cache, HOME: cache }),
    (e: Error) => e instanceof MlaError && e.code === "NOT_FOUND" && e.message.includes("models--meta-llama--Meta-Llama-3-8B") && e.message.includes(cache) && /nothing is downloaded/.test(e.message),
  );
});

test("a folder without config.json is refused", () => {
  assert.throws(() => resolveModel(tmpDir()), (e: Error) => e instanceof MlaError && /has no config\.json/.test(e.message));
});

test("a folder of this tool's that holds models, or a fine-tune with no model yet, is named in the hint", () => {
  const refusedWith = (dir: string, hint: RegExp) =>
    assert.throws(() => resolveModel(dir), (e: Error) => e instanceof MlaError && e.code === "NOT_FOUND" && e.message.startsWith(`model folder ${dir} has no config.json\n  hint: `) && hint.test(e.message));
  // A pipeline folder: the models are in mla/, finetune/ (and deepseek/ with --export).
  const pipe = tmpDir();
  fs.writeFileSync(path.join(pipe, "pipeline.json"), "{}");
  for (const sub of ["mla", "finetune"]) {
    fs.mkdirSync(path.join(pipe, sub));
    fs.copyFileSync(path.join(MODELS, "stories260K", "config.json"), path.join(pipe, sub, "config.json"));
  }
  refusedWith(pipe, new RegExp(`hint: it is a pipeline folder; its models: ${path.join(pipe, "finetune")}, ${path.join(pipe, "mla")}; pass one of them$`));
  // A study folder says so too; any other folder lists its model folders.
  fs.renameSync(path.join(pipe, "pipeline.json"), path.join(pipe, "study.json"));
  refusedWith(pipe, /hint: it is a study folder; its models: /);
  fs.rmSync(path.join(pipe, "study.json"));
  refusedWith(pipe, /hint: model folders inside it: /);
  // A fine-tuning run stopped before it wrote its model: checkpoint/ and train_log.jsonl only.
  const run = tmpDir();
  fs.mkdirSync(path.join(run, "checkpoint"));
  fs.writeFileSync(path.join(run, "train_log.jsonl"), "");
  refusedWith(run, /hint: it is a fine-tuning run that has not written its model yet: finish it with `mha2mla finetune MODEL --data … --out .* --resume`/);
  // An empty folder keeps the general hint.
  refusedWith(tmpDir(), /hint: point at a Hugging Face model folder \(config\.json, \*\.safetensors, tokenizer\.json\)$/);
});

test("a file, a path that does not exist and a bundled name in other case: each says what it is", () => {
  assert.throws(() => resolveModel(path.join(FIXTURES, "text", "tinystories.txt")), /tinystories\.txt is a file, not a model folder[\s\S]*hint: pass the folder holding config\.json/);
  for (const spec of ["./no-such-folder", "../no-such-folder", "/no/such/folder"]) assert.throws(() => resolveModel(spec), (e: unknown) => e instanceof MlaError && e.code === "NOT_FOUND" && /^no model folder at /.test(e.message) && !/huggingface-cli/.test(e.message), spec);
  assert.equal(resolveModel("STORIES260k").dir, resolveModel("stories260K").dir);
});

test("a model folder this user may not enter is named with the permission it lacks (lstat's EACCES had been an internal error)", { skip: AS_UNPRIVILEGED === null ? NO_UNPRIVILEGED : false }, () => {
  const parent = tmpDir();
  fs.chmodSync(parent, 0o755);
  const dir = path.join(parent, "model");
  fs.cpSync(path.join(MODELS, "stories260K"), dir, { recursive: true });
  fs.chmodSync(dir, 0o700);
  if (AS_UNPRIVILEGED!.length === 0) fs.chmodSync(dir, 0o000); // the owner enters a 0700 folder
  const [cmd, ...pre] = [...AS_UNPRIVILEGED!, process.execPath];
  const r = spawnSync(cmd!, [...pre, path.join(ROOT, "dist", "src", "cli", "main.js"), "inspect", dir], { encoding: "utf8", cwd: ROOT });
  fs.chmodSync(dir, 0o700);
  assert.equal(r.status, 1, r.stderr);
  assert.equal(r.stderr, `error: cannot read the model folder ${dir}: permission denied\n  hint: check the path and its permissions\n`);
});
