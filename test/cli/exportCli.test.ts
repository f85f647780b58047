// The CLI's plain forms, as README gives them: export without an evaluation, convert --dry-run. (An
// --eval-ctx default on the CLI once made every export without --eval-text refuse itself.) A --device
// that cannot run is refused before the export writes a layer.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { convert } from "../../src/convert/pipeline.js";
import { FIXTURES, MODELS, ROOT, tmpDir } from "../helpers.js";

const MAIN = path.join(ROOT, "dist", "src", "cli", "main.js");

test("export MODEL --format deepseek --out DIR writes the folder without --eval-text", async () => {
  const mla = path.join(tmpDir(), "mla");
  await convert(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, ropeStrategy: "uniform", ropeDisjoint: true, out: mla, progress: null, device: "cpu" });
  const out = path.join(tmpDir(), "ds");
  const r = spawnSync(process.execPath, [MAIN, "export", mla, "--format", "deepseek", "--out", out, "--device", "cpu"], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8")).model_type, "deepseek_v3");
  const noText = spawnSync(process.execPath, [MAIN, "export", mla, "--format", "deepseek", "--out", path.join(tmpDir(), "x"), "--eval-tokens", "100"], { encoding: "utf8" });
  assert.equal(noText.status, 1);
  // Refused before the export's summary and serving warnings: printed first, they read as if it had started.
  assert.match(noText.stderr, /^error: --eval-tokens has no effect without --eval-text FILE/);
  const onInput = spawnSync(process.execPath, [MAIN, "export", mla, "--format", "deepseek", "--out", mla], { encoding: "utf8" });
  assert.equal(onInput.status, 1);
  assert.match(onInput.stderr, /^error: --out .* is the input model folder/);
  assert.match(r.stderr, /^export: shared rope key of/m, "a run that goes ahead says its summary");
});

test("convert --dry-run refuses what the real run would (a missing --eval-text) and warns of an existing --out", () => {
  const model = path.join(MODELS, "stories260K");
  const missing = spawnSync(process.execPath, [MAIN, "convert", model, "--rank", "4", "--dry-run", "--eval-text", path.join(tmpDir(), "none.txt")], { encoding: "utf8" });
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /none\.txt/);
  const out = tmpDir();
  const exists = spawnSync(process.execPath, [MAIN, "convert", model, "--rank", "4", "--dry-run", "--out", out], { encoding: "utf8" });
  assert.equal(exists.status, 0, exists.stderr);
  assert.match(exists.stderr, /exists: the run would need --force/);
  assert.deepEqual(fs.readdirSync(out), [], "a dry run writes nothing");
});

test("export --device cuda where CUDA cannot load is refused before a layer is written (--eval-text, --no-attention-bias)", async () => {
  const mla = path.join(tmpDir(), "mla");
  await convert(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, ropeStrategy: "uniform", ropeDisjoint: true, out: mla, progress: null, device: "cpu" });
  const text = path.join(FIXTURES, "text", "tinystories.txt");
  // A CUDA library that is not there, on any machine.
  const env = { ...process.env, MHA2MLA_CUDA_LIB: path.join(tmpDir(), "libmla_cuda.so") };
  for (const uses of [["--eval-text", text], ["--no-attention-bias", "--calib", text]]) {
    const parent = tmpDir();
    const r = spawnSync(process.execPath, [MAIN, "export", mla, "--format", "deepseek", "--out", path.join(parent, "ds"), "--device", "cuda", ...uses], { encoding: "utf8", env });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /^error: MHA2MLA_CUDA_LIB=\S+libmla_cuda\.so: no such file/m);
    assert.doesNotMatch(r.stderr, /^export \d+\/\d+ layers/m, `${uses[0]}: no layer was written`);
    assert.deepEqual(fs.readdirSync(parent), [], "no output folder, whole or temporary");
  }
});
