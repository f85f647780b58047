/**
 * `mha2mla study`: attention variants trained from scratch on the same data, order, schedule and
 * budget (Mehta et al. 2025's small-model MLA study, plus EG-MLA). Every variant starts from one
 * seeded MHA initialization with the shape and tokenizer of `--like`: MHA as is, the MLA variants as
 * its conversion at the chosen latent width (mla: no RoPE pairs, the paper's "MLA"; mla-rope: partial
 * RoPE on head_dim/16 pairs per KV head, our form of "MLA + RoPE"; eg-mla: mla-rope with EG-MLA's
 * token gate). Each is trained with the fine-tuning engine (which is all a from-scratch run needs),
 * then measured: held-out NLL and its curve, KV bytes per token, decode tokens/s. Writes study.json,
 * report.md and report.html (a table and the validation curves) into the output folder.
 *
 * Resumable: each finished variant leaves NAME.row.json; re-running the same command (same settings; the
 * variant and rank lists may change, finished runs are kept)
 * skips those, continues an interrupted training run from its last checkpoint (bit-identical to an
 * uninterrupted one), and writes the report when all are done. A run saves a checkpoint when stopped
 * (Ctrl-C) and periodically (--save-every, by default every STUDY_SAVE_MINUTES minutes of training),
 * so a hard kill (kill -9, a lost GPU lease) loses only the steps after the last one. A study longer
 * than one sitting (or one GPU lease) is run in several. The training text (an .xz file decompressed in memory) is
 * tokenized once: its token stream is cached in OUT/tokens/ and read back by every variant and every
 * resumed run.
 *
 * study() is the entry and its types; its steps each have a file, to be read one at a time: which runs
 * (runs.ts), the checks before any work (options.ts), the folder across calls (studyState.ts), the
 * runs' training and measurement (trainRuns.ts), the report (results.ts).
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError } from "../errors.js";
import type { DeviceName } from "../backends/select.js";
import type { Logger } from "../util/log.js";
import type { ProgressSink } from "../util/progress.js";
import { refuseLockedInside, withOutLock } from "../io/outLock.js";
import type { ClaimCheck } from "./claims.js";
import type { StudyVariant } from "./runs.js";
import { checkStudy } from "./options.js";
import { foldersWritten, keptWork, openStudyState, studySettings } from "./studyState.js";
import { trainRuns } from "./trainRuns.js";
import { writeResults } from "./results.js";

export { STUDY_VARIANTS, STUDY_RANKS, latentWidth, plannedRuns, type StudyVariant } from "./runs.js";
export { STUDY_SAVE_MINUTES } from "./trainRuns.js";

export interface StudyOptions {
  /** A model folder whose config (shape) and tokenizer every variant takes; its weights are not used. */
  like: string;
  variants: readonly StudyVariant[];
  /** Latent widths per token and layer of the MLA variants: "d/2", "d/4" (of the hidden size) or a number; default STUDY_RANKS. Only with an MLA variant. */
  ranks?: readonly string[];
  /** Training text (.txt or .jsonl, or .xz of either: decompressed in memory by the xz tool, tokenized once into OUT/tokens). */
  data: string;
  tokens: number;
  out: string;
  seq?: number;
  batch?: number;
  /** Peak learning rate (default 1e-3: from-scratch training of small models). */
  lr?: number;
  seed?: number;
  valFraction?: number;
  /** Validation NLL every this many steps (the curves; default: 20 points per run). */
  evalEvery?: number;
  /** EG-MLA's gate width (default DEFAULT_GATE_DIM); only with the eg-mla variant. */
  gateDim?: number;
  /**
   * A training checkpoint every this many steps of each run (0: only when stopped, as by Ctrl-C).
   * Default: after every STUDY_SAVE_MINUTES minutes of training, so that a hard kill (kill -9, a lost
   * GPU lease) loses at most that much of the run under way, which the same call then resumes from
   * its last checkpoint.
   */
  saveEvery?: number;
  device?: DeviceName;
  force?: boolean;
  logger?: Logger;
  progress?: ProgressSink | null;
  /** Polled between training steps: true saves a checkpoint and stops (stoppedEarly); re-run to resume. */
  shouldStop?: () => boolean;
  /**
   * Aborting it stops the run under way at its next safe point (a conversion after its layer, training
   * after its step, with a checkpoint, the decode measurement after its forward pass) and throws MlaError
   * INTERRUPTED. Finished runs are kept and nothing half-written is: the same call resumes the interrupted
   * run exactly (a run stopped in its measurement is measured again, not trained).
   */
  signal?: AbortSignal;
}

export interface StudyRow {
  variant: StudyVariant;
  label: string;
  /** Latent width per token and layer (null for MHA). */
  latentDim: number | null;
  ropePairs: number | null;
  params: number;
  kvElemsPerToken: number;
  /** The KV cache of a bf16 model, all layers. */
  kvBytesPerTokenBf16: number;
  valNll: number;
  /** [step, validation NLL] through training. */
  curve: [number, number][];
  trainTokensPerS: number;
  decodeTokensPerS: number;
}

export interface StudyResult {
  /** The variants finished so far (all of them unless stoppedEarly). */
  rows: StudyRow[];
  /** null when stopped early. */
  report: string | null;
  html: string | null;
  stoppedEarly: boolean;
  /** The paper's claims checked against the rows, as study.json and the report give them; null when stopped early. */
  claims: ClaimCheck[] | null;
}

export async function study(o: StudyOptions): Promise<StudyResult> {
  const made = { fresh: false };
  try {
    return await runStudy(o, made);
  } catch (e) {
    // A study this call started: a failure before any of its runs kept work (a bad --seq for the
    // data, a model without a tokenizer, a broken .xz) leaves no folder to block the corrected command.
    if (made.fresh && !(e instanceof MlaError && e.code === "INTERRUPTED") && !keptWork(o.out)) fs.rmSync(o.out, { recursive: true, force: true });
    throw e;
  }
}

/** The study; sets `made.fresh` once it has made (or emptied, with --force) its folder. */
async function runStudy(o: StudyOptions, made: { fresh: boolean }): Promise<StudyResult> {
  const s = checkStudy(o);
  const settings = studySettings(o, s);
  // The study's folder is held from here to the end (a second study there at once interleaved their logs).
  const existed = fs.existsSync(o.out);
  return withOutLock(o.out, { command: "study", log: s.log }, async () => {
    // Again, now that no run can start inside --out: one may have while the options were checked.
    refuseLockedInside(o.out, foldersWritten(path.resolve(o.out), s.runs, !!o.force));
    openStudyState(o, s.ranks, settings, existed, made, s.log);
    const ran = await trainRuns(o, s);
    if (ran.stoppedEarly) return { rows: ran.rows, report: null, html: null, stoppedEarly: true, claims: null };
    return writeResults(o, s, ran.rows);
  });
}
