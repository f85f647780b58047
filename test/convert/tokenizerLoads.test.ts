// convert --eval-text X --calib Y reads the source's tokenizer in four places (the evaluation's early
// check, the calibration windows, the model loaded for calibration, the evaluation of the original):
// they share one build, and the converted folder's copy is built once for its evaluation.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { convert } from "../../src/convert/pipeline.js";
import { tokenizersBuilt } from "../../src/io/tokenizer.js";
import { FIXTURES, MODELS, tmpDir } from "../helpers.js";

const TEXT = path.join(FIXTURES, "text", "tinystories.txt");

test("convert with --eval-text and --calib builds the source's tokenizer once, and the output's once", async () => {
  // A folder of its own: no earlier load in this process has built its tokenizer.
  const src = path.join(tmpDir(), "model");
  fs.cpSync(path.join(MODELS, "stories260K"), src, { recursive: true });
  const before = tokenizersBuilt();
  const r = await convert(src, { rank: 2, ropeStrategy: "2-norm", calib: TEXT, calibSamples: 4, calibLen: 32, evalText: TEXT, device: "cpu", out: path.join(tmpDir(), "out"), progress: null });
  assert.ok(r.report, "evaluated before and after");
  assert.ok(r.timings["calibration_s"] !== undefined, "calibrated on the original model");
  assert.equal(tokenizersBuilt() - before, 2, "one build for the source, one for the converted folder");
});
