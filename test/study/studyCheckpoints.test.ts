/**
 * `study` after a hard kill (kill -9, a lost GPU lease or machine): each run saves a checkpoint
 * periodically (--save-every STEPS, by default every STUDY_SAVE_MINUTES minutes of training), and the
 * same command re-run continues the interrupted run from its last one, ending as an uninterrupted
 * study does. --save-every 0 saves only on a graceful stop, as before; bad values are refused by name.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { STUDY_SAVE_MINUTES, study, type StudyOptions } from "../../src/study/study.js";
import { FIXTURES, MODELS, ROOT, tmpDir } from "../helpers.js";

const MAIN = path.join(ROOT, "dist", "src", "cli", "main.js");
const LIKE = path.join(MODELS, "stories260K");
const DATA = path.join(FIXTURES, "text", "tinystories_25k.txt");

/** The step of the checkpoint in a run folder (null: none). */
const checkpointStep = (run: string): number | null => {
  const f = path.join(run, "checkpoint", "state.json");
  return fs.existsSync(f) ? (JSON.parse(fs.readFileSync(f, "utf8")) as { step: number }).step : null;
};
/** The steps of the loss lines in a run's log, in order. */
const loggedSteps = (run: string) =>
  fs.readFileSync(path.join(run, "train_log.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as { step: number; loss?: number }).filter((l) => l.loss !== undefined).map((l) => l.step);
/** What a study's result holds that does not depend on the machine's speed. */
const results = (out: string) => (JSON.parse(fs.readFileSync(path.join(out, "study.json"), "utf8")) as { rows: Record<string, unknown>[] }).rows.map((r) => [r["label"], r["valNll"], r["curve"], r["params"], r["kvElemsPerToken"]]);

test("a study killed with SIGKILL after a periodic checkpoint resumes from it when re-run, and ends with an uninterrupted study's results and weights", async () => {
  const STEPS = 24;
  const SAVE = 2;
  const args = (out: string) => ["study", "--like", LIKE, "--data", DATA, "--tokens", String(STEPS * 4 * 32), "--seq", "32", "--batch", "4", "--variants", "mha,mla-rope", "--ranks", "d/2", "--save-every", String(SAVE), "--device", "cpu", "--out", out];
  const straight = path.join(tmpDir(), "straight");
  const plain = spawnSync(process.execPath, [MAIN, ...args(straight)], { encoding: "utf8" });
  assert.equal(plain.status, 0, plain.stderr);
  assert.match(plain.stderr, new RegExp(`^training checkpoints: every ${SAVE} steps; re-running the same command continues a run from its last one$`, "m"));

  // Killed from outside, as a lost machine is: once the first run's first periodic checkpoint is on the disk.
  const out = path.join(tmpDir(), "killed");
  const run = path.join(out, "mha-trained");
  const child = spawn(process.execPath, [MAIN, ...args(out)], { stdio: "ignore" });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  let done = false;
  void exited.then(() => (done = true));
  while (!done && checkpointStep(run) === null) await new Promise((r) => setTimeout(r, 5));
  child.kill("SIGKILL");
  const end = await exited;
  assert.equal(end.signal, "SIGKILL", `the study ended before the kill (exit ${end.code}): make its first run longer`);
  const at = checkpointStep(run)!;
  assert.ok(at > 0 && at < STEPS && at % SAVE === 0, `killed after a periodic checkpoint of the first run, before its end: step ${at}`);
  assert.ok(!fs.existsSync(path.join(out, "mha.row.json")) && !fs.existsSync(path.join(run, "finetune.json")), "the first run had not finished");

  const again = spawnSync(process.execPath, [MAIN, ...args(out)], { encoding: "utf8" });
  assert.equal(again.status, 0, again.stderr);
  assert.match(again.stderr, /^resuming the study in /m);
  assert.match(again.stderr, new RegExp(`^resuming at step ${at}/${STEPS}$`, "m"), "the interrupted run continues from its checkpoint, not from step 0");
  // Every step logged once (the lines a kill leaves past the checkpoint are cut), as the uninterrupted run's.
  const steps = Array.from({ length: STEPS }, (_, i) => i + 1);
  assert.deepEqual(loggedSteps(run), steps);
  assert.deepEqual(loggedSteps(path.join(out, "mla-rope-L32-trained")), steps);
  assert.deepEqual(results(out), results(straight), "the same validation NLL and curve per run");
  for (const name of ["mha-trained", "mla-rope-L32-trained"]) assert.deepEqual(fs.readFileSync(path.join(out, name, "model.safetensors")), fs.readFileSync(path.join(straight, name, "model.safetensors")), `${name}: the same weights`);
  assert.ok(fs.existsSync(path.join(out, "report.md")));
});

test("a run killed between a checkpoint's two renames (its last one moved aside) resumes from that one, not from step 0", async () => {
  const base: StudyOptions = { like: LIKE, variants: ["mha"], data: DATA, tokens: 8 * 4 * 32, seq: 32, batch: 4, valFraction: 0.05, device: "cpu", out: "", progress: null };
  const straight = await study({ ...base, out: path.join(tmpDir(), "straight") });
  const out = path.join(tmpDir(), "killed");
  const run = path.join(out, "mha-trained");
  const first = await study({ ...base, out, shouldStop: () => fs.existsSync(path.join(run, "train_log.jsonl")) && loggedSteps(run).length >= 3 });
  assert.equal(first.stoppedEarly, true);
  // What saveCheckpoint leaves when killed after moving the old checkpoint aside, before the new one moves in.
  fs.renameSync(path.join(run, "checkpoint"), path.join(run, "checkpoint.old"));
  const logged: string[] = [];
  const done = await study({ ...base, out, logger: { info: (m) => logged.push(m), warn: () => {} } });
  assert.ok(logged.includes("resuming at step 3/8"), logged.join("\n"));
  assert.deepEqual(done.rows.map((r) => [r.valNll, r.curve]), straight.rows.map((r) => [r.valNll, r.curve]));
  assert.ok(!fs.existsSync(path.join(run, "checkpoint.old")));
});

test("--save-every 0 saves no checkpoint but when stopped (and the run's final one), as before; the default saves by training time, every N steps when given", async () => {
  const base: StudyOptions = { like: LIKE, variants: ["mha"], data: DATA, tokens: 6 * 4 * 32, seq: 32, batch: 4, valFraction: 0.05, device: "cpu", out: "", progress: null };
  // The checkpoint's step as each step ends: shouldStop is polled then, after that step's save (no
  // periodic validation here, whose windows poll it before the save), and again in the final validation.
  const seen = async (o: Partial<StudyOptions>) => {
    const out = path.join(tmpDir(), "st");
    const run = path.join(out, "mha-trained");
    const after = new Map<number, number | null>();
    const logged: string[] = [];
    const shouldStop = () => {
      const step = fs.existsSync(path.join(run, "train_log.jsonl")) ? loggedSteps(run).length : 0;
      if (step > 0 && !after.has(step)) after.set(step, checkpointStep(run));
      return false;
    };
    await study({ ...base, ...o, out, evalEvery: 6, logger: { info: (m) => logged.push(m), warn: () => {} }, shouldStop });
    return { steps: [...after.values()], final: checkpointStep(run), line: logged.find((m) => m.startsWith("training checkpoints: ")) };
  };
  const none = await seen({ saveEvery: 0 });
  assert.deepEqual(none.steps, [null, null, null, null, null, null]);
  assert.equal(none.final, 6, "the run's final checkpoint, as before");
  assert.match(none.line!, /only when a run is stopped \(Ctrl-C\), not periodically: a hard kill restarts the run under way/);
  const every = await seen({ saveEvery: 2 });
  assert.deepEqual(every.steps, [null, 2, 2, 4, 4, 6]);
  // Six steps take far less than the default's minutes: no periodic checkpoint yet, but the line says when.
  const byTime = await seen({});
  assert.deepEqual(byTime.steps, [null, null, null, null, null, null]);
  assert.match(byTime.line!, new RegExp(`after every ${STUDY_SAVE_MINUTES} minutes of training \\(--save-every N: every N steps\\)`));
});

test("bad --save-every values are refused before any work, naming the flag", async () => {
  const out = path.join(tmpDir(), "never");
  const common = ["study", "--like", LIKE, "--data", DATA, "--tokens", "256", "--variants", "mha", "--device", "cpu", "--out", out];
  for (const [value, re] of [
    ["-1", /^error: --save-every -1 must be a whole number of steps, 0 or more/m],
    ["2.5", /^error: --save-every 2\.5 must be a whole number of steps, 0 or more/m],
    ["often", /^error: --save-every often is not a number/m],
    ["", /^error: --save-every was given an empty value/m],
    [null, /^error: --save-every was given without a value/m],
  ] as const) {
    const r = spawnSync(process.execPath, [MAIN, ...common, "--save-every", ...(value === null ? [] : [value])], { encoding: "utf8" });
    assert.equal(r.status, 1, `--save-every ${JSON.stringify(value)}: ${r.stderr}`);
    assert.match(r.stderr, re);
    assert.equal(fs.existsSync(out), false, "nothing made");
  }
  const base: StudyOptions = { like: LIKE, variants: ["mha"], data: DATA, tokens: 256, seq: 32, batch: 4, device: "cpu", out, progress: null };
  await assert.rejects(study({ ...base, saveEvery: Infinity }), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && /^--save-every Infinity must be a whole number of steps, 0 or more/.test(e.message));
  await assert.rejects(study({ ...base, saveEvery: "4" as never }), (e: unknown) => e instanceof MlaError && /saveEvery/.test(e.message));
  assert.equal(fs.existsSync(out), false);
});
