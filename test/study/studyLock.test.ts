/**
 * A study holds its --out for the whole run (OUT/.mha2mla.lock): a second study there at once is
 * refused naming the first (two studies 1.5 s apart interleaved their logs); the study's own runs,
 * inside the folder it holds, lock nothing; the lock is gone when it ends or is stopped. A run's folder
 * another live run holds (a fine-tune started in OUT/mla-L32-trained) is refused before the first run.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { study, type StudyOptions } from "../../src/study/study.js";
import { FIXTURES, lockFiles, loggedSteps, MODELS, tmpDir, writeLock } from "../helpers.js";

const DATA = path.join(FIXTURES, "text", "tinystories_25k.txt");
const base: Omit<StudyOptions, "out"> = { like: path.join(MODELS, "stories260K"), variants: ["mha"], data: DATA, tokens: 4 * 4 * 32, seq: 32, batch: 4, valFraction: 0.05, device: "cpu", progress: null };

test("two studies into one --out at once: one finishes, the other is refused naming it; a stopped study leaves no lock and resumes", async () => {
  const out = path.join(tmpDir(), "study");
  const [a, b] = await Promise.allSettled([study({ ...base, out }), study({ ...base, out })]);
  assert.equal(a.status, "fulfilled", a.status === "rejected" ? String(a.reason) : "");
  assert.equal(b.status, "rejected");
  const e = b.reason as unknown;
  assert.ok(e instanceof MlaError && e.code === "EXISTS", String(e));
  assert.match(e.message, /--out .*study is in use by another study\(\) call of this process \(started [^)]+\)\n  hint: wait for that run to end/);
  assert.equal(a.value.rows.length, 1);
  assert.deepEqual(loggedSteps(path.join(out, "mha-trained")), [1, 2, 3, 4], "each step once");
  assert.deepEqual(lockFiles(out), []);

  const stopped = path.join(tmpDir(), "stopped");
  const c = new AbortController();
  let steps2 = 0;
  await assert.rejects(study({ ...base, out: stopped, signal: c.signal, progress: { write: (s: string) => void (/^step /.test(s) && ++steps2 >= 1 && c.abort(new Error("enough"))) } }), (x: unknown) => x instanceof MlaError && x.code === "INTERRUPTED");
  assert.deepEqual(lockFiles(stopped), [], "no lock after a stop");
  const resumed = await study({ ...base, out: stopped });
  assert.equal(resumed.rows.length, 1);
  assert.deepEqual(lockFiles(stopped), []);
});

/** Two runs, mha first (its training stopped after a step) then mla at latent 32: mla-L32's folder is written only after mha's run. */
const twoRuns: Omit<StudyOptions, "out"> = { ...base, variants: ["mha", "mla"], ranks: ["d/2"] };
/** Everything under `dir`, each file with its contents: what a refused call must leave as it was. */
const snapshot = (dir: string) => Object.fromEntries(fs.readdirSync(dir, { recursive: true }).map(String).sort().map((f) => [f, fs.statSync(path.join(dir, f)).isFile() ? fs.readFileSync(path.join(dir, f), "utf8") : "(folder)"]));

/** A study of twoRuns stopped in its mha run, and a live process to hold a lock (killed by the caller). */
async function stoppedStudy(): Promise<{ out: string; ft: string; child: ReturnType<typeof spawn> }> {
  const out = path.join(tmpDir(), "study");
  let polls = 0;
  assert.equal((await study({ ...twoRuns, out, shouldStop: () => polls++ > 0 })).stoppedEarly, true);
  return { out, ft: path.join(fs.realpathSync(out), "mla-L32-trained"), child: spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)"]) };
}

const started = "2026-01-02T03:04:05.000Z";
const lockedRefusal = (out: string, ft: string, pid: number, lock: string) =>
  `--out ${out} holds ${ft}, which is in use by a finetune run (pid ${pid}, started ${started}) (its lock ${lock})\n  hint: wait for that run to end, or choose another --out (this run writes in ${ft}); if no run is active there (it was killed on another machine), delete ${lock} and run again`;

test("a study whose later run's folder another live process's run holds is refused before its first run, resumed or --force, naming that lock; --force clears nothing, and once the holder is gone it resumes", async () => {
  const { out, ft, child } = await stoppedStudy();
  try {
    fs.mkdirSync(ft);
    const lock = writeLock(ft, { pid: child.pid!, command: "finetune", started });
    const before = snapshot(out);
    for (const extra of [{}, { force: true }]) {
      const logged: string[] = [];
      await assert.rejects(study({ ...twoRuns, out, ...extra, logger: { info: (m) => logged.push(m), warn: (m) => logged.push(m) } }), (e: unknown) => {
        assert.ok(e instanceof MlaError && e.code === "EXISTS", String(e));
        assert.equal(e.message, lockedRefusal(out, ft, child.pid!, lock));
        return true;
      });
      assert.deepEqual(logged, [], "refused up front, before the device is chosen");
      assert.deepEqual(snapshot(out), before, `${JSON.stringify(extra)}: the mha run was not trained, nothing was cleared, the holder's lock is untouched`);
    }
  } finally {
    child.kill();
  }
  await new Promise((r) => child.once("exit", r));
  // The holder gone, its lock is stale: the same command resumes past it.
  const r = await study({ ...twoRuns, out });
  assert.deepEqual(r.rows.map((row) => row.label), ["MHA", "MLA, latent 32"]);
});

test("a run's folder locked by another live process while the study's options are checked is refused once the study holds --out, before its first run", async () => {
  const { out, ft, child } = await stoppedStudy();
  try {
    const before = snapshot(out);
    let lock = "";
    // The device line comes after the check made up front and before the study takes its lock.
    const logger = { info: (m: string) => void (m.startsWith("device:") && !lock && (fs.mkdirSync(ft), (lock = writeLock(ft, { pid: child.pid!, command: "finetune", started })))), warn: () => {} };
    await assert.rejects(study({ ...twoRuns, out, logger }), (e: unknown) => {
      assert.ok(e instanceof MlaError && e.code === "EXISTS", String(e));
      assert.equal(e.message, lockedRefusal(out, ft, child.pid!, lock));
      return true;
    });
    assert.notEqual(lock, "", "the lock was written while the options were checked");
    const after = snapshot(out);
    for (const f of Object.keys(after)) if (f.startsWith("mla-L32-trained")) delete after[f];
    assert.deepEqual(after, before, "the mha run was not trained");
  } finally {
    child.kill();
  }
});
