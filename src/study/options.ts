/**
 * Everything a study call checks before it takes its folder or trains anything: a mistake the third
 * run would meet must not cost the two runs before it, nor leave a folder that the corrected command
 * then needs --force for. The checks run in this order (the first mistake is the one named).
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError } from "../errors.js";
import { refuseOutOverInputs } from "../io/outGuard.js";
import { configShape, planMemory, trainingPrecision } from "../finetune/trainState.js";
import { resolveModel } from "../io/modelDir.js";
import { readHfConfig } from "../io/hfConfig.js";
import type { ModelConfig } from "../model/config.js";
import { checkFinetuneOptions } from "../finetune/options.js";
import { checkDataFile } from "../finetune/data.js";
import { selectBackend, type DeviceName } from "../backends/select.js";
import { silentLogger, type Logger } from "../util/log.js";
import { checkOptionTypes, type OptionKinds } from "../util/optionTypes.js";
import { refuseFileAsOutDir } from "../io/atomicDir.js";
import { throwIfAborted } from "../util/abort.js";
import { refuseLockedInside } from "../io/outLock.js";
import { likeConfig } from "./init.js";
import { plannedRuns, type StudyRun } from "./runs.js";
import { foldersWritten } from "./studyState.js";
import type { StudyOptions } from "./study.js";

const STUDY_KINDS: OptionKinds<StudyOptions> = {
  like: "string",
  variants: "string[]",
  ranks: "string[]",
  data: "string",
  tokens: "number",
  out: "string",
  seq: "number",
  batch: "number",
  lr: "number",
  seed: "number",
  valFraction: "number",
  evalEvery: "number",
  gateDim: "number",
  saveEvery: "number",
  device: "string",
  force: "boolean",
  logger: "object",
  progress: "object",
  shouldStop: "function",
  signal: "object",
};

/** A checked call with its defaults filled in, each chosen once here: what the folder, the runs and the report all read. */
export interface CheckedStudy {
  log: Logger;
  /** --like's model folder, resolved. */
  like: string;
  c: ModelConfig;
  runs: StudyRun[];
  ranks: readonly string[];
  seq: number;
  batch: number;
  lr: number;
  seed: number;
  valFraction: number;
  device: DeviceName;
}

/** Refuses a call that could not finish (the first mistake, by its flag) before any work. */
export function checkStudy(o: StudyOptions): CheckedStudy {
  checkOptionTypes("study()", o, STUDY_KINDS, ["like", "variants", "data", "tokens", "out"]);
  throwIfAborted(o.signal);
  const log = o.logger ?? silentLogger;
  const { dir: like } = resolveModel(o.like);
  refuseOutOverInputs("--out", o.out, [{ name: "--like's model folder", path: like }, { name: "--data", path: o.data }]);
  // A file there would be taken for another study's folder, and --force would delete it.
  refuseFileAsOutDir(o.out);
  if (!fs.existsSync(o.data)) throw new MlaError("NOT_FOUND", `--data ${o.data} does not exist`, "check the path; nothing was changed");
  // Empty, a folder, not text (an .xz file: not xz data) by its first bytes: refused before any work.
  checkDataFile(o.data);
  // readHfConfig first: it names a config.json that is not JSON, which likeConfig would read raw.
  const c = readHfConfig(like);
  likeConfig(like);
  const { runs, ranks } = plannedRuns(o, c);
  // A run's folder another run holds (a fine-tune in OUT/mla-L32-trained) is refused now, not when that run starts.
  refuseLockedInside(o.out, foldersWritten(path.resolve(o.out), runs, !!o.force));
  const seq = o.seq ?? 256, batch = o.batch ?? 16, lr = o.lr ?? 1e-3;
  const seed = o.seed ?? 0;
  const valFraction = o.valFraction ?? 0.01;
  const device = o.device ?? "auto";
  // The runs' fine-tunes check these too, but only as each starts: after the runs before it.
  checkFinetuneOptions({ tokens: o.tokens, seq, batch, lr, seed, valFraction, evalEvery: o.evalEvery ?? undefined, saveEvery: o.saveEvery ?? undefined });
  checkValidation(o.evalEvery ?? undefined, valFraction);
  const backend = selectBackend(device, log);
  // Each run's fine-tune checks its memory as it starts, after the runs before it, with finetune's
  // advice (--accum, --train, --checkpoint-activations: no study flags): the MHA run (the most weights)
  // is checked now, with the study's.
  const shrink = `a smaller --batch or --seq (a study trains every weight of each variant, ${batch} × ${seq} tokens a step)`;
  planMemory(configShape(c, backend), { train: "all", checkpoint: false, fullLogits: false }, trainingPrecision(undefined, backend), batch * (seq - 1), silentLogger, shrink);
  return { log, like, c, runs, ranks, seq, batch, lr, seed, valFraction, device };
}

/**
 * What the study reads from each run's validation: its NLL (the table, the claims) and its curve. A
 * fine-tune takes evalEvery 0 (no periodic validation) and valFraction 0 (no held-out text); a study
 * run that way would have no curve or no NLL to report (a null NLL failed its report as a TypeError).
 */
function checkValidation(evalEvery: number | undefined, valFraction: number): void {
  if (evalEvery === 0) throw new MlaError("BAD_ARGUMENT", "--eval-every 0 turns validation off, and the study's curves and claims are made of validation NLL", "leave --eval-every out (20 points per run) or give a positive number of steps");
  if (valFraction === 0) throw new MlaError("BAD_ARGUMENT", "valFraction 0 holds no text out, and the study compares the runs by validation NLL", "leave valFraction out (the last 1% of the data) or give a fraction in (0, 1)");
}
