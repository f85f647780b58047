/**
 * A pipeline holds its --out for the whole run (OUT/.mha2mla.lock): a second pipeline there at once is
 * refused naming the first, its own fine-tune phase (inside the folder it holds) runs without
 * deadlocking against it, and a lock left by a killed run is taken over when the same command resumes.
 * A phase folder another live run holds (a fine-tune started in OUT/finetune) is refused before the first phase.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { pipeline, type PipelineOptions } from "../../src/pipeline.js";
import { deadPid, FIXTURES, lockFiles, loggedSteps, MODELS, tmpDir, writeLock } from "../helpers.js";

const MODEL = path.join(MODELS, "stories260K");
const TEXT = path.join(FIXTURES, "text", "tinystories.txt");
const opts: Omit<PipelineOptions, "out"> = { convert: { rank: 4, ropePairs: 1 }, finetune: { data: [TEXT], tokens: 2 * 4 * 32, seq: 32, batch: 4 }, evalText: TEXT, evalTokens: 200, device: "cpu", progress: null };

test("two pipelines into one --out at once: one runs every phase, its fine-tune included, the other is refused naming it", async () => {
  const out = path.join(tmpDir(), "pl");
  const [a, b] = await Promise.allSettled([pipeline(MODEL, { ...opts, out }), pipeline(MODEL, { ...opts, out })]);
  const [done, refused] = a.status === "fulfilled" ? [a, b] : [b, a];
  assert.equal(done.status, "fulfilled", done.status === "rejected" ? String(done.reason) : "");
  assert.deepEqual(done.value.phases.map((p) => p.name), ["convert", "eval original", "eval converted", "finetune", "eval fine-tuned", "report"]);
  assert.equal(refused.status, "rejected");
  const e = refused.reason as unknown;
  assert.ok(e instanceof MlaError && e.code === "EXISTS", String(e));
  assert.match(e.message, /--out .*pl is in use by another pipeline\(\) call of this process \(started [^)]+\)\n  hint: wait for that run to end; if no run is active there \(it was killed on another machine\), delete .*pl\/\.mha2mla\.lock and run again/);
  assert.deepEqual(loggedSteps(path.join(out, "finetune")), [1, 2]);
  assert.deepEqual(lockFiles(out), [], "no lock left, in --out or its model folders");
});

test("a pipeline whose run was killed (its lock left behind) resumes by phase, taking the lock over with a warning", async () => {
  const out = path.join(tmpDir(), "pl");
  let polls = 0;
  const first = await pipeline(MODEL, { ...opts, out, shouldStop: () => polls++ > 0 });
  assert.equal(first.stoppedEarly, true);
  assert.ok(fs.existsSync(path.join(out, "mla", "config.json")), "the conversion is done");
  const dead = deadPid();
  writeLock(out, { pid: dead, command: "pipeline", started: "2026-01-02T03:04:05.000Z" });
  const logged: string[] = [];
  const r = await pipeline(MODEL, { ...opts, out, logger: { info: (m) => logged.push(m), warn: (m) => logged.push(`warning: ${m}`) } });
  assert.equal(r.stoppedEarly, false);
  assert.deepEqual(r.phases.map((p) => `${p.name}${p.skipped ? " (skipped)" : ""}`), ["convert (skipped)", "eval original", "eval converted", "finetune", "eval fine-tuned", "report"]);
  assert.ok(logged.some((m) => new RegExp(`^warning: --out .* was locked by an earlier run, taken over: a pipeline run \\(pid ${dead}, started 2026-01-02T03:04:05.000Z\\) is no longer running`).test(m)), logged.join("\n"));
  assert.ok(logged.includes(`resuming the pipeline in ${out}`), logged.join("\n"));
  assert.deepEqual(lockFiles(out), []);
});

test("a pipeline whose fine-tune folder another live process's run holds is refused before its first phase, resumed or --force, naming that lock; --force clears nothing, and once the holder is gone it resumes", async () => {
  const out = path.join(tmpDir(), "pl");
  // A run stopped after its conversion: resumed, it would evaluate twice before its fine-tune phase found the lock.
  let polls = 0;
  assert.equal((await pipeline(MODEL, { ...opts, out, shouldStop: () => polls++ > 0 })).stoppedEarly, true);
  const ft = path.join(fs.realpathSync(out), "finetune");
  fs.mkdirSync(ft);
  const started = "2026-01-02T03:04:05.000Z";
  const child = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)"]);
  try {
    const lock = writeLock(ft, { pid: child.pid!, command: "finetune", started });
    const before = fs.readdirSync(out).sort();
    for (const extra of [{}, { force: true }]) {
      await assert.rejects(pipeline(MODEL, { ...opts, out, ...extra }), (e: unknown) => {
        assert.ok(e instanceof MlaError && e.code === "EXISTS", String(e));
        assert.equal(e.message, `--out ${out} holds ${ft}, which is in use by a finetune run (pid ${child.pid}, started ${started}) (its lock ${lock})\n  hint: wait for that run to end, or choose another --out (this run writes in ${ft}); if no run is active there (it was killed on another machine), delete ${lock} and run again`);
        return true;
      });
      assert.deepEqual(fs.readdirSync(out).sort(), before, `${JSON.stringify(extra)}: no evaluation ran, nothing was cleared`);
      assert.equal(JSON.parse(fs.readFileSync(lock, "utf8")).pid, child.pid, "the holder's lock is untouched");
    }
  } finally {
    child.kill();
  }
  await new Promise((r) => child.once("exit", r));
  // The holder gone, its lock is stale: the same command resumes past it.
  const r = await pipeline(MODEL, { ...opts, out });
  assert.deepEqual(r.phases.map((p) => `${p.name}${p.skipped ? " (skipped)" : ""}`), ["convert (skipped)", "eval original", "eval converted", "finetune", "eval fine-tuned", "report"]);
});
