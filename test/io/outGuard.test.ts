import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { realPath, refuseOutOverInputs } from "../../src/io/outGuard.js";
import { tmpDir } from "../helpers.js";

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
