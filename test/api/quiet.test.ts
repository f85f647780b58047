/**
 * A library called from a script writes nothing to stdout or stderr unless asked: convert (with
 * calibration and its before/after evaluation), evaluate, finetune and convertDeepseek run silent
 * without `logger` and `progress`, and with them their lines go to the sinks given. In a child
 * process, whose two streams are the evidence.
 */
import test from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { FIXTURES, ROOT, tmpDir } from "../helpers.js";

const script = (index: string, text: string, dir: string) => `
import { convert, convertDeepseek, evaluate, finetune } from ${JSON.stringify(index)};
const text = ${JSON.stringify(text)}, dir = ${JSON.stringify(dir)};
async function all(tag, io) {
  const mla = dir + "/mla-" + tag;
  await convert("stories260K", { rank: 4, ropePairs: 1, calib: text, calibSamples: 2, calibLen: 64, evalText: text, evalTokens: 300, out: mla, ...io });
  await evaluate(mla, { text, tokens: 300, ctx: 64, ...io });
  await finetune(mla, { data: [text], out: dir + "/ft-" + tag, seq: 32, batch: 2, tokens: 128, ...io });
  await convertDeepseek("stories260K", { rank: 4, ropePairs: 1, calib: text, calibSamples: 2, calibLen: 64, out: dir + "/ds-" + tag, ...io });
}
await all("quiet", {});
const lines = { info: [], warn: [], progress: [] };
await all("told", { logger: { info: (m) => lines.info.push(m), warn: (m) => lines.warn.push(m) }, progress: { write: (s) => lines.progress.push(s) } });
console.log(JSON.stringify(lines));
`;

test("convert, evaluate, finetune and convertDeepseek print nothing without a logger or progress sink, and use them when given", () => {
  const dir = tmpDir();
  const file = path.join(dir, "run.mjs");
  fs.writeFileSync(file, script(pathToFileURL(path.join(ROOT, "dist", "src", "index.js")).href, path.join(FIXTURES, "text", "tinystories.txt"), dir));
  const r = spawnSync(process.execPath, [file], { cwd: dir, encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, "", "nothing on stderr");
  const out = r.stdout.trim().split("\n");
  assert.equal(out.length, 1, `only the script's own line on stdout:\n${r.stdout}`);
  const lines = JSON.parse(out[0]!) as { info: string[]; warn: string[]; progress: string[] };
  for (const label of ["calibrate", "convert", "eval", "deepseek"]) assert.ok(lines.progress.some((l) => l.startsWith(label + " ")), `no ${label} progress in ${JSON.stringify(lines.progress)}`);
  assert.ok(lines.progress.some((l) => /^step \d+\/\d+ loss/.test(l)), "no training step line");
  assert.ok(lines.info.some((l) => l.startsWith("device: ")), "the logger hears which device runs, though a quiet call chose it first");
  assert.ok(lines.info.some((l) => l.startsWith("memory plan: ")));
});
