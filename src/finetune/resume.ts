/**
 * What --resume takes from the run in OUT besides its checkpoint's weights: the proof that it is the
 * same run (a mismatch names each flag that differs, with both values), the validation NLL measured
 * before training (only the run's log has it), the training seconds of earlier sittings where the
 * checkpoint does not record them, and, for a run that has finished, its summary: a finished run is
 * reported as it ended, not finished a second time. The log is first cut back to the checkpoint.
 */
import fs from "node:fs";
import path from "node:path";
import { ioError, MlaError } from "../errors.js";
import { writeFileAtomic } from "../io/atomicDir.js";
import { readJsonObject } from "../io/jsonFile.js";
import type { TrainState as RunState } from "./checkpoint.js";
import type { FinetuneResult } from "./trainer.js";
import type { Precision } from "./trainState.js";

/** Written once the trained model is in OUT: its presence means the run has finished. */
export const SUMMARY_FILE = "finetune.json";

/** One JSON object per line, appended as the run goes: a line per step, validation lines (step 0: before training). */
export const LOG_FILE = "train_log.jsonl";

/** The fields of a log line that resuming reads. */
interface LogRow {
  step?: unknown;
  loss?: unknown;
  val_nll?: unknown;
  elapsed_s?: unknown;
}

/** The flag of each recorded setting (a flattened key); options only the library has keep their own name. */
const FLAGS: Record<string, string> = {
  model: "MODEL",
  data: "--data",
  tokens: "--tokens",
  fraction: "--fraction",
  valFraction: "--val-fraction",
  valTokens: "--val-tokens",
  seq: "--seq",
  batch: "--batch",
  accum: "--accum",
  "schedule.name": "--schedule",
  "schedule.lr": "--lr",
  warmup: "--warmup",
  "schedule.warmupSteps": "the warmup steps (--warmup)",
  "schedule.decayFraction": "--decay-fraction",
  "schedule.minLrFraction": "minLrFraction",
  weightDecay: "--weight-decay",
  clip: "--clip",
  seed: "--seed",
  train: "--train",
  distill: "--distill",
  temperature: "--temperature",
  distillWeight: "--distill-weight",
  precision: "--precision",
};

/** Settings one level deep (the schedule is an object) as `key` and `outer.key` entries. */
function flatten(settings: Record<string, unknown>): Map<string, unknown> {
  const flat = new Map<string, unknown>();
  for (const [k, v] of Object.entries(settings)) {
    if (v !== null && typeof v === "object" && !Array.isArray(v)) for (const [k2, v2] of Object.entries(v)) flat.set(`${k}.${k2}`, v2);
    else flat.set(k, v);
  }
  return flat;
}

/** A value as it would be typed: learning rates as 2e-4 rather than 0.0002. */
export function shown(v: unknown): string {
  if (Array.isArray(v)) return v.map(shown).join(", ");
  return typeof v === "number" && v !== 0 && Math.abs(v) < 1e-2 ? v.toExponential() : String(v);
}

/** One clause per setting whose value here (`now`) differs from the run's in `out` (`was`). */
export function settingDifferences(out: string, was: Record<string, unknown>, now: Record<string, unknown>): string[] {
  const [a, b] = [flatten(was), flatten(now)];
  // Compared on its own (checkSameRun); older checkpoints lack it.
  for (const m of [a, b]) for (const k of [...m.keys()]) if (k.startsWith("dataTokens")) m.delete(k);
  // Runs record the --warmup fraction beside the steps it gives; the steps also follow --tokens and the
  // data, so the fraction is compared where both runs have it (older checkpoints have only the steps).
  const unused = a.has("warmup") && b.has("warmup") ? "schedule.warmupSteps" : "warmup";
  for (const m of [a, b]) m.delete(unused);
  // Without a teacher the KL weight is 0 by construction: a run with and one without --distill differ
  // in --distill, not in a --distill-weight nobody gave.
  if ((a.get("distill") == null) !== (b.get("distill") == null)) for (const m of [a, b]) m.delete("distillWeight");
  const clauses: string[] = [];
  for (const key of new Set([...a.keys(), ...b.keys()])) {
    const [before, here] = [a.get(key), b.get(key)];
    if (JSON.stringify(before) === JSON.stringify(here)) continue;
    const flag = FLAGS[key] ?? key;
    clauses.push(`${flag} ${here == null ? "is not given here" : `is ${shown(here)} here`} but the run in ${out} was started ${before == null ? "without it" : `with ${shown(before)}`}`);
  }
  return clauses;
}

/**
 * Refuses to resume the run in `out` with other flags, before the model is loaded and the data
 * tokenized: `flags` are the run's settings but MODEL and the warmup steps, which checkSameRun compares
 * (a copy of the model resumes; the steps follow the data) with the data's token counts.
 */
export function checkSameFlags(out: string, prior: RunState, flags: Record<string, unknown>): void {
  const { model: _model, dataTokens: _tokens, ...was } = prior.settings;
  if (was["schedule"] !== null && typeof was["schedule"] === "object") {
    const { warmupSteps: _steps, ...schedule } = was["schedule"] as Record<string, unknown>;
    was["schedule"] = schedule;
  }
  const clauses = settingDifferences(out, was, flags);
  if (clauses.length) throw new MlaError("BAD_CHECKPOINT", `--resume: ${clauses.join("; ")}`, "pass the same MODEL and flags to resume, or --force to start over");
}

/**
 * Refuses to resume the run in `out` (checkpoint state `prior`) with other settings: the fingerprint
 * covers MODEL's config.json and every setting `settings` records. A flag that differs is named
 * first: --fraction and --val-fraction also change the tokens the split holds, which were blamed on
 * the --data files ("they have changed") when only the flag had.
 */
export function checkSameRun(out: string, prior: RunState, fingerprint: string, settings: Record<string, unknown>): void {
  const clauses = prior.fingerprint === fingerprint ? [] : settingDifferences(out, prior.settings, settings);
  if (clauses.length) throw new MlaError("BAD_CHECKPOINT", `--resume: ${clauses.join("; ")}`, "pass the same MODEL and flags to resume, or --force to start over");
  // The tokens the --data files hold, recorded but not fingerprinted (older checkpoints have none):
  // text added to or cut from a file changes the epoch, the cursor's meaning and the validation split.
  const [was, now] = [prior.settings["dataTokens"], settings["dataTokens"]];
  if (was !== undefined && JSON.stringify(was) !== JSON.stringify(now)) {
    const t = (x: unknown) => (Array.isArray(x) ? `${x[0]} training + ${x[1]} validation tokens` : String(x));
    throw new MlaError("BAD_CHECKPOINT", `--resume: the --data files hold ${t(now)} here, but ${t(was)} when the run in ${out} was started: they have changed`, "resume with the data the run started with, or --force to start over on this data");
  }
  if (prior.fingerprint === fingerprint) return;
  // What the fingerprint holds beyond the recorded flags: the text of config.json, and the step count the data gives.
  throw new MlaError("BAD_CHECKPOINT", `--resume: MODEL ${String(settings["model"])} (its config.json) or the --data files (their length) are not those the run in ${out} was started with`, "pass the same MODEL and flags to resume, or --force to start over");
}

/** The validation NLL before training, from the first line of the run's log (step 0; absent when the run had no validation tokens). */
export function loggedValNllBefore(out: string): number | null {
  try {
    const first = JSON.parse(fs.readFileSync(path.join(out, LOG_FILE), "utf8").split("\n", 1)[0]!) as LogRow;
    return first.step === 0 && typeof first.val_nll === "number" ? first.val_nll : null;
  } catch {
    return null; // no log: nothing to recover
  }
}

/**
 * The training loss the run's log gives for `step` (its step line), or null without one: a run resumed
 * from the checkpoint of its last step trains no step, and reports this as its final loss, as the
 * uninterrupted run did (the log's JSON holds each loss exactly).
 */
export function loggedLossAt(out: string, step: number): number | null {
  const loss = loggedRows(out).find((row) => row.step === step && typeof row.loss === "number")?.loss;
  return typeof loss === "number" ? loss : null;
}

/**
 * Whether the run's log has a validation line at `step`: a stop during the periodic validation after
 * a step saves that step's checkpoint without one, and the resumed run does that validation first.
 */
export function loggedValNllAt(out: string, step: number): boolean {
  return loggedRows(out).some((row) => row.step === step && row.val_nll !== undefined); // null: the run has no validation tokens
}

/** The rows of the run's log, a torn or non-object line left out (none without a log). */
function loggedRows(out: string): LogRow[] {
  return (logLines(out) ?? []).map(parseRow).filter((row): row is LogRow => row !== null);
}

/** The lines of the run's log (without the newline that ends the last), or null when it has none. */
function logLines(out: string): string[] | null {
  const file = path.join(out, LOG_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw ioError("cannot read the training log", file, e);
  }
  const lines = text.split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  return lines;
}

function parseRow(line: string): LogRow | null {
  try {
    const row = JSON.parse(line) as unknown;
    return row !== null && typeof row === "object" ? (row as LogRow) : null;
  } catch {
    return null;
  }
}

/**
 * Cuts the run's log back to what it held when the checkpoint of step `step` was saved. A crash after
 * that save (kill -9, a lost machine) leaves the lines of later steps, or, when the checkpoint is of
 * the last step (`totalSteps`), the final validation's line: the resumed run writes them again, so
 * they would appear twice. The log is written in order, so every line from the first such one (or a
 * torn one) on came after the checkpoint. Written anew atomically, only when a line is dropped;
 * returns the number dropped.
 */
export function trimLogToCheckpoint(out: string, step: number, totalSteps: number): number {
  const lines = logLines(out);
  if (!lines) return 0;
  const after = lines.findIndex((line) => {
    const row = parseRow(line);
    if (!row || typeof row.step !== "number") return true;
    // At the checkpoint's step its loss line (and a periodic validation, before the last step) came first.
    return row.step > step || (row.step === step && step >= totalSteps && row.loss === undefined);
  });
  if (after < 0) return 0;
  writeFileAtomic(path.join(out, LOG_FILE), lines.slice(0, after).map((l) => l + "\n").join(""));
  return lines.length - after;
}

/**
 * The training seconds of the run up to step `step`, from its log, for a checkpoint that does not
 * record them. Runs that wrote such checkpoints counted each line's elapsed_s from the start of its
 * sitting: where it drops, a sitting began, and the sittings' times are added.
 */
export function loggedSeconds(out: string, step: number): number {
  let [total, last] = [0, 0];
  for (const row of loggedRows(out)) {
    if (typeof row.step !== "number" || row.step > step || row.loss === undefined || typeof row.elapsed_s !== "number") continue;
    if (row.elapsed_s < last) total += last;
    last = row.elapsed_s;
  }
  return total + last;
}

/** The fields of SUMMARY_FILE a finished run is reported from (final_loss, tokens_per_s and sitting are absent in older ones). */
interface Summary {
  steps: number;
  tokens: number;
  seconds: number;
  tokens_per_s?: number;
  sitting?: { steps: number; seconds: number; tokens_per_s: number };
  final_loss?: number;
  val_nll_before: number | null;
  val_nll_after: number | null;
  precision: Precision;
}

/** The result of the finished run in `out` as it ended, or null when it has not finished. */
export function finishedRun(out: string, checkpointStep: number): FinetuneResult | null {
  const file = path.join(out, SUMMARY_FILE);
  if (!fs.existsSync(file)) return null;
  const hint = `delete ${file} and --resume again to redo the end of the run (evaluation and the model files), or --force to start over`;
  const s = readJsonObject(file, { code: "BAD_CHECKPOINT", hint }) as unknown as Summary;
  // A file of another shape (an eval result written over it) is named, not read into a TypeError.
  const missing = (["steps", "tokens", "seconds"] as const).filter((k) => typeof s[k] !== "number");
  if (missing.length) throw new MlaError("BAD_CHECKPOINT", `${file} is not a finished run's summary (no numeric ${missing.map((k) => `"${k}"`).join(", ")})`, hint);
  return {
    out,
    steps: s.steps,
    stoppedEarly: false,
    checkpointStep,
    tokensSeen: s.tokens,
    seconds: s.seconds,
    tokensPerSecond: s.tokens_per_s ?? s.tokens / s.seconds,
    // Older summaries recorded one sitting's figures as the run's.
    sitting: s.sitting ? { steps: s.sitting.steps, seconds: s.sitting.seconds, tokensPerSecond: s.sitting.tokens_per_s } : { steps: s.steps, seconds: s.seconds, tokensPerSecond: s.tokens_per_s ?? s.tokens / s.seconds },
    // Runs resumed before the log was read for it have null here.
    valNllBefore: s.val_nll_before ?? loggedValNllBefore(out),
    valNllAfter: s.val_nll_after,
    finalLoss: s.final_loss ?? NaN,
    precision: s.precision,
  };
}
