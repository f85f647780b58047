/**
 * A study holds its --out for the whole run (OUT/.mha2mla.lock): a second study there at once is
 * refused naming the first (two studies 1.5 s apart interleaved their logs); the study's own runs,
 * inside the folder it holds, lock nothing; the lock is gone when it ends or is stopped.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { study, type StudyOptions } from "../../src/study/study.js";
import { FIXTURES, lockFiles, loggedSteps, MODELS, tmpDir } from "../helpers.js";

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
