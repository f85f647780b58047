import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { mock, test } from "node:test";
import { convert } from "../../src/convert/pipeline.js";
import { convertDeepseek } from "../../src/deepseek/export.js";
import { exportDeepseek } from "../../src/deepseek/fromMla.js";
import { MlaError } from "../../src/errors.js";
import { realPath, refuseOutOverInputs } from "../../src/io/outGuard.js";
import { synth } from "../../src/synth/synth.js";
import { MODELS, tmpDir } from "../helpers.js";

test("an output that is an input, lies inside an input folder, or holds an input is refused, also through a symbolic link; unrelated and missing inputs pass", () => {
  const root = tmpDir();
  const model = path.join(root, "models", "m");
  fs.mkdirSync(model, { recursive: true });
  const text = path.join(root, "texts", "calib.txt");
  fs.mkdirSync(path.dirname(text));
  fs.writeFileSync(text, "x");
  fs.symlinkSync(path.join(root, "models"), path.join(root, "alias"));
  const inputs = [{ name: "the input model folder", path: model }, { name: "--calib", path: text }, { name: "--eval-text", path: undefined }, { name: "--data", path: path.join(root, "missing.txt") }];
  const refused = (out: string, re: RegExp) => assert.throws(() => refuseOutOverInputs("--out", out, inputs), (e: Error) => e instanceof MlaError && re.test(e.message) && /hint:/.test(e.message), out);
  refused(model, /--out .* is the input model folder \(/);
  refused(path.join(model, "a", "b"), /is the input model folder or inside it/);
  refused(path.join(root, "models"), /holds the input model folder/);
  refused(root, /holds the input model folder/);
  refused(path.join(root, "alias", "m", "new"), /inside it/);
  refused(path.join(root, "alias"), /holds the input model folder/);
  refused(text, /is --calib/);
  refused(path.join(root, "texts"), /holds --calib/);
  for (const ok of [path.join(root, "out"), path.join(root, "models", "m2"), path.join(root, "models", "m-mla"), path.join(root, "texts", "calib.txt.d")]) assert.doesNotThrow(() => refuseOutOverInputs("--out", ok, inputs), ok);
  assert.equal(realPath(path.join(root, "alias", "m", "x", "y")), path.join(fs.realpathSync(model), "x", "y"));
  // The working folder, or one above it, is never an output (--out . --force would empty it).
  const cwd = process.cwd();
  try {
    process.chdir(path.join(root, "texts"));
    refused(".", /is the working folder or holds it/);
    refused("..", /is the working folder or holds it/);
    assert.doesNotThrow(() => refuseOutOverInputs("--out", "./result", []));
  } finally {
    process.chdir(cwd);
  }
});

/**
 * How many times `work` runs the guard: each run reads the working folder once, from
 * refuseOutOverInputs itself (paths here are absolute, so path.resolve reads it nowhere else).
 */
async function guardRuns(work: () => Promise<unknown>): Promise<number> {
  let runs = 0;
  const cwd = process.cwd.bind(process);
  const m = mock.method(process, "cwd", () => {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = Infinity;
    if (/\brefuseOutOverInputs\b/.test(new Error().stack ?? "")) runs++;
    Error.stackTraceLimit = limit;
    return cwd();
  });
  try {
    await work();
  } finally {
    m.mock.restore();
  }
  return runs;
}

test("convert, convert --format deepseek, export and synth run the guard once each (the CLI adds none for --out), and still refuse the working folder from the library", async () => {
  const root = tmpDir();
  const model = path.join(MODELS, "stories260K");
  const mla = path.join(root, "mla");
  assert.equal(await guardRuns(() => convert(model, { rank: 2, ropePairs: 1, ropeStrategy: "uniform", ropeDisjoint: true, out: mla, progress: null, device: "cpu" })), 1, "convert");
  assert.equal(await guardRuns(() => convertDeepseek(model, { rank: 2, ropePairs: 1, out: path.join(root, "ds"), progress: null, device: "cpu" })), 1, "convert --format deepseek");
  assert.equal(await guardRuns(() => exportDeepseek(mla, { out: path.join(root, "exported"), progress: null })), 1, "export");
  assert.equal(await guardRuns(() => synth({ arch: "smollm-135m", layers: 1, out: path.join(root, "synth"), progress: null })), 1, "synth");
  const cwd = process.cwd();
  try {
    process.chdir(root);
    const workingFolder = (e: unknown) => e instanceof MlaError && /--out \S+ is the working folder or holds it/.test(e.message);
    await assert.rejects(convert(model, { rank: 2, out: ".", force: true, progress: null }), workingFolder);
    await assert.rejects(synth({ arch: "smollm-135m", layers: 1, out: ".", force: true, progress: null }), workingFolder);
    assert.ok(fs.existsSync(mla), "nothing in the working folder was touched");
  } finally {
    process.chdir(cwd);
  }
});
