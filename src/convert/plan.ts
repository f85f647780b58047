/** Validates conversion options against the model and derives what the conversion will produce. */
import fs from "node:fs";
import path from "node:path";
import { booleanFlag, MlaError, refuseInert } from "../errors.js";
import { refuseOutOverInputs, within, type InputPath } from "../io/outGuard.js";
import { refuseExisting, requireWritableParent } from "../io/atomicDir.js";
import { kvElemsPerToken, latentWidth, ModelConfig } from "../model/config.js";
import { checkDisjoint, checkRopePairs, defaultRopePairs, parseStrategy, RopeStrategy } from "../ropeSelect/strategies.js";
import type { OptionKinds } from "../util/optionTypes.js";
import type { Logger } from "../util/log.js";
import { maxRank, maxRankNote } from "./factor.js";
import { budgetSplits, equalBudgetRank, KV_SPLIT_MODES, KvSplitMode } from "./kvSplit.js";
import { readsCalibration, refuseUnreadCalibration, refuseWindowsWithoutText, requireCalibration } from "./calibrationNeeds.js";
import { checkWindowShape, DEFAULT_CALIB_LEN, DEFAULT_CALIB_SAMPLES } from "../ropeSelect/calibrate.js";
import { checkTextFile } from "../eval/perplexity.js";
import { checkDevice } from "../backends/select.js";
import { percentChange } from "../util/percent.js";

/** EG-MLA's gate embedding width per layer when --gate-dim is not given (convert, pipeline, study, their help). */
export const DEFAULT_GATE_DIM = 16;

export interface ConversionSettings {
  rank: number;
  ropePairs: number;
  ropeStrategy: RopeStrategy;
  /** No frequency kept by two KV heads of a layer (exportable exactly to DeepSeek-V3's shared rope key). */
  ropeDisjoint: boolean;
  svd: "joint" | "split";
  svdInit: "weights" | "activations";
  /** Balance keys against values before the joint SVD (TransMLA's BKV; function-preserving). Default on: it lowers the converted NLL on stories260K and mha26m-debian, in both formats (docs/benchmarks.md). */
  balanceKv: boolean;
  /** Refit each layer's o_proj by least squares on the calibration text (`--refit-output`). */
  refitOutput: boolean;
  calib: string | null;
  calibSamples: number;
  calibLen: number;
  /** EG-MLA's gate embedding width per layer; 0 = plain MLA. */
  gateDim: number;
  /** "per-layer": each layer's (R, rank) chosen from calibration at the bytes of (ropePairs, rank) (`--kv-split`). */
  kvSplit: KvSplitMode;
  /** per-layer: the rope pairs tried per layer, ascending (each with its equal-bytes rank); null for uniform. */
  kvSplitPairs: number[] | null;
}

/**
 * The settings as convert() returns them (ConvertResult.plan, so `convert --json`) and
 * mla_conversion.json and report.json record them: the calibration text and its windows only where
 * calibration runs, null where none does (no --calib: one no setting reads is refused). resolveSettings
 * fills in the default 32 × 256 windows either way, and a record of those would say the conversion
 * calibrated.
 */
export type RecordedSettings = Omit<ConversionSettings, "calib" | "calibSamples" | "calibLen"> & { calib: string | null; calibSamples: number | null; calibLen: number | null };

/** `s` as recorded (RecordedSettings): the calibration settings only where a setting of `s` reads the text. */
export function recordedSettings(s: ConversionSettings): RecordedSettings {
  return s.calib !== null && readsCalibration(s) ? s : { ...s, calib: null, calibSamples: null, calibLen: null };
}

export interface KvAccounting {
  elems_per_token: number;
  bytes_per_token: number;
}

export interface ConversionPlan {
  /** What the conversion uses (RecordedSettings): calib, calibSamples and calibLen are null where no calibration runs. */
  settings: RecordedSettings;
  /** The latent width of (ropePairs, rank); with --kv-split per-layer the layers' widths differ but their cache adds up to the same `after`. */
  latentDim: number;
  before: KvAccounting;
  after: KvAccounting;
  /** (after − before) / before, in percent (negative = smaller cache). */
  kvChangePercent: number;
}

export interface SettingsInput {
  rank: number;
  ropePairs?: number;
  ropeStrategy?: RopeStrategy;
  /** Pairs chosen so no two KV heads of a layer share a frequency (`--rope-disjoint`). */
  ropeDisjoint?: boolean;
  svd?: "joint" | "split";
  svdInit?: "weights" | "activations";
  /** Default true; refused (either way) with svd "split", which balances nothing. */
  balanceKv?: boolean;
  /** After factoring, refit each layer's o_proj on the calibration text (src/convert/refitOutput.ts); needs calib. */
  refitOutput?: boolean;
  /** Calibration text; refused where no setting reads it (an explicit --rope-strategy other than 2-norm, and nothing else that reads it). */
  calib?: string;
  /** Windows of `calib` (default 32, or as many as it holds) and their length, BOS included (default 256); refused without calib. */
  calibSamples?: number;
  calibLen?: number;
  /** "eg-mla" adds EG-MLA's token-embedding gate on the latent (docs/method.md); default "mla". */
  attention?: "mla" | "eg-mla";
  /** EG-MLA: the gate embedding's width per layer (default DEFAULT_GATE_DIM). */
  gateDim?: number;
  /** "per-layer" chooses each layer's split of the KV budget of (ropePairs, rank) from calibration (needs calib); default "uniform". */
  kvSplit?: KvSplitMode;
  /** per-layer: the rope pairs to try (default R + k·max(1, round(R/2)), src/convert/kvSplit.ts). */
  kvSplitPairs?: number[];
}

/**
 * Refuses the settings of `o` that cannot take effect beside its others and need no model to tell
 * (refuseInert's policy): the calibration windows without their text, and balancing (either way)
 * under the split SVD, which factors keys and values each alone, where a scale would cancel out. The
 * command line asks it before resolving the model; resolveSettings asks it too (so every library caller).
 */
export function refuseInertSettings(o: SettingsInput): void {
  refuseWindowsWithoutText(o);
  if (o.svd === "split") refuseInert([[booleanFlag("balance-kv", o.balanceKv), o.balanceKv]], "--svd joint", "keys are balanced against values only for the joint SVD of [keys; values]", "use --svd joint");
}

/** The JavaScript types of SettingsInput, for the entry checks of the functions that take them. */
export const SETTINGS_KINDS: OptionKinds<SettingsInput> = {
  rank: "number",
  ropePairs: "number",
  ropeStrategy: "string",
  ropeDisjoint: "boolean",
  svd: "string",
  svdInit: "string",
  balanceKv: "boolean",
  refitOutput: "boolean",
  calib: "string",
  calibSamples: "number",
  calibLen: "number",
  attention: "string",
  gateDim: "number",
  kvSplit: "string",
  kvSplitPairs: "number[]",
};

/** The refusal of a source that is already MLA, saying which kind (a deepseek_v3 folder has no mha2mla section). */
export function alreadyMla(c: ModelConfig, hint: string): MlaError {
  const what = c.attention.kind === "deepseek" ? "a deepseek_v3 checkpoint (config.json has model_type deepseek_v3)" : "an MLA checkpoint (config.json has an mha2mla section)";
  return new MlaError("BAD_ARGUMENT", `the model is already ${what}`, hint);
}

export function resolveSettings(c: ModelConfig, o: SettingsInput, log: Logger): ConversionSettings {
  if (c.attention.kind !== "mha") throw alreadyMla(c, "convert the original MHA/GQA model");
  const half = c.headDim / 2;
  const R = o.ropePairs ?? defaultRopePairs(c.headDim);
  checkRopePairs(R, 0, c.headDim, `use an integer in 0…${half} (default ${defaultRopePairs(c.headDim)}: head_dim/16 rounded down, at least 1)`);
  const svd = o.svd ?? "joint";
  if (svd !== "joint" && svd !== "split") throw new MlaError("BAD_ARGUMENT", `--svd ${svd} is not known`, "use joint or split");
  const svdInit = o.svdInit ?? "weights";
  if (svdInit !== "weights" && svdInit !== "activations") throw new MlaError("BAD_ARGUMENT", `--svd-init ${svdInit} is not known`, "use weights or activations");
  refuseInertSettings(o);
  const top = maxRank(svd, c.kvHeads, c.headDim, R, c.hiddenSize);
  if (top < 1) throw new MlaError("BAD_ARGUMENT", `--svd split needs position-free key dims, but --rope-pairs ${R} keeps all ${half} pairs`, `use --svd joint or --rope-pairs < ${half}`);
  if (!Number.isInteger(o.rank) || o.rank < 1 || o.rank > top) {
    const what = typeof o.rank === "number" && Number.isFinite(o.rank) && !Number.isInteger(o.rank) ? "is not a whole number" : `is out of range for this model with --rope-pairs ${R} and --svd ${svd}`;
    throw new MlaError("BAD_ARGUMENT", `--rank ${o.rank} ${what}`, `use an integer in 1…${top} (latent dims per KV head; ${maxRankNote(svd, c.kvHeads, c.headDim, R, c.hiddenSize)})`);
  }
  const calib = o.calib ?? null;
  checkCalibFile(calib);
  let strategy = o.ropeStrategy === undefined ? undefined : parseStrategy(o.ropeStrategy);
  if (!strategy) {
    strategy = calib ? "2-norm" : "uniform";
    if (!calib) log.info(`note: no --calib given, so --rope-strategy uniform (pass --calib FILE for the paper's 2-norm selection)`);
  }
  const refitOutput = o.refitOutput ?? false;
  const attention = o.attention ?? "mla";
  if (attention !== "mla" && attention !== "eg-mla") throw new MlaError("BAD_ARGUMENT", `--attention ${attention} is not known`, "use mla or eg-mla");
  if (attention !== "eg-mla") refuseInert([["--gate-dim", o.gateDim]], "--attention eg-mla", "EG-MLA's gate width");
  const gateDim = attention === "eg-mla" ? (o.gateDim ?? DEFAULT_GATE_DIM) : 0;
  if (attention === "eg-mla" && (!Number.isInteger(gateDim) || gateDim < 1)) throw new MlaError("BAD_ARGUMENT", `--gate-dim ${o.gateDim} is not a positive integer`, `use for example ${DEFAULT_GATE_DIM} (the gate table holds vocab × gate-dim values per layer)`);
  const ropeDisjoint = o.ropeDisjoint ?? false;
  if (ropeDisjoint) checkDisjoint(c.kvHeads, R, half);
  const kvSplit = o.kvSplit ?? "uniform";
  if (!KV_SPLIT_MODES.includes(kvSplit)) throw new MlaError("BAD_ARGUMENT", `--kv-split ${kvSplit} is not known`, `use ${KV_SPLIT_MODES.join(" or ")}`);
  if (kvSplit === "uniform") refuseInert([["--kv-split-pairs", o.kvSplitPairs]], "--kv-split per-layer", "the rope pairs it tries per layer");
  // Keeping no pair or every pair (one count for all layers) leaves 2-norm nothing to rank: it reads no text then.
  const choiceless = kvSplit === "uniform" && (R === 0 || R === half);
  const reads = { ropeStrategy: choiceless ? undefined : strategy, svdInit, refitOutput, kvSplit };
  requireCalibration(calib, reads);
  if (calib && choiceless && !readsCalibration(reads))
    throw new MlaError("BAD_ARGUMENT", `--calib has no effect here: --rope-pairs ${R} keeps ${R === 0 ? "no" : "every"} frequency pair, so 2-norm has no pairs to rank, and no other setting reads calibration text`, "leave out --calib (--svd-init activations, --refit-output and --kv-split per-layer read it, if you meant one)");
  if (calib) refuseUnreadCalibration(calib, reads);
  const calibSamples = o.calibSamples ?? DEFAULT_CALIB_SAMPLES, calibLen = o.calibLen ?? DEFAULT_CALIB_LEN;
  checkWindowShape(calibSamples, calibLen);
  const kvSplitPairs = kvSplit === "per-layer" ? budgetSplits({ kvHeads: c.kvHeads, headDim: c.headDim, hidden: c.hiddenSize }, { ropePairs: R, rank: o.rank, svd, ropeDisjoint }, o.kvSplitPairs).map((x) => x.ropePairs) : null;
  // One candidate: scoring every layer would only pick it, the uniform conversion, minutes later.
  if (kvSplitPairs?.length === 1)
    throw new MlaError("BAD_ARGUMENT", `--kv-split per-layer has nothing to choose: only --rope-pairs ${R} spends the bytes of --rank ${o.rank} within the SVD's limits`, "raise --rank or lower --rope-pairs so other splits fit the budget, list them with --kv-split-pairs, or leave --kv-split out");
  return { rank: o.rank, ropePairs: R, ropeStrategy: strategy, ropeDisjoint, svd, svdInit, balanceKv: svd === "split" ? false : (o.balanceKv ?? true), refitOutput, calib, calibSamples, calibLen, gateDim, kvSplit, kvSplitPairs };
}

/**
 * The shapes of the model `s` converts `c` to, every layer with `ropePairs` and the rank that spends the
 * settings' KV bytes on them (equalBudgetRank; by default the settings' own split); no pairs selected.
 */
export function mlaShapes(c: ModelConfig, s: ConversionSettings, ropePairs = s.ropePairs): ModelConfig {
  const rank = equalBudgetRank(s, ropePairs);
  const split = { ropePairs, rank, latentDim: latentWidth(rank, c.kvHeads, s.svd) };
  return { ...c, attention: { kind: "mla", splits: Array.from({ length: c.layers }, () => split), selection: [], svd: s.svd, gateDim: s.gateDim } };
}

export function planConversion(c: ModelConfig, s: ConversionSettings, elemBytes: number): ConversionPlan {
  const latentDim = latentWidth(s.rank, c.kvHeads, s.svd);
  const before = kvElemsPerToken(c);
  const after = kvElemsPerToken(mlaShapes(c, s));
  return {
    settings: recordedSettings(s),
    latentDim,
    before: { elems_per_token: before, bytes_per_token: before * elemBytes },
    after: { elems_per_token: after, bytes_per_token: after * elemBytes },
    kvChangePercent: percentChange(before, after),
  };
}

/** Refuses an unknown device before any work (undefined: the entry's default). */
export function checkDeviceName(device: unknown): void {
  if (device !== undefined) checkDevice(device);
}

/** Refuses a --calib that is missing or not text (both formats, dry run or not: before any work). */
export function checkCalibFile(calib: string | null | undefined): void {
  if (calib === null || calib === undefined) return;
  checkTextFile(calib, "--calib");
}

/** Default output folder: ./NAME-<kind>-r<rank> beside the working directory (kind mla, or deepseek). */
export function defaultOut(spec: string, rank: number, kind = "mla"): string {
  return path.resolve(`${modelName(spec)}-${kind}-r${rank}`);
}

/**
 * Refuses a default --out (./NAME-…, in the working folder: `given` undefined) that lands inside the input
 * model folder, as it does when run from inside it, naming the default and a path beside the model (the
 * general refusal named an --out the user never gave).
 */
export function refuseDefaultOutInModel(out: string, srcDir: string, given: string | undefined): void {
  if (given !== undefined) return;
  const src = path.resolve(srcDir);
  if (within(out, src)) throw new MlaError("BAD_ARGUMENT", `the default --out ${out} (./${path.basename(out)} in the working folder) is inside the input model folder ${src}`, `pass --out ${path.join(path.dirname(src), path.basename(out))} (beside the model), or run from outside the model folder`);
}

/**
 * `convert --format deepseek`'s default output folder, named after what set the cache: ./NAME-deepseek-r<rank>,
 * or ./NAME-deepseek-kv<K> where --kv-lora-rank set it and --rank set nothing (deepseekShape's rank null).
 */
export function defaultDeepseekOut(spec: string, rank: number | null, kvLoraRank: number): string {
  return rank === null ? path.resolve(`${modelName(spec)}-deepseek-kv${kvLoraRank}`) : defaultOut(spec, rank, "deepseek");
}

/** `export --format deepseek`'s default output folder: ./NAME-deepseek. */
export function defaultExportOut(spec: string): string {
  return path.resolve(`${modelName(spec)}-deepseek`);
}

/**
 * The name default outputs start with: the model as the user named it (a hub id's last part, a
 * folder's name; "." the working folder's), not its resolved folder (a hub snapshot's is a hash).
 */
export function modelName(spec: string): string {
  return path.basename(path.resolve(spec)).replace(/[^\w.-]+/g, "_");
}

/**
 * Refuses an --out that is, lies inside or holds the model folder or another input (`inputs`), exists
 * without --force, or lies in a folder that cannot be written. A dry run (`dryRun`, its logger) meets the same refusals, except that an existing --out
 * without --force is a warning that the run would need it (the dry run had approved --out paths the run
 * then refused).
 */
export function checkOutDir(out: string, srcDir: string, force: boolean, inputs: readonly InputPath[] = [], dryRun?: Logger): void {
  refuseOutOverInputs("--out", out, [{ name: "the input model folder", path: srcDir }, ...inputs]);
  const warnOnly = dryRun !== undefined && !force && fs.existsSync(out);
  // A file there is refused now, --force or not, not only when the output folder is begun: after calibration and factoring.
  refuseExisting(out, force || warnOnly);
  if (warnOnly) dryRun.warn(`${out} exists: the run would need --force (or another --out)`);
  requireWritableParent(out);
}
