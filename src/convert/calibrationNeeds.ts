/**
 * The conversion options that read calibration text (`--calib`): which of them a conversion uses
 * (so the pipeline reads the windows only then), the refusal when it is missing, and those of a text
 * or windows nothing reads; shared by both output formats, so each option's reason is written once.
 */
import path from "node:path";
import { MlaError, refuseInert } from "../errors.js";
import { calibrationWindows, DEFAULT_CALIB_SAMPLES, readTextOrJsonl } from "../ropeSelect/calibrate.js";
import { loadTokenizer } from "../io/tokenizer.js";
import { pastPositionsWarning, type ModelConfig } from "../model/config.js";
import type { Logger } from "../util/log.js";

export interface CalibrationUses {
  ropeStrategy?: string;
  svdInit?: string;
  refitOutput?: boolean;
  kvSplit?: string;
}

/** Every option that reads calibration text: whether `o` has it on, its flag, what it does with the text. */
const READERS: [(o: CalibrationUses) => boolean, string, string][] = [
  [(o) => o.ropeStrategy === "2-norm", "--rope-strategy 2-norm", "ranks the frequency pairs by query and key norms measured on it"],
  [(o) => o.svdInit === "activations", "--svd-init activations", "weights the factorization by the activations it produces"],
  [(o) => o.refitOutput === true, "--refit-output", "fits o_proj on it"],
  [(o) => o.kvSplit === "per-layer", "--kv-split per-layer", "chooses each layer's split by its attention error on it"],
];

/** The options of `o` that read calibration text: [flag, what it does with the text]. */
function calibrationUses(o: CalibrationUses): [string, string][] {
  return READERS.filter(([on]) => on(o)).map(([, flag, why]) => [flag, why]);
}

/**
 * Refuses (refuseInert's policy) a `calib` our format's settings `o` do not read (the deepseek format
 * reads any it is given): the conversion would come out the same without it. Its rope strategy is the
 * one resolved, so an unread text is one beside an explicit --rope-strategy other than 2-norm.
 */
export function refuseUnreadCalibration(calib: string | null | undefined, o: CalibrationUses): void {
  if (readsCalibration(o)) return;
  const flags = READERS.map(([, flag]) => flag);
  const strategy = o.ropeStrategy === undefined ? "" : `; --rope-strategy ${o.ropeStrategy} does not`;
  refuseInert([["--calib", calib]], `${flags.slice(0, -1).join(", ")} or ${flags[flags.length - 1]}`, `the settings that read calibration text${strategy}`, "add the one you meant");
}

/**
 * Whether our format's conversion with settings `o` reads a calibration text it is given: the rope
 * strategy, when not given, is 2-norm wherever there is a text.
 */
export function conversionReadsCalibration(o: CalibrationUses): boolean {
  return readsCalibration({ ...o, ropeStrategy: o.ropeStrategy ?? "2-norm" });
}

/** Whether any option of `o` reads calibration text. */
export function readsCalibration(o: CalibrationUses): boolean {
  return calibrationUses(o).length > 0;
}

/** Refuses, naming the first option that needs it and why, a conversion without calibration text whose options read some. */
export function requireCalibration(calib: string | null | undefined, o: CalibrationUses): void {
  const first = calib ? undefined : calibrationUses(o)[0];
  if (first) throw new MlaError("BAD_ARGUMENT", `${first[0]} needs calibration text: it ${first[1]}`, "pass --calib FILE (any text in the model's language)");
}

/**
 * Refuses calibration windows (`calibSamples`, `calibLen`) given without the text they are cut from:
 * they would do nothing, and a script that passed them would believe the conversion calibrated
 * (refuseInert's policy). One check for the command line and both library conversions (so `pipeline`
 * too), so all say the same; null counts as not given, as in the option type checks.
 */
export function refuseWindowsWithoutText(o: { calib?: string | null; calibSamples?: number | null; calibLen?: number | null }): void {
  if (o.calib === undefined || o.calib === null) refuseInert([["--calib-samples", o.calibSamples], ["--calib-len", o.calibLen]], "--calib FILE", "settings of the calibration windows");
}

/**
 * What calibration read, for mla_conversion.json (both formats): the text's absolute path, the windows
 * it gave (a short text gives fewer than asked) and their tokens; nothing where no calibration ran.
 */
export function calibrationRecord(file: string | null | undefined, windows: Int32Array[]): { calibration?: { file: string; windows: number; tokens: number } } {
  if (!file || windows.length === 0) return {};
  return { calibration: { file: path.resolve(file), windows: windows.length, tokens: windows.reduce((n, w) => n + w.length, 0) } };
}

/**
 * The note every calibrating command prints when `file` held fewer `windows` of `len` tokens than asked
 * (`asked`: --calib-samples as given, undefined for the default): the run goes on with those (DESIGN.md's
 * protocol), but its statistics rest on fewer tokens than the user counted on. null when it held enough.
 */
export function fewerWindowsNote(file: string | null | undefined, windows: Int32Array[], asked: number | undefined, len: number): string | null {
  const want = asked ?? DEFAULT_CALIB_SAMPLES;
  if (!file || windows.length >= want) return null;
  return `note: ${file} holds ${windows.length} calibration windows of ${len} tokens (${asked === undefined ? `the default is ${want}` : `asked for ${want}`})`;
}

/**
 * The windows of `calib` (none without one) that convert, convert --format deepseek and export calibrate
 * on, `samples` of `len` tokens (`asked`: the --calib-samples given, for the note), cut with the model's
 * tokenizer in `dir`, and what the user is told on the way, alike in all three: a --calib-len past the
 * model's positions (a warning) and a text holding fewer windows than asked (a note).
 */
export function readCalibrationWindows(dir: string, calib: string | null | undefined, samples: number, len: number, asked: number | undefined, config: Pick<ModelConfig, "maxPositions" | "bosTokenId">, log: Logger): Int32Array[] {
  if (!calib) return [];
  const past = pastPositionsWarning("--calib-len", len, config.maxPositions, "the calibration statistics come from positions the model was not pretrained for");
  if (past) log.warn(past);
  const windows = calibrationWindows(loadTokenizer(dir), readTextOrJsonl(calib), samples, len, config.bosTokenId, calib);
  const short = fewerWindowsNote(calib, windows, asked, len);
  if (short) log.info(short);
  return windows;
}
