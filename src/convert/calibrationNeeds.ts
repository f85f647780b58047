/**
 * The conversion options that read calibration text (`--calib`): which of them a conversion uses
 * (so the pipeline reads the windows only then), the refusal when it is missing, and those of a text
 * or windows nothing reads; shared by both output formats, so each option's reason is written once.
 */
import path from "node:path";
import { MlaError, refuseInert } from "../errors.js";
import { calibrationWindows, DEFAULT_CALIB_LEN, DEFAULT_CALIB_SAMPLES, readTextOrJsonl } from "../ropeSelect/calibrate.js";
import { checkIdsInVocab, loadTokenizer } from "../io/tokenizer.js";
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
  // The pipeline's command line fills the default in (its run identity), so a count equal to it reads as the default.
  return `note: ${file} holds ${windows.length} calibration windows of ${len} tokens (${asked === undefined || asked === DEFAULT_CALIB_SAMPLES ? `the default is ${want}` : `asked for ${want}`})`;
}

/**
 * Windows a caller has cut already through readCalibrationWindows (its warning and note said then):
 * `windows`, `samples` of `len` tokens from `file`. The pipeline cuts them in its up-front checks, before
 * any phase, and hands them to the phase that calibrates, which takes them instead of reading the text again.
 */
export interface CutCalibration {
  file: string;
  samples: number;
  len: number;
  windows: Int32Array[];
}

/**
 * The windows of `calib` (none without one) that convert, convert --format deepseek and export calibrate
 * on, `samples` of `len` tokens (`asked`: the --calib-samples given, for the note), cut with the model's
 * tokenizer in `dir`, and what the user is told on the way, alike in all three: a --calib-len past the
 * model's positions (a warning) and a text holding fewer windows than asked (a note). `cut`: windows cut
 * before (the pipeline's, from the source model, whose tokenizer every phase's model keeps), taken as
 * they are, with nothing said again, where they are of the same text and settings.
 */
export function readCalibrationWindows(dir: string, calib: string | null | undefined, samples: number, len: number, asked: number | undefined, config: Pick<ModelConfig, "maxPositions" | "bosTokenId" | "vocabSize">, log: Logger, cut: CutCalibration | null = null): Int32Array[] {
  if (!calib) return [];
  if (cut && cut.file === calib && cut.samples === samples && cut.len === len) return cut.windows;
  const past = pastPositionsWarning("--calib-len", len, config.maxPositions, "the calibration statistics come from positions the model was not pretrained for");
  if (past) log.warn(past);
  const windows = calibrationWindows(loadTokenizer(dir), readTextOrJsonl(calib), samples, len, config.bosTokenId, calib);
  // Checked here, before any work: the embedding refused such an id only at calibration (a dry run passed), naming neither file.
  for (const w of windows) checkIdsInVocab(w, config.vocabSize, `--calib ${calib}`, dir);
  const short = fewerWindowsNote(calib, windows, asked, len);
  if (short) log.info(short);
  return windows;
}

/**
 * The pipeline's windows of `calib` (null without one), cut once before any phase runs so that a
 * --calib-len the text cannot fill is refused, and one past the model's positions warned of, in
 * convert's words before the first phase rather than when the phase that calibrates starts (the
 * bias-free export's, after the fine-tune). `samples` and `len` as given (the defaults filled in here).
 */
export function cutCalibration(dir: string, calib: string | null | undefined, samples: number | undefined, len: number | undefined, config: Pick<ModelConfig, "maxPositions" | "bosTokenId" | "vocabSize">, log: Logger): CutCalibration | null {
  if (!calib) return null;
  const s = samples ?? DEFAULT_CALIB_SAMPLES, l = len ?? DEFAULT_CALIB_LEN;
  return { file: calib, samples: s, len: l, windows: readCalibrationWindows(dir, calib, s, l, samples, config, log) };
}
