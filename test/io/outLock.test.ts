/**
 * withOutLock: calls nested in a locked run pass through, calls side by side exclude each other, a
 * process that exits without unwinding still removes its lock, and the checks that list a run folder
 * do not count the lock as a file of it.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";
import { MlaError } from "../../src/errors.js";
import { refuseForeignFolder } from "../../src/io/atomicDir.js";
import { emptyRunFolder, entriesBesideLock, LOCK_FILE, withOutLock } from "../../src/io/outLock.js";
import { silentLogger } from "../../src/util/log.js";
import { ROOT, tmpDir } from "../helpers.js";

const how = { command: "pipeline", log: silentLogger };

test("a call inside a locked run takes no lock of its own (the folder or one inside it); a call beside it is refused", async () => {
  const out = path.join(tmpDir(), "run");
  const lock = path.join(out, LOCK_FILE);
  await withOutLock(out, how, async () => {
    const before = fs.readFileSync(lock, "utf8");
    await withOutLock(path.join(out, "finetune"), { ...how, command: "finetune" }, async () => {
      assert.ok(!fs.existsSync(path.join(out, "finetune", LOCK_FILE)), "no lock in the inner folder");
      await withOutLock(out, how, async () => {});
    });
    assert.equal(fs.readFileSync(lock, "utf8"), before, "the outer lock stays");
  });
  assert.ok(!fs.existsSync(lock));
  assert.ok(!fs.existsSync(out), "a run that wrote nothing leaves no folder");

  let release!: () => void;
  const held = withOutLock(out, how, () => new Promise<void>((r) => (release = r)));
  await assert.rejects(withOutLock(out, how, async () => assert.fail("ran beside the holder")), (e: unknown) => e instanceof MlaError && e.code === "EXISTS" && /is in use by another pipeline\(\) call of this process/.test(e.message));
  assert.ok(fs.existsSync(lock), "the refused call leaves the holder's lock");
  release();
  await held;
  assert.ok(!fs.existsSync(out));
});

test("a process that exits in the middle of a run (process.exit, a second Ctrl-C) removes its lock", () => {
  const out = path.join(tmpDir(), "run");
  const url = pathToFileURL(path.join(ROOT, "dist", "src", "io", "outLock.js")).href;
  const script = `import { withOutLock } from ${JSON.stringify(url)};\nawait withOutLock(${JSON.stringify(out)}, { command: "study", log: console }, async () => { process.exit(3); });`;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
  assert.equal(r.status, 3, r.stderr);
  assert.deepEqual(fs.readdirSync(out), [], "the folder stays (its run may have written there), its lock is gone");
});

test("the lock is no file of the run folder: not counted, not cleared, not taken for a foreign file", async () => {
  const out = path.join(tmpDir(), "run");
  await withOutLock(out, how, async () => {
    assert.deepEqual(entriesBesideLock(out), []);
    fs.writeFileSync(path.join(out, "old.txt"), "x");
    emptyRunFolder(out, "the run folder");
    assert.deepEqual(fs.readdirSync(out), [LOCK_FILE]);
    refuseForeignFolder(out, true, ["pipeline.json"], "pipeline run"); // empty beside the lock: --force takes it
  });
});
