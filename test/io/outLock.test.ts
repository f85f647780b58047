/**
 * withOutLock: calls nested in a locked run pass through, calls side by side exclude each other, a
 * process that exits without unwinding still removes its lock, and the checks that list a run folder
 * do not count the lock as a file of it.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";
import { MlaError } from "../../src/errors.js";
import { refuseForeignFolder } from "../../src/io/atomicDir.js";
import { emptyRunFolder, entriesBesideLock, LOCK_FILE, withOutLock } from "../../src/io/outLock.js";
import { silentLogger } from "../../src/util/log.js";
import { ROOT, tmpDir, writeLock } from "../helpers.js";

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

test("a call into a folder inside one another run holds is refused: another process's lock above (or, for a call nested in this process's run, between), or a call of this process side by side; nesting still passes", async () => {
  const child = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)"]);
  try {
    // Another process's pipeline holds OUT: a fine-tune into OUT/finetune (made or not) is refused, nothing made.
    const out = path.join(tmpDir(), "run");
    fs.mkdirSync(out);
    const lock = writeLock(out, { pid: child.pid!, command: "pipeline", started: "2026-01-02T03:04:05.000Z" });
    for (const create of [true, false])
      await assert.rejects(withOutLock(path.join(out, "finetune"), { ...how, command: "finetune", create }, async () => assert.fail("ran inside the held folder")), (e: unknown) => e instanceof MlaError && e.code === "EXISTS" && e.message.startsWith(`--out ${path.join(out, "finetune")} lies inside ${out}, which is in use by a pipeline run (pid ${child.pid}, started 2026-01-02T03:04:05.000Z) (its lock ${lock})\n  hint: wait for that run to end, or choose an --out outside ${out}`));
    assert.deepEqual(fs.readdirSync(out), [LOCK_FILE]);
    // The mirror: another process's fine-tune holds OUT2/finetune, then this process's pipeline takes OUT2: its phase there is refused.
    const out2 = path.join(tmpDir(), "run");
    fs.mkdirSync(path.join(out2, "finetune"), { recursive: true });
    const inner = writeLock(path.join(out2, "finetune"), { pid: child.pid!, command: "finetune", started: "2026-01-02T03:04:05.000Z" });
    await withOutLock(out2, how, async () => {
      await assert.rejects(withOutLock(path.join(out2, "finetune"), { ...how, command: "finetune" }, async () => assert.fail("ran beside the fine-tune")), (e: unknown) => e instanceof MlaError && e.message.startsWith(`--out ${path.join(out2, "finetune")} is in use by a finetune run (pid ${child.pid}`));
      await assert.rejects(withOutLock(path.join(out2, "finetune", "x"), how, async () => assert.fail("ran inside the fine-tune's folder")), (e: unknown) => e instanceof MlaError && e.message.startsWith(`--out ${path.join(out2, "finetune", "x")} lies inside ${path.join(out2, "finetune")}, which is in use by a finetune run`));
      // Elsewhere inside its own folder, nesting passes as before.
      let ran = false;
      await withOutLock(path.join(out2, "eval"), how, async () => void (ran = true));
      assert.ok(ran);
    });
    assert.ok(fs.existsSync(inner), "the other run's lock is left");
  } finally {
    child.kill();
  }
  // In one process, side by side (not nested): a call into a folder inside one a pending call holds is refused.
  const out = path.join(tmpDir(), "run");
  let release!: () => void;
  const held = withOutLock(out, how, () => new Promise<void>((r) => (release = r)));
  await assert.rejects(withOutLock(path.join(out, "finetune"), { ...how, command: "finetune" }, async () => assert.fail("ran inside the holder's folder")), (e: unknown) => e instanceof MlaError && e.code === "EXISTS" && /lies inside .*, which is in use by another pipeline\(\) call of this process/.test(e.message));
  assert.deepEqual(fs.readdirSync(out), [LOCK_FILE]);
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
