/**
 * --resume: a resumed run reports the validation NLL before training as an uninterrupted one does; a
 * finished run is reported as it ended and nothing in its folder is written again; a run started with
 * other flags is refused naming each flag that differs, with both values.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { finetune, type FinetuneOptions } from "../../src/finetune/trainer.js";
import { checkSameRun, loggedSeconds, settingDifferences, trimLogToCheckpoint } from "../../src/finetune/resume.js";
import { FIXTURES, MODELS, ROOT, tmpDir } from "../helpers.js";

const MAIN = path.join(ROOT, "dist", "src", "cli", "main.js");
const MODEL = path.join(MODELS, "stories260K");
const DATA = path.join(FIXTURES, "text", "tinystories_25k.txt");
const STEPS = 6;
const common: FinetuneOptions = { data: [DATA], out: "", tokens: STEPS * 4 * 32, seq: 32, batch: 4, valFraction: 0.05, progress: null };
const cliArgs = (out: string) => ["finetune", MODEL, "--data", DATA, "--out", out, "--tokens", String(STEPS * 4 * 32), "--seq", "32", "--batch", "4", "--val-fraction", "0.05"];

/** Every file of a run folder with its bytes and modification time: what "nothing written" compares. */
function snapshot(dir: string): Map<string, string> {
  const files = fs.readdirSync(dir, { recursive: true }).map(String).filter((f) => fs.statSync(path.join(dir, f)).isFile());
  return new Map(files.map((f) => [f, `${fs.statSync(path.join(dir, f)).mtimeMs} ${fs.readFileSync(path.join(dir, f)).toString("base64")}`]));
}

/** Loss lines in the run's log: a stop after step N that polls it (shouldStop is also polled while tokenizing and validating, so counting polls would stop there). */
const losses = (out: string) => (fs.existsSync(path.join(out, "train_log.jsonl")) ? fs.readFileSync(path.join(out, "train_log.jsonl"), "utf8").split("\n").filter((l) => l.includes('"loss"')).length : 0);

const summary = (out: string) => JSON.parse(fs.readFileSync(path.join(out, "finetune.json"), "utf8")) as { val_nll_before: number | null; val_nll_after: number | null };

test("a resumed run reports the NLL before training of the uninterrupted run; resuming it once finished reports it again and writes nothing", async () => {
  const straight = await finetune(MODEL, { ...common, out: path.join(tmpDir(), "straight") });
  const out = path.join(tmpDir(), "stopped");
  const stopped = await finetune(MODEL, { ...common, out, shouldStop: () => losses(out) >= 3 });
  assert.ok(stopped.stoppedEarly && stopped.checkpointStep === 3, `stopped at step ${stopped.steps}`);
  const resumed = await finetune(MODEL, { ...common, out, resume: true });
  assert.equal(resumed.steps, STEPS);
  assert.equal(resumed.valNllBefore, straight.valNllBefore);
  assert.ok(resumed.valNllBefore !== null);
  assert.equal(resumed.valNllAfter, straight.valNllAfter);
  assert.deepEqual([summary(out).val_nll_before, summary(out).val_nll_after], [straight.valNllBefore, straight.valNllAfter], "finetune.json");

  const files = snapshot(out);
  const again = await finetune(MODEL, { ...common, out, resume: true });
  assert.deepEqual(again, { ...resumed, checkpointStep: STEPS }, "the finished run, as it ended");
  assert.deepEqual(snapshot(out), files, "nothing written: no log line, model, summary or checkpoint");
});

test("the CLI: --resume of a finished run prints the line the run ended with, appends nothing to train_log.jsonl and exits 0", () => {
  const out = path.join(tmpDir(), "cli");
  const first = spawnSync(process.execPath, [MAIN, ...cliArgs(out)], { encoding: "utf8" });
  assert.equal(first.status, 0, first.stderr);
  assert.equal(first.stderr.match(/^validation \d+\/\d+ tok \(100\.0%\)/gm)?.length, 2, "the validations before and after training show their progress");
  const files = snapshot(out);
  const again = spawnSync(process.execPath, [MAIN, ...cliArgs(out), "--resume"], { encoding: "utf8" });
  assert.equal(again.status, 0, again.stderr);
  assert.equal(again.stdout, first.stdout);
  assert.match(again.stdout, /validation NLL \d\.\d{4} → \d\.\d{4}/);
  assert.match(again.stderr, /has finished \(step 6\); nothing to resume/);
  assert.deepEqual(snapshot(out), files);
});

test("--resume with other flags names each flag that differs with both values, not the settings record", async () => {
  const out = path.join(tmpDir(), "run");
  await finetune(MODEL, { ...common, out, lr: 1e-3, shouldStop: () => losses(out) >= 1 });
  const refused = (o: Partial<FinetuneOptions>, re: RegExp, model = MODEL) =>
    assert.rejects(finetune(model, { ...common, out, resume: true, lr: 1e-3, ...o }), (e: Error) => e instanceof MlaError && e.code === "BAD_CHECKPOINT" && re.test(e.message) && !/\{"/.test(e.message) && /hint: pass the same MODEL and flags to resume, or --force to start over/.test(e.message));
  const interrupted = snapshot(out);
  const was = `but the run in ${out.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} was started`;
  await refused({ lr: 2e-4 }, new RegExp(`^--resume: --lr is 2e-4 here ${was} with 1e-3\\n`));
  await refused({ seq: 64, warmup: 0.2 }, new RegExp(`--seq is 64 here ${was} with 32; --warmup is 0\\.2 here ${was} with 0\\.05\\n`));
  await refused({ tokens: undefined, seed: 7 }, new RegExp(`--tokens is not given here ${was} with ${STEPS * 4 * 32}; --seed is 7 here ${was} with 0\\n`));
  const copy = path.join(tmpDir(), "other");
  fs.cpSync(MODEL, copy, { recursive: true });
  const config = path.join(copy, "config.json");
  fs.writeFileSync(config, fs.readFileSync(config, "utf8").replace(/"rms_norm_eps": [^,\n]+/, '"rms_norm_eps": 1e-6'));
  await refused({}, new RegExp(`MODEL is .*other here ${was} with .*stories260K\\n`), copy);
  assert.deepEqual(snapshot(out), interrupted, "a refused resume writes nothing");
});

test("--resume with other flags is refused before the data is tokenized (minutes on a corpus), not after; a copy of the model still resumes", async () => {
  const out = path.join(tmpDir(), "run");
  await finetune(MODEL, { ...common, out, shouldStop: () => losses(out) >= 1 });
  const said: string[] = [];
  const logger = { info: (m: string) => said.push(m), warn: (m: string) => said.push(m) };
  await assert.rejects(finetune(MODEL, { ...common, out, resume: true, lr: 5e-4, logger }), (e: Error) => e instanceof MlaError && e.code === "BAD_CHECKPOINT" && /^--resume: --lr is 5e-4 here but the run in .* was started with 1e-3\n/.test(e.message));
  assert.deepEqual(said.filter((m) => /tokeniz/.test(m)), [], "refused before tokenizing");
  const copy = path.join(tmpDir(), "copy");
  fs.cpSync(MODEL, copy, { recursive: true });
  const resumed = await finetune(copy, { ...common, out, resume: true });
  assert.equal(resumed.steps, STEPS, "MODEL's path is compared with its config.json, after the data is read");
});

test("settingDifferences compares the --warmup fraction where both runs recorded it, else the steps; a fingerprint that differs in no recorded flag names the model and the data", () => {
  const schedule = { name: "wsd", lr: 1e-3, warmupSteps: 2, decayFraction: 0.2, minLrFraction: 0.1 };
  const old = { data: ["/d.txt"], tokens: null, schedule };
  // --tokens moved the warmup steps; the fraction is the same: only --tokens is named.
  assert.deepEqual(settingDifferences("OUT", { ...old, warmup: 0.05 }, { ...old, tokens: 4096, schedule: { ...schedule, warmupSteps: 4 }, warmup: 0.05 }), ["--tokens is 4096 here but the run in OUT was started without it"]);
  // A checkpoint from before the fraction was recorded: the steps are compared.
  assert.deepEqual(settingDifferences("OUT", old, { ...old, schedule: { ...schedule, warmupSteps: 4 }, warmup: 0.1 }), ["the warmup steps (--warmup) is 4 here but the run in OUT was started with 2"]);
  const prior = { format: 1 as const, step: 1, epoch: 0, cursor: 1, tokensSeen: 128, fingerprint: "a", settings: { model: "/m", ...old } };
  assert.throws(() => checkSameRun("OUT", prior, "b", { model: "/m", ...old }), (e: Error) => e instanceof MlaError && /^--resume: MODEL \/m \(its config\.json\) or the --data files \(their length\) are not those the run in OUT was started with/.test(e.message));
  assert.doesNotThrow(() => checkSameRun("OUT", prior, "a", { model: "/elsewhere", ...old }), "a copy of the model (same config.json) resumes");
});

/** The log's lines without their timing fields (which differ between any two runs), in order. */
function logRows(out: string): Record<string, unknown>[] {
  return fs.readFileSync(path.join(out, "train_log.jsonl"), "utf8").trim().split("\n").map((l) => {
    const { elapsed_s, tokens_per_s, step_ms, host_ms, ...rest } = JSON.parse(l) as Record<string, unknown>;
    return rest;
  });
}

test("--resume after a crash past the checkpoint: the log's later lines are dropped, so it ends as the uninterrupted run's; the run's seconds and tokens/s span both sittings, the sitting's own follow", () => {
  const args = (out: string) => ["finetune", MODEL, "--data", DATA, "--out", out, "--tokens", String(8 * 4 * 32), "--seq", "32", "--batch", "4", "--val-fraction", "0.05", "--save-every", "4", "--eval-every", "2"];
  const straight = path.join(tmpDir(), "straight");
  assert.equal(spawnSync(process.execPath, [MAIN, ...args(straight)], { encoding: "utf8" }).status, 0);
  const out = path.join(tmpDir(), "crashed");
  const killed = spawnSync(process.execPath, [MAIN, ...args(out)], { encoding: "utf8", env: { ...process.env, MHA2MLA_TEST_KILL_AFTER_SAVE: "4" } });
  assert.equal(killed.signal, "SIGKILL", killed.stderr);
  // What a crash after steps 5 and 6 leaves (the next checkpoint is at step 8): their lines, the last one torn.
  const later = fs.readFileSync(path.join(straight, "train_log.jsonl"), "utf8").split("\n").filter((l) => l && [5, 6].includes(JSON.parse(l).step));
  assert.deepEqual(later.map((l) => Object.keys(JSON.parse(l)).includes("loss") ? "loss" : "val"), ["loss", "loss", "val"]);
  fs.appendFileSync(path.join(out, "train_log.jsonl"), later.join("\n") + '\n{"step":7,"lo');
  const ckSeconds = JSON.parse(fs.readFileSync(path.join(out, "checkpoint", "state.json"), "utf8")).seconds as number;
  assert.ok(ckSeconds > 0, "the checkpoint records the training seconds so far");
  // As a GPU run's checkpoint records its peak device memory (the CPU backend counts none): the resumed
  // run reports the most of its sittings', not its own sitting's alone.
  const stateFile = path.join(out, "checkpoint", "state.json");
  fs.writeFileSync(stateFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(stateFile, "utf8")), peakDeviceBytes: 123456789 }));

  const resumed = spawnSync(process.execPath, [MAIN, ...args(out), "--resume"], { encoding: "utf8" });
  assert.equal(resumed.status, 0, resumed.stderr);
  assert.match(resumed.stderr, /train_log\.jsonl: dropped 4 line\(s\) written after the step-4 checkpoint/);
  const [a, b] = [logRows(straight), logRows(out)];
  assert.deepEqual(b.map((r) => [r["step"], "loss" in r]), a.map((r) => [r["step"], "loss" in r]), "the same lines in the same order, none twice");
  a.forEach((r, i) => {
    for (const k of ["loss", "val_nll"]) if (k in r) assert.ok(Math.abs((r[k] as number) - (b[i]![k] as number)) <= 1e-6, `line ${i + 1} ${k}: ${r[k]} vs ${b[i]![k]}`);
  });

  const s = JSON.parse(fs.readFileSync(path.join(out, "finetune.json"), "utf8")) as { steps: number; tokens: number; seconds: number; tokens_per_s: number; peak_device_bytes: number | null; sitting: { steps: number; seconds: number; tokens_per_s: number; peak_device_bytes: number | null; host_time_per_step: unknown } };
  assert.equal(s.peak_device_bytes, 123456789, "the run's peak spans its sittings");
  assert.equal(s.sitting.peak_device_bytes, null, "this sitting's own, on a backend that counts none");
  assert.ok("host_time_per_step" in s.sitting && !("host_time_per_step" in s), "the host time per step is the sitting's");
  assert.equal(JSON.parse(fs.readFileSync(stateFile, "utf8")).peakDeviceBytes, 123456789, "and the final checkpoint keeps it");
  assert.equal(s.steps, 8);
  assert.equal(s.sitting.steps, 4);
  assert.ok(s.seconds >= ckSeconds + s.sitting.seconds - 1e-9 && s.seconds <= ckSeconds + s.sitting.seconds + 1e-9, `${s.seconds} = ${ckSeconds} before + ${s.sitting.seconds} now`);
  assert.equal(s.tokens_per_s, s.tokens / s.seconds);
  assert.equal(s.sitting.tokens_per_s, (4 * 4 * 32) / s.sitting.seconds);
  // The log's elapsed_s goes on from the checkpoint's time, as in one sitting.
  const elapsed = fs.readFileSync(path.join(out, "train_log.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l)).filter((r) => "loss" in r).map((r) => r.elapsed_s as number);
  assert.ok(elapsed.every((x, i) => i === 0 || x >= elapsed[i - 1]!), `elapsed_s never goes back: ${elapsed.join(", ")}`);
  assert.ok(elapsed[4]! > ckSeconds);
  assert.match(resumed.stdout, new RegExp(`^trained 8 steps \\(1024 tokens\\) in ${s.seconds.toFixed(1)} s, ${Math.round(s.tokens_per_s)} tok/s \\(this sitting, resumed at step 4: 4 steps in ${s.sitting.seconds.toFixed(1)} s, ${Math.round(s.sitting.tokens_per_s)} tok/s\\); validation NLL`));
  const again = spawnSync(process.execPath, [MAIN, ...args(out), "--resume"], { encoding: "utf8" });
  assert.equal(again.stdout, resumed.stdout, "a finished run is reported as it ended, this sitting included");
});

test("--resume after a crash between the last step's checkpoint and finetune.json, in the middle of saving it: the checkpoint moved aside is used, the half-written folders are swept, the final validation is logged once", async () => {
  const out = path.join(tmpDir(), "run");
  const straight = await finetune(MODEL, { ...common, out, saveEvery: STEPS });
  const rows = logRows(out);
  assert.deepEqual(straight.sitting, { steps: STEPS, seconds: straight.seconds, tokensPerSecond: straight.tokensPerSecond }, "one sitting: its figures are the run's");
  const ckSeconds = JSON.parse(fs.readFileSync(path.join(out, "checkpoint", "state.json"), "utf8")).seconds as number;
  fs.rmSync(path.join(out, "finetune.json")); // as if cut off before it: the checkpoint is of the last step
  // ... and, saving a checkpoint once more, after the whole one was moved aside and before its
  // replacement moved into place; the model's files half-written too (pid 999999999 is above any
  // kernel's pid_max: no process owns them).
  fs.renameSync(path.join(out, "checkpoint"), path.join(out, "checkpoint.old"));
  const stale = [".checkpoint.tmp-999999999-aaaaaa", ".model.tmp-999999999-bbbbbb"];
  for (const d of stale) fs.mkdirSync(path.join(out, d));
  fs.writeFileSync(path.join(out, stale[0]!, "state.safetensors"), "half");
  const resumed = await finetune(MODEL, { ...common, out, resume: true });
  assert.deepEqual(logRows(out), rows);
  assert.equal(resumed.valNllAfter, straight.valNllAfter);
  assert.equal(resumed.sitting.steps, 0);
  assert.deepEqual(fs.readdirSync(out).filter((n) => n.startsWith(".") || n.startsWith("checkpoint")), ["checkpoint"], "the moved-aside checkpoint back in place, the temporary folders gone");
  assert.ok(resumed.seconds >= ckSeconds && resumed.seconds < ckSeconds + 1, `${resumed.seconds}: the run's ${ckSeconds} s, no step in this sitting`);
});

test("--resume refuses --data files that have changed since the run started (their tokens); the last step's checkpoint is written once, before finetune.json", async () => {
  const dir = tmpDir();
  const data = path.join(dir, "data.txt");
  fs.copyFileSync(DATA, data);
  const out = path.join(dir, "run");
  await finetune(MODEL, { ...common, data: [data], out, saveEvery: STEPS });
  const mtime = (f: string) => fs.statSync(path.join(out, f)).mtimeMs;
  assert.ok(mtime("checkpoint/state.json") <= mtime("finetune.json"), "no second save of the same step after the run's summary");
  fs.rmSync(path.join(out, "finetune.json")); // cut off before it, so that --resume has work to do
  fs.appendFileSync(data, "\nOnce upon a time there was a new story that was not there before.\n");
  await assert.rejects(finetune(MODEL, { ...common, data: [data], out, resume: true }), (e: Error) => e instanceof MlaError && e.code === "BAD_CHECKPOINT" && /the --data files hold \d+ training \+ \d+ validation tokens here, but \d+ training/.test(e.message));
});

test("trimLogToCheckpoint cuts at the first line written after the checkpoint; loggedSeconds adds the sittings of an older run's log", () => {
  const out = tmpDir();
  const file = path.join(out, "train_log.jsonl");
  const write = (rows: unknown[], tail = "") => fs.writeFileSync(file, rows.map((r) => JSON.stringify(r) + "\n").join("") + tail);
  const base = [{ step: 0, val_nll: 3 }, { step: 1, loss: 2.9, elapsed_s: 1 }, { step: 2, loss: 2.8, elapsed_s: 2 }, { step: 2, val_nll: 2.7 }];
  write(base);
  const before = fs.statSync(file).mtimeMs;
  assert.equal(trimLogToCheckpoint(out, 2, 4), 0, "a periodic validation at the checkpoint's step came before it");
  assert.equal(fs.statSync(file).mtimeMs, before, "nothing to drop: not rewritten");
  write([...base, { step: 3, loss: 2.6, elapsed_s: 3 }], '{"step":4,');
  assert.equal(trimLogToCheckpoint(out, 2, 4), 2);
  assert.deepEqual(fs.readFileSync(file, "utf8").trim().split("\n").map((l) => JSON.parse(l)), base);
  // A checkpoint of the last step: its loss line came before it, the final validation after.
  write([...base.slice(0, 3), { step: 2, val_nll: 2.7 }]);
  assert.equal(trimLogToCheckpoint(out, 2, 2), 1);
  assert.equal(fs.readFileSync(file, "utf8").trim().split("\n").length, 3);
  assert.equal(trimLogToCheckpoint(path.join(out, "none"), 2, 2), 0, "no log: nothing to do");

  // Older runs counted elapsed_s from each sitting's start: 2 s, then 3 s more after a resume at step 2.
  write([...base, { step: 3, loss: 2.6, elapsed_s: 1.5 }, { step: 4, loss: 2.5, elapsed_s: 3 }, { step: 5, loss: 2.4, elapsed_s: 4 }]);
  assert.equal(loggedSeconds(out, 4), 5);
  assert.equal(loggedSeconds(out, 2), 2);
  assert.equal(loggedSeconds(path.join(out, "none"), 4), 0);
});

test("--resume names a changed --fraction or --val-fraction (not the --data files, which have not changed), and --distill without a --distill-weight nobody gave", async () => {
  const out = path.join(tmpDir(), "run");
  await finetune(MODEL, { ...common, out, shouldStop: () => losses(out) >= 1 });
  const interrupted = snapshot(out);
  const refused = (o: Partial<FinetuneOptions>, re: RegExp) =>
    assert.rejects(finetune(MODEL, { ...common, out, resume: true, ...o }), (e: Error) => {
      assert.ok(e instanceof MlaError && e.code === "BAD_CHECKPOINT", String(e));
      assert.match(e.message, re);
      assert.doesNotMatch(e.message, /have changed|--distill-weight/);
      return true;
    });
  await refused({ fraction: 0.5 }, /^--resume: --fraction is 0\.5 here but the run in .* was started with 1\n/);
  await refused({ valFraction: 0.2 }, /^--resume: --val-fraction is 0\.2 here but the run in .* was started with 0\.05\n/);
  await refused({ distill: MODEL }, /^--resume: --distill is .*stories260K here but the run in .* was started without it\n/);
  assert.deepEqual(snapshot(out), interrupted, "a refused resume writes nothing");
});

test("--resume of a damaged checkpoint (state.safetensors cut short, state.json not JSON) says to start over with --force, the flag that does", async () => {
  const out = path.join(tmpDir(), "run");
  await finetune(MODEL, { ...common, out, shouldStop: () => losses(out) >= 1 });
  const file = path.join(out, "checkpoint", "state.safetensors");
  fs.truncateSync(file, fs.statSync(file).size >> 1);
  const damaged = (re: RegExp) => (e: Error) => e instanceof MlaError && e.code === "BAD_CHECKPOINT" && re.test(e.message) && /hint: .*--force instead of --resume/.test(e.message);
  await assert.rejects(finetune(MODEL, { ...common, out, resume: true }), damaged(/state\.safetensors: /));
  fs.writeFileSync(path.join(out, "checkpoint", "state.json"), "{bad");
  await assert.rejects(finetune(MODEL, { ...common, out, resume: true }), damaged(/state\.json: not valid JSON/));
});

test("--resume into a folder that does not exist says there is no run there (a run stopped before its first step keeps nothing), not that a checkpoint is missing", async () => {
  const out = path.join(tmpDir(), "never");
  await assert.rejects(finetune(MODEL, { ...common, out, resume: true }), (e: unknown) => e instanceof MlaError && e.code === "NOT_FOUND" && /--resume: \S*never does not exist: there is no run there to resume/.test(e.message) && /hint: train without --resume to start it/.test(e.message));
  assert.equal(fs.existsSync(out), false, "nothing made");
});

test("a run's finetune.json of another shape (an eval result written over it) is named on --resume, not read into a TypeError; a run stopped before its first checkpoint points to --force both ways", async () => {
  const out = path.join(tmpDir(), "run");
  const base: FinetuneOptions = { data: [DATA], out, tokens: 2048, seq: 64, batch: 4, device: "cpu", progress: null };
  await finetune(MODEL, base);
  fs.writeFileSync(path.join(out, "finetune.json"), JSON.stringify({ model: "m", nll: 1 }));
  await assert.rejects(finetune(MODEL, { ...base, resume: true }), (e: unknown) => e instanceof MlaError && e.code === "BAD_CHECKPOINT" && /finetune\.json is not a finished run's summary \(no numeric "steps", "tokens", "seconds"\)\n  hint: delete /.test(e.message));
  // A folder holding only a run's log: nothing to resume.
  const early = path.join(tmpDir(), "early");
  fs.mkdirSync(early);
  fs.writeFileSync(path.join(early, "train_log.jsonl"), '{"step": 1, "loss": 3}\n');
  await assert.rejects(finetune(MODEL, { ...base, out: early }), (e: unknown) => e instanceof MlaError && /holds a run stopped before its first checkpoint: nothing to resume\n  hint: pass --force to start over/.test(e.message));
  await assert.rejects(finetune(MODEL, { ...base, out: early, resume: true }), (e: unknown) => e instanceof MlaError && /no checkpoint in [\s\S]*hint: the run there stopped before its first checkpoint: start it over with --force/.test(e.message));
});

test("saveEveryMinutes: a checkpoint after the first step that ends that long after the last save (study's default), beside saveEvery's; refused outside [0, ∞) by its flag (--save-every-minutes)", async () => {
  // The checkpoint's step as each step ends (shouldStop is polled after the step's save; no periodic validation).
  const seen = async (o: Partial<FinetuneOptions>) => {
    const out = path.join(tmpDir(), "run");
    const after = new Map<number, number | null>();
    const shouldStop = () => {
      const step = losses(out);
      const f = path.join(out, "checkpoint", "state.json");
      if (step > 0 && !after.has(step)) after.set(step, fs.existsSync(f) ? (JSON.parse(fs.readFileSync(f, "utf8")) as { step: number }).step : null);
      return false;
    };
    await finetune(MODEL, { ...common, ...o, out, shouldStop });
    return [...after.values()];
  };
  assert.deepEqual(await seen({ saveEveryMinutes: 1e-9 }), [1, 2, 3, 4, 5, 6], "past the interval at every step");
  assert.deepEqual(await seen({ saveEveryMinutes: 60, saveEvery: 4 }), [null, null, null, 4, 4, 4], "not yet due: saveEvery's alone");
  for (const v of [-1, NaN, Infinity]) await assert.rejects(finetune(MODEL, { ...common, out: path.join(tmpDir(), "never"), saveEveryMinutes: v }), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && new RegExp(`^--save-every-minutes ${v} is outside \\[0, ∞\\)`).test(e.message));
});
