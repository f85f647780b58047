/**
 * Learning-rate schedules over `total` optimizer steps (0-based step index):
 * - `wsd` (the MHA2MLA paper's): linear warmup, constant, then 1−sqrt decay over the last (at least two)
 *   `decayFraction` of the steps: lr·(1 − sqrt((s − s0)/(total − s0))), reaching 0 after the end;
 * - `cosine`: linear warmup, then cosine from lr to `minLrFraction`·lr;
 * - `constant`: linear warmup, then lr.
 */
import { MlaError } from "../errors.js";

export const SCHEDULES = ["wsd", "cosine", "constant"] as const;
export type ScheduleName = (typeof SCHEDULES)[number];

export interface Schedule {
  name: ScheduleName;
  lr: number;
  warmupSteps: number;
  /** wsd: fraction of the steps spent decaying. */
  decayFraction: number;
  /** cosine: final lr as a fraction of lr. */
  minLrFraction: number;
}

/**
 * The peak learning rate when none is given, by model size: the paper fine-tunes its 135M–7B
 * conversions at 1e-4; on the 26M mha26m-debian 2e-4 recovers 0.4 nats better than 1e-3 after 500k
 * tokens (docs/benchmarks.md); tiny models such as the bundled stories260K need the larger 1e-3.
 */
export function defaultLr(params: number): number {
  return params < 10e6 ? 1e-3 : params < 100e6 ? 2e-4 : 1e-4;
}

export function parseSchedule(name: string): ScheduleName {
  if ((SCHEDULES as readonly string[]).includes(name)) return name as ScheduleName;
  throw new MlaError("BAD_ARGUMENT", `--schedule ${name} is not known`, `use one of ${SCHEDULES.join(", ")}`);
}

/** The learning rate of 0-based optimizer step `step` of `total` under `s`. */
export function lrAt(s: Schedule, step: number, total: number): number {
  checkScheduleArgs(s, step, total);
  if (step < s.warmupSteps) return (s.lr * (step + 1)) / s.warmupSteps;
  if (s.name === "constant") return s.lr;
  if (s.name === "cosine") {
    const p = (step - s.warmupSteps) / Math.max(1, total - s.warmupSteps);
    return s.lr * (s.minLrFraction + (1 - s.minLrFraction) * 0.5 * (1 + Math.cos(Math.PI * p)));
  }
  // Not before warmup ends: --warmup 0.5 --decay-fraction 0.8 held the peak one step, then dropped it 61%.
  // At least two decay steps where it decays at all: the first is at the peak, so one alone (a run
  // under ~8 steps at the default 0.2) never decayed.
  const decaySteps = s.decayFraction > 0 ? Math.max(Math.round(total * s.decayFraction), Math.min(2, total)) : 0;
  const decayStart = Math.max(s.warmupSteps, total - decaySteps);
  if (step < decayStart) return s.lr;
  return s.lr * (1 - Math.sqrt((step - decayStart) / Math.max(1, total - decayStart)));
}

/**
 * lrAt's arguments, for a script that calls it directly (finetune builds the schedule from checked
 * options): a NaN or a fraction would come back as a NaN learning rate, which AdamW then spreads into
 * every weight.
 */
function checkScheduleArgs(s: Schedule, step: number, total: number): void {
  if (typeof s !== "object" || s === null) throw new MlaError("BAD_ARGUMENT", `lrAt's schedule is ${s === null ? "null" : typeof s}`, "pass { name: \"wsd\", lr: 1e-4, warmupSteps: 10, decayFraction: 0.2, minLrFraction: 0.1 }");
  const bad = !(SCHEDULES as readonly string[]).includes(s.name) ? `name ${JSON.stringify(s.name)} (one of ${SCHEDULES.join(", ")})`
    : !(Number.isFinite(s.lr) && s.lr >= 0) ? `lr ${s.lr} (a finite number ≥ 0)`
    : !(Number.isInteger(s.warmupSteps) && s.warmupSteps >= 0) ? `warmupSteps ${s.warmupSteps} (a whole number ≥ 0)`
    : !(s.decayFraction >= 0 && s.decayFraction <= 1) ? `decayFraction ${s.decayFraction} (in [0, 1])`
    : !(s.minLrFraction >= 0 && s.minLrFraction <= 1) ? `minLrFraction ${s.minLrFraction} (in [0, 1])`
    : !(Number.isInteger(total) && total >= 1) ? `total ${total} (a whole number of steps ≥ 1)`
    : !(Number.isInteger(step) && step >= 0) ? `step ${step} (a whole number ≥ 0, counted from 0)` : null;
  if (bad) throw new MlaError("BAD_ARGUMENT", `lrAt's ${bad} is out of range`, "its fields are finetune()'s options lr, warmup (in steps here), decayFraction and minLrFraction");
}
