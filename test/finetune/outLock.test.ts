/**
 * The run folder is held by one fine-tune at a time (OUT/.mha2mla.lock): a second run into it at once
 * is refused naming the first, before it changes anything; a lock left by a run killed outright is
 * taken over with a warning; one from another machine is refused with the file to delete; the lock is
 * gone however the run ends.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { finetune, type FinetuneOptions } from "../../src/finetune/trainer.js";
import { LOCK_FILE } from "../../src/io/outLock.js";
import type { Logger } from "../../src/util/log.js";
import { deadPid, FIXTURES, loggedSteps, MODELS, ROOT, tmpDir, writeLock } from "../helpers.js";

const MAIN = path.join(ROOT, "dist", "src", "cli", "main.js");
const MODEL = path.join(MODELS, "stories260K");
const DATA = path.join(FIXTURES, "text", "tinystories_25k.txt");
const STEPS = 4;
const common: FinetuneOptions = { data: [DATA], out: "", tokens: STEPS * 4 * 32, seq: 32, batch: 4, valFraction: 0.05, progress: null, device: "cpu" };

/** A logger keeping its warnings. */
function warnings(): Logger & { warned: string[] } {
  const warned: string[] = [];
  return { warned, info: () => {}, warn: (m) => void warned.push(m) };
}

/** A fresh run folder holding only a lock: `holder`'s (writeLock), or a file of that text. */
function lockedFolder(holder: Parameters<typeof writeLock>[1] | string): { out: string; lock: string } {
  const out = path.join(tmpDir(), "ft");
  fs.mkdirSync(out);
  if (typeof holder !== "string") return { out, lock: writeLock(out, holder) };
  const lock = path.join(out, LOCK_FILE);
  fs.writeFileSync(lock, holder);
  return { out, lock };
}

const refusedFor = (out: string, holder: RegExp) => (e: unknown) => {
  assert.ok(e instanceof MlaError && e.code === "EXISTS", String(e));
  assert.match(e.message, new RegExp(`--out ${out.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} is in use by ${holder.source}`));
  assert.match(e.message, /hint: wait for that run to end; if no run is active there \(it was killed on another machine\), delete .*\.mha2mla\.lock and run again/);
  return true;
};

test("two finetune() calls into one --out at once: one trains, the other is refused naming it, and the log holds each step once", async () => {
  const out = path.join(tmpDir(), "ft");
  const [a, b] = await Promise.allSettled([finetune(MODEL, { ...common, out }), finetune(MODEL, { ...common, out })]);
  assert.equal(a.status, "fulfilled", a.status === "rejected" ? String(a.reason) : "");
  assert.equal(b.status, "rejected");
  refusedFor(out, /another finetune\(\) call of this process \(started \d{4}-\d\d-\d\dT[\d:.]+Z\)/)(b.reason);
  assert.deepEqual(loggedSteps(out), [1, 2, 3, 4]);
  assert.ok(fs.existsSync(path.join(out, "finetune.json")));
  assert.ok(!fs.existsSync(path.join(out, LOCK_FILE)), "released after the run");
});

test("a folder another process holds is refused naming its pid, command and start, and left as it was", async () => {
  const child = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)"]);
  try {
    const started = "2026-01-02T03:04:05.000Z";
    const { out, lock } = lockedFolder({ pid: child.pid!, command: "finetune", started });
    // Whether --out is fresh, resumed or forced, the holder is named (not "already exists", not "no checkpoint").
    for (const extra of [{}, { force: true }, { resume: true }])
      await assert.rejects(finetune(MODEL, { ...common, out, ...extra }), refusedFor(out, new RegExp(`a finetune run \\(pid ${child.pid}, started ${started}\\)`)));
    fs.writeFileSync(path.join(out, "train_log.jsonl"), "{}\n");
    await assert.rejects(finetune(MODEL, { ...common, out }), refusedFor(out, /a finetune run/), "a non-empty folder too");
    assert.deepEqual(fs.readdirSync(out).sort(), [LOCK_FILE, "train_log.jsonl"].sort());
    assert.equal(JSON.parse(fs.readFileSync(lock, "utf8")).pid, child.pid, "the holder's lock is untouched");
  } finally {
    child.kill();
  }
});

test("finetune --out inside a folder another process's run holds (a pipeline's OUT/finetune) is refused naming that lock, its pid, command and start; a stale lock above passes", async () => {
  const child = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)"]);
  try {
    const started = "2026-01-02T03:04:05.000Z";
    const pipelineOut = path.join(tmpDir(), "pipe");
    fs.mkdirSync(pipelineOut);
    const lock = writeLock(pipelineOut, { pid: child.pid!, command: "pipeline", started });
    const out = path.join(pipelineOut, "finetune");
    const esc = (t: string) => t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const refused = (e: unknown) => {
      assert.ok(e instanceof MlaError && e.code === "EXISTS", String(e));
      assert.equal(e.message, `--out ${out} lies inside ${pipelineOut}, which is in use by a pipeline run (pid ${child.pid}, started ${started}) (its lock ${lock})\n  hint: wait for that run to end, or choose an --out outside ${pipelineOut} (that run writes in its folder, this one included); if no run is active there (it was killed on another machine), delete ${lock} and run again`);
      return true;
    };
    // A fresh --out (not made), and one the pipeline's phase has written in, fresh, forced or resumed.
    await assert.rejects(finetune(MODEL, { ...common, out }), refused);
    assert.deepEqual(fs.readdirSync(pipelineOut), [LOCK_FILE], "--out not made inside the held folder");
    fs.mkdirSync(out);
    fs.writeFileSync(path.join(out, "train_log.jsonl"), "{}\n");
    for (const extra of [{}, { force: true }, { resume: true }]) await assert.rejects(finetune(MODEL, { ...common, out, ...extra }), refused);
    assert.deepEqual(fs.readdirSync(out), ["train_log.jsonl"], "the phase's folder left as it was, no lock of its own");
    // Deeper too: the nearest lock above is found, from the CLI as well.
    const deep = path.join(out, "a", "b");
    const cli = spawnSync(process.execPath, [MAIN, "finetune", MODEL, "--data", DATA, "--out", deep, "--tokens", "128", "--seq", "32", "--batch", "4", "--device", "reference"], { encoding: "utf8" });
    assert.equal(cli.status, 1, cli.stderr);
    assert.match(cli.stderr, new RegExp(`^error: --out ${esc(deep)} lies inside ${esc(pipelineOut)}, which is in use by a pipeline run \\(pid ${child.pid}, started ${esc(started)}\\) \\(its lock ${esc(lock)}\\)\n  hint: `, "m"));
    assert.ok(!fs.existsSync(path.join(out, "a")));
    assert.equal(JSON.parse(fs.readFileSync(lock, "utf8")).pid, child.pid, "the holder's lock is untouched");
  } finally {
    child.kill();
  }
  // The holder gone: its lock above is stale, left to its folder's next run, and the fine-tune runs.
  const pipelineOut = path.join(tmpDir(), "pipe");
  fs.mkdirSync(pipelineOut);
  const stale = writeLock(pipelineOut, { pid: deadPid(), command: "pipeline", started: "2026-01-02T03:04:05.000Z" });
  const r = await finetune(MODEL, { ...common, out: path.join(pipelineOut, "finetune") });
  assert.equal(r.steps, STEPS);
  assert.ok(fs.existsSync(stale), "a stale lock above is not this run's to take over");
});

test("a stale lock (its pid no longer runs on this machine) is taken over with a warning, and the run completes", async () => {
  const pid = deadPid();
  const { out, lock } = lockedFolder({ pid, command: "finetune", started: "2026-01-02T03:04:05.000Z" });
  const log = warnings();
  const r = await finetune(MODEL, { ...common, out, logger: log });
  assert.equal(r.steps, STEPS);
  assert.ok(log.warned.some((w) => new RegExp(`was locked by an earlier run, taken over: a finetune run \\(pid ${pid}, started 2026-01-02T03:04:05.000Z\\) is no longer running`).test(w)), log.warned.join("\n"));
  assert.ok(!fs.existsSync(lock));
});

test("a lock from another host is refused (its process cannot be checked), naming the host and the file to delete", async () => {
  const { out, lock } = lockedFolder({ pid: deadPid(), host: "other-machine.example", command: "study", started: "2026-01-02T03:04:05.000Z" });
  await assert.rejects(finetune(MODEL, { ...common, out }), refusedFor(out, /a study run \(pid \d+ on host other-machine\.example, started [^)]+\); another machine's process cannot be checked from here/));
  assert.deepEqual(fs.readdirSync(out), [LOCK_FILE]);
  assert.match(fs.readFileSync(lock, "utf8"), /other-machine/);
});

test("an empty lock file (a run between creating and writing it) is refused while young, taken over once a few seconds old", async () => {
  const { out, lock } = lockedFolder("");
  await assert.rejects(finetune(MODEL, { ...common, out }), refusedFor(out, /a run that is starting \(its lock file .*, written \d+ s ago, is not complete yet\)/));
  const old = new Date(Date.now() - 60_000);
  fs.utimesSync(lock, old, old);
  const log = warnings();
  const r = await finetune(MODEL, { ...common, out, logger: log });
  assert.equal(r.steps, STEPS);
  assert.ok(log.warned.some((w) => /taken over: its lock file .* was empty or damaged/.test(w)), log.warned.join("\n"));
  assert.ok(!fs.existsSync(lock));
});

test("the lock is gone after an error (a callback that throws), after an abort (AbortSignal), and a fresh run that fails before writing leaves no folder", async () => {
  const out = path.join(tmpDir(), "ft");
  await assert.rejects(finetune(MODEL, { ...common, out, onStep: (s) => { if (s.step === 2) throw new Error("callback failed"); } }), /callback failed/);
  assert.ok(fs.existsSync(path.join(out, "checkpoint")), "its checkpoint is kept");
  assert.ok(!fs.existsSync(path.join(out, LOCK_FILE)), "no lock after an error");

  const c = new AbortController();
  const stopped = await finetune(MODEL, { ...common, out, resume: true, signal: c.signal, onStep: () => c.abort(new Error("enough")) });
  assert.equal(stopped.stoppedEarly, true);
  assert.ok(!fs.existsSync(path.join(out, LOCK_FILE)), "no lock after a stop");
  const resumed = await finetune(MODEL, { ...common, out, resume: true });
  assert.equal(resumed.steps, STEPS);
  assert.deepEqual(loggedSteps(out), [1, 2, 3, 4]);

  const fresh = path.join(tmpDir(), "fresh");
  await assert.rejects(finetune(MODEL, { ...common, out: fresh, onValidation: () => { throw new Error("before training"); } }), /before training/);
  assert.ok(!fs.existsSync(fresh), "the folder the lock made is removed with it");
});

test("the CLI: a run killed outright leaves a stale lock; --resume takes it over with a warning and ends as an uninterrupted run", () => {
  const args = (out: string) => ["finetune", MODEL, "--data", DATA, "--out", out, "--tokens", String(STEPS * 4 * 32), "--seq", "32", "--batch", "4", "--val-fraction", "0.05", "--save-every", "2", "--device", "cpu"];
  const out = path.join(tmpDir(), "killed");
  const killed = spawnSync(process.execPath, [MAIN, ...args(out)], { encoding: "utf8", env: { ...process.env, MHA2MLA_TEST_KILL_AFTER_SAVE: "2" } });
  assert.equal(killed.signal, "SIGKILL", killed.stderr);
  const lock = JSON.parse(fs.readFileSync(path.join(out, LOCK_FILE), "utf8")) as { pid: number; host: string; command: string };
  assert.deepEqual([lock.pid, lock.host, lock.command], [killed.pid, os.hostname(), "finetune"]);
  const resumed = spawnSync(process.execPath, [MAIN, ...args(out), "--resume"], { encoding: "utf8" });
  assert.equal(resumed.status, 0, resumed.stderr);
  assert.match(resumed.stderr, new RegExp(`warning: --out .* was locked by an earlier run, taken over: a finetune run \\(pid ${killed.pid}, started [^)]+\\) is no longer running`));
  assert.deepEqual(loggedSteps(out), [1, 2, 3, 4]);
  assert.ok(!fs.existsSync(path.join(out, LOCK_FILE)));
});
