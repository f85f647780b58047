/** Commands that write a model check the disk first (MHA2MLA_TEST_FREE_BYTES stands in for a full disk). */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { convert } from "../../src/convert/pipeline.js";
import { convertDeepseek } from "../../src/deepseek/export.js";
import { exportDeepseek } from "../../src/deepseek/fromMla.js";
import { synth } from "../../src/synth/synth.js";
import { MlaError } from "../../src/errors.js";
import { freeBytes, requireRoom, virtualFsFolder } from "../../src/io/diskRoom.js";
import { requireWritableParent } from "../../src/io/atomicDir.js";
import { checkJsonTarget } from "../../src/cli/output.js";
import { MODELS, tmpDir } from "../helpers.js";

const full = (what: RegExp) => (e: unknown) => e instanceof MlaError && what.test(e.message) && /takes about .* [kMG]B and the disk of .* has 1\.0 kB free/.test(e.message) && /hint: free disk space/.test(e.message);

test("a full disk is refused before the work: convert (both formats), export, synth; nothing is written", async () => {
  const dir = tmpDir();
  const mla = (await convert(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, ropeStrategy: "uniform", ropeDisjoint: true, out: path.join(dir, "mla"), progress: null, device: "cpu" })).out!;
  process.env["MHA2MLA_TEST_FREE_BYTES"] = "1000";
  try {
    await assert.rejects(convert(path.join(MODELS, "stories260K"), { rank: 4, ropePairs: 1, out: path.join(dir, "a"), progress: null }), full(/the converted model/));
    await assert.rejects(convertDeepseek(path.join(MODELS, "stories260K"), { rank: 4, ropePairs: 1, out: path.join(dir, "b"), progress: null }), full(/the converted model/));
    await assert.rejects(exportDeepseek(mla, { out: path.join(dir, "c"), progress: null }), full(/the exported model/));
    await assert.rejects(synth({ arch: "llama2-7b", out: path.join(dir, "d"), progress: null }), full(/the synth checkpoint \(llama2-7b\)/));
    for (const n of ["a", "b", "c", "d"]) assert.ok(!fs.existsSync(path.join(dir, n)), `${n}: nothing written`);
    assert.deepEqual(fs.readdirSync(dir).filter((f) => f.startsWith(".")), [], "no temporary folders left");
  } finally {
    delete process.env["MHA2MLA_TEST_FREE_BYTES"];
  }
});

test("freeBytes reads the nearest existing folder of a path not made yet; requireRoom passes where there is room", () => {
  const free = freeBytes(path.join(tmpDir(), "not", "yet", "made"));
  assert.ok(free === null || free > 0);
  assert.doesNotThrow(() => requireRoom(path.join(tmpDir(), "x"), 1, "one byte"));
});

test("a path on a virtual file system (/proc, /sys) is refused as such before the work, not read as a full disk or a missing folder", { skip: process.platform !== "linux" || !fs.existsSync("/proc/self") ? "needs Linux's /proc" : false }, async () => {
  assert.equal(virtualFsFolder("/proc/x/y"), "/proc");
  assert.equal(virtualFsFolder(tmpDir()), null);
  const virtual = (e: unknown) => e instanceof MlaError && e.code === "IO" && /\/proc is not on a disk \(a virtual file system/.test(e.message) && /hint: choose a path on a disk/.test(e.message);
  assert.throws(() => requireRoom("/proc/x", 1, "one byte"), virtual);
  assert.throws(() => requireWritableParent("/proc/x"), virtual);
  assert.throws(() => checkJsonTarget("/proc/e.json"), virtual);
  await assert.rejects(convert(path.join(MODELS, "stories260K"), { rank: 4, ropePairs: 1, ropeStrategy: "uniform", out: "/proc/mha2mla-test", progress: null, device: "cpu" }), virtual);
});
