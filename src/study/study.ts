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
 */
import fs from "node:fs";
import path from "node:path";
import { convert } from "../convert/pipeline.js";
import { MlaError, refuseInert } from "../errors.js";
import { refuseOutOverInputs } from "../io/outGuard.js";
import { finetune, stepsFor } from "../finetune/trainer.js";
import { configShape, planMemory, trainingPrecision } from "../finetune/trainState.js";
import { recoverInterruptedSave } from "../finetune/checkpoint.js";
import { inspectModel } from "../eval/inspect.js";
import { resolveModel } from "../io/modelDir.js";
import { readHfConfig } from "../io/hfConfig.js";
import { defaultRopePairs } from "../ropeSelect/strategies.js";
import { DEFAULT_GATE_DIM, resolveSettings, type SettingsInput } from "../convert/plan.js";
import type { ModelConfig } from "../model/config.js";
import { checkFinetuneOptions } from "../finetune/options.js";
import { checkDataFile } from "../finetune/data.js";
import { isXzFile } from "../io/text.js";
import { selectBackend, type DeviceName } from "../backends/select.js";
import { silentLogger, type Logger } from "../util/log.js";
import type { ProgressSink } from "../util/progress.js";
import { checkOptionTypes, type OptionKinds } from "../util/optionTypes.js";
import { refuseFileAsOutDir, refuseForeignFolder, writeFileAtomic } from "../io/atomicDir.js";
import { resumableStep, throwIfAborted } from "../util/abort.js";
import { initFromScratch, likeConfig } from "./init.js";
import { studyHtml, studyMarkdown, type StudyMeta } from "./report.js";
import { checkClaims, type ClaimCheck } from "./claims.js";
import { decodeSpeed } from "./decodeSpeed.js";
import { readStudyJson, readStudyRow } from "./studyFiles.js";
import { emptyRunFolder, entriesBesideLock, refuseLockedInside, withOutLock } from "../io/outLock.js";

export const STUDY_VARIANTS = ["mha", "mla", "mla-rope", "eg-mla"] as const;
export type StudyVariant = (typeof STUDY_VARIANTS)[number];
/** The latent widths the MLA variants are trained at when --ranks is not given. */
export const STUDY_RANKS = ["d/2", "d/4"] as const;
/**
 * Without --save-every, each run saves a checkpoint after every this many minutes of training: a hard
 * kill (kill -9, a lost GPU lease or machine) then loses at most that much, where it lost the whole run
 * under way. By time, not steps: what a checkpoint costs in steps depends on the hardware, not on the
 * model (12 bytes per parameter written, against ~6·params·batch·seq FLOPs a step). Estimated from the
 * 20M-token study (415k tokens/s on an H200, docs/benchmarks.md) and ~1 GB/s of disk, one costs about
 * 30 steps of the default shape there, and a fraction of a step on a CPU: no step count both bounds the
 * work lost and keeps the saves cheap on both. Every 10 minutes, a study-sized model's checkpoint (26M
 * parameters: 0.3 GB) is well under 1% of the run; a run shorter than that saves none but its final
 * one, and loses less than 10 minutes.
 */
export const STUDY_SAVE_MINUTES = 10;

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

/** "d" → hidden (full rank); "d/2" → hidden/2; "96" → 96; checked to split evenly over the KV heads. */
export function latentWidth(spec: string, hidden: number, kvHeads: number): number {
  const s = spec.trim();
  const m = /^d(?:\/(\d+))?$/.exec(s);
  // Digits only: Number() also reads "", "0x20" and "1e2", which no one means as a width.
  if (!m && !/^\d+$/.test(s)) throw new MlaError("BAD_ARGUMENT", `--ranks ${JSON.stringify(spec)} is not d, d/N or a whole number`, `use d, d/2, d/4 (of hidden size ${hidden}) or a multiple of ${kvHeads}, comma-separated, e.g. --ranks d/2,d/4`);
  if (m?.[1] !== undefined && Number(m[1]) === 0) throw new MlaError("BAD_ARGUMENT", `--ranks ${spec} divides the hidden size by 0`, `use d, d/2, d/4 (of hidden size ${hidden}) or a multiple of ${kvHeads}`);
  const L = m ? hidden / Number(m[1] ?? 1) : Number(s);
  if (!Number.isInteger(L) || L < kvHeads || L % kvHeads !== 0)
    throw new MlaError("BAD_ARGUMENT", `--ranks ${spec} gives a latent of ${L} dims, not a positive multiple of the ${kvHeads} KV heads`, `use d, d/2, d/4 (of hidden size ${hidden}) or a multiple of ${kvHeads}`);
  return L;
}

/**
 * The --data path the runs train on. An .xz file is passed as it is: finetune decompresses it in
 * memory and the token cache (OUT/tokens) keeps its tokens, so only the first run decompresses it and
 * no decompressed copy is written. A study begun before finetune took .xz decompressed it into OUT,
 * and its runs' checkpoints name that copy (a resumed run must train on the same path): there, it is
 * still used.
 */
function trainingText(data: string, out: string): string {
  if (!isXzFile(data)) return data;
  const copy = path.join(out, path.basename(data, ".xz"));
  return fs.existsSync(copy) && fs.statSync(copy).isFile() ? copy : data;
}

type MlaVariant = Exclude<StudyVariant, "mha">;
/** One training run: the MHA initialization as is, or an MLA variant at latent width L per token and layer. */
type StudyRun = { variant: "mha"; L: null } | { variant: MlaVariant; L: number };

/** The conversion that makes an MLA variant at latent width L from the MHA initialization. */
function runSettings({ variant, L }: { variant: MlaVariant; L: number }, c: ModelConfig, gateDim: number | undefined): SettingsInput {
  const eg = variant === "eg-mla";
  return { rank: L / c.kvHeads, ropePairs: variant === "mla" ? 0 : defaultRopePairs(c.headDim), ropeStrategy: "uniform", attention: eg ? "eg-mla" : "mla", gateDim: eg ? gateDim : undefined };
}

/**
 * The runs (variant × width) the options ask for, each run's conversion checked by convert's own
 * checks before any work: a width or gate the third run's conversion would refuse must not cost the two
 * runs before it (nor the --force that a corrected command, no longer the one that started the
 * study, would then need).
 */
export function plannedRuns(o: StudyOptions, c: ModelConfig): { runs: StudyRun[]; ranks: readonly string[] } {
  if (!o.variants.length) throw new MlaError("BAD_ARGUMENT", "--variants is empty", `name some of ${STUDY_VARIANTS.join(", ")}`);
  for (const v of o.variants) if (!STUDY_VARIANTS.includes(v)) throw new MlaError("BAD_ARGUMENT", v.trim() ? `--variants: ${v} is not known` : `--variants ${o.variants.join(",")} has an empty entry`, `use ${STUDY_VARIANTS.join(", ")}, comma-separated`);
  const mla = o.variants.filter((v): v is MlaVariant => v !== "mha");
  const others = STUDY_VARIANTS.filter((v) => v !== "mha").join(", ");
  // refuseInert's policy: given (an empty list too) where no run reads it, refused naming what it needs.
  if (!mla.length) refuseInert([["--ranks", o.ranks]], "an MLA variant in --variants", "it sets the MLA variants' latent widths", `add one of ${others} to --variants`);
  if (!mla.includes("eg-mla")) refuseInert([["--gate-dim", o.gateDim]], "eg-mla in --variants", "it is EG-MLA's gate width", "add eg-mla to --variants");
  const ranks = mla.length ? (o.ranks ?? STUDY_RANKS) : [];
  if (mla.length && !ranks.length) throw new MlaError("BAD_ARGUMENT", "--ranks is empty", `name the MLA variants' latent widths, e.g. ${STUDY_RANKS.join(",")}`);
  const widths = ranks.map((r) => latentWidth(r, c.hiddenSize, c.kvHeads));
  // A variant or width named twice (mla,mla; d/2,32 at d = 64) is one run, not two identical rows.
  const runs = [...new Set(o.variants)].flatMap((v): StudyRun[] => (v === "mha" ? [{ variant: v, L: null }] : [...new Set(widths)].map((L) => ({ variant: v, L }))));
  for (const r of runs) if (r.variant !== "mha") checkRun(r, c, o.gateDim ?? undefined);
  return { runs, ranks };
}

/** A run's name in the study's folder: its row file NAME.row.json, its model NAME, its training NAME-trained. */
const runName = (r: StudyRun) => (r.L === null ? "mha" : `${r.variant}-L${r.L}`);

/**
 * The folders inside --out that this call writes in, where another run's lock would stop it part-way
 * (a fine-tune started in OUT/mla-L32-trained was found only when that run began, after the runs
 * before it trained): the token cache and each unfinished run's model and training folders, and with
 * --force, which empties --out, every folder there.
 */
function foldersWritten(out: string, runs: readonly StudyRun[], force: boolean): string[] {
  const isFolder = (p: string) => fs.statSync(p, { throwIfNoEntry: false })?.isDirectory() === true;
  if (force) return isFolder(out) ? entriesBesideLock(out).map((f) => path.join(out, f)).filter(isFolder) : [];
  const unfinished = runs.map(runName).filter((name) => !fs.existsSync(path.join(out, `${name}.row.json`)));
  // The MHA run trains init-mha, which it does not write in once made.
  return [path.join(out, "tokens"), ...unfinished.flatMap((name) => [...(name === "mha" ? [] : [path.join(out, name)]), path.join(out, `${name}-trained`)])];
}

/** What every run of a study shares, as study-state.json records it. */
type StudySettings = Pick<StudyMeta, "like" | "data" | "tokens" | "seq" | "batch" | "lr" | "seed"> & { valFraction: number; tokenCache: string; evalEvery: number | null; gateDim: number | null };

/**
 * A recorded study's settings with its paths absolute, as this version records them: earlier ones kept
 * paths as typed (a re-run naming the same files another way was refused), relative to the folder the
 * study ran from, taken to be this call's. Its gate width is null where no eg-mla run in the folder `out`
 * read it (earlier versions recorded the default there).
 */
function normalizedSettings(recorded: unknown, out: string): Record<string, unknown> {
  const r = { ...((recorded ?? {}) as Record<string, unknown>) };
  if (r["gateDim"] != null && !fs.readdirSync(out).some((f) => f.startsWith("eg-mla-L"))) r["gateDim"] = null;
  const abs = (k: string, f: (v: string) => string) => typeof r[k] === "string" && (r[k] = f(r[k] as string));
  abs("like", (v) => {
    try {
      return resolveModel(v).dir;
    } catch {
      return path.resolve(v);
    }
  });
  abs("data", (v) => path.resolve(v));
  abs("tokenCache", (v) => path.resolve(v));
  return r;
}

/** The flag of each setting a study's runs share, for a refusal naming what changed. */
const STUDY_FLAGS = { like: "--like", data: "--data", tokens: "--tokens", seq: "--seq", batch: "--batch", lr: "--lr", seed: "--seed", valFraction: "--val-fraction", tokenCache: "the token cache", evalEvery: "--eval-every", gateDim: "--gate-dim" } as const;

/** Convert's checks of one run's conversion, whose message names convert's flags: prefixed with the run they come from. */
function checkRun(r: { variant: MlaVariant; L: number }, c: ModelConfig, gateDim: number | undefined): void {
  try {
    resolveSettings(c, runSettings(r, c, gateDim), silentLogger);
  } catch (e) {
    if (!(e instanceof MlaError)) throw e;
    // A width past what the variant can factor beside its rope keys (`d` with mla-rope or eg-mla on a
    // GQA model): said in --ranks terms, with the widest it takes, not as convert's --rank.
    const widest = /--rank \d+ is out of range/.test(e.message) ? widestRank(r, c, gateDim) : null;
    if (widest !== null)
      throw new MlaError("BAD_ARGUMENT", `--ranks: the ${r.variant} variant cannot have a latent of ${r.L} per token and layer (${r.L / c.kvHeads} per KV head) on this model: beside its rope keys it factors at most ${widest * c.kvHeads} (${widest} per KV head)`, `give ${r.variant} widths up to ${widest * c.kvHeads} (e.g. d/2), and \`d\` to the mla variant alone, whose latent can be full`);
    throw new MlaError(e.code, `the ${r.variant} variant at latent ${r.L} (${r.L / c.kvHeads} per KV head): ${e.message}`);
  }
}

/** The largest latent per KV head below r's that the variant's conversion takes (null: none). */
function widestRank(r: { variant: MlaVariant; L: number }, c: ModelConfig, gateDim: number | undefined): number | null {
  for (let k = r.L / c.kvHeads - 1; k >= 1; k--) {
    try {
      resolveSettings(c, runSettings({ variant: r.variant, L: k * c.kvHeads }, c, gateDim), silentLogger);
      return k;
    } catch {
      // narrower still
    }
  }
  return null;
}

/**
 * The widest latent per token and layer the mla-rope variant can have on this model: d where its
 * conversion takes a full-rank latent beside the rope keys (an MHA model), narrower on a GQA model,
 * whose d/2-against-d decode claim then cannot be measured (the report says so instead of asking for d).
 */
function mlaRopeWidest(c: ModelConfig): number | undefined {
  const full = { variant: "mla-rope" as const, L: c.hiddenSize };
  try {
    resolveSettings(c, runSettings(full, c, undefined), silentLogger);
    return c.hiddenSize;
  } catch (e) {
    if (!(e instanceof MlaError)) throw e;
    // No width fits at all: the claim then asks for d as before (the study refuses such runs by name).
    const widest = widestRank(full, c, undefined);
    return widest === null ? undefined : widest * c.kvHeads;
  }
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
  // What every run shares; the list of runs (variants × ranks) may grow between sittings, since each
  // run is trained on its own from the same initialization.
  // Paths as absolute ones (the same files named from another folder, or ./data against data, are the
  // same study); the gate width only where an eg-mla run reads it (null: none of this call's does).
  let settings: StudySettings = { like, data: path.resolve(o.data), tokens: o.tokens, seq, batch, lr, seed, valFraction, tokenCache: path.resolve(o.out, "tokens"), evalEvery: o.evalEvery ?? null, gateDim: o.variants.includes("eg-mla") ? (o.gateDim ?? DEFAULT_GATE_DIM) : null };
  const stateFile = path.join(o.out, "study-state.json");
  // The study's folder is held from here to the end (a second study there at once interleaved their logs).
  const existed = fs.existsSync(o.out);
  return withOutLock(o.out, { command: "study", log }, async () => {
    // Again, now that no run can start inside --out: one may have while the options were checked.
    refuseLockedInside(o.out, foldersWritten(path.resolve(o.out), runs, !!o.force));
    if (existed && !o.force) {
      const prev = fs.existsSync(stateFile) ? readStudyJson<{ settings?: unknown; variants?: string[]; ranks?: string[] }>(stateFile, "the study's settings", "pass --force to start the study over, or choose another --out") : null;
      if (!prev) {
        // An empty folder (`mkdir OUT` first) is one --force takes: the hint said it would not.
        let empty = false;
        try {
          empty = entriesBesideLock(o.out).length === 0;
        } catch {
          // unreadable: the general hint
        }
        throw new MlaError("EXISTS", `output ${o.out} already exists and holds no study (no study-state.json)`, empty ? "it is empty: pass --force to start the study in it, or choose another --out" : "choose another --out (--force replaces only an earlier study's folder)");
      }
      const was = normalizedSettings(prev.settings, o.out);
      // A study whose runs so far had no gate keeps the gate of the first eg-mla run it gets, and the reverse.
      settings = { ...settings, gateDim: settings.gateDim ?? (was["gateDim"] as number | null | undefined) ?? null };
      if (was["gateDim"] === null) was["gateDim"] = settings.gateDim;
      // The token cache is the folder's own (OUT/tokens): --out named another way is still this folder.
      const changed = (Object.keys(settings) as (keyof StudySettings)[]).filter((k) => k !== "tokenCache" && JSON.stringify(was[k] ?? null) !== JSON.stringify(settings[k]));
      if (changed.length) {
        // Which: "--lr 0.001 → 0.002", as the pipeline names a changed option.
        const named = changed.map((k) => `${STUDY_FLAGS[k]} ${JSON.stringify(was[k] ?? null)} → ${JSON.stringify(settings[k])}`);
        throw new MlaError("EXISTS", `output ${o.out} already exists from a study with other settings: ${named.join("; ")} (the study's value → this call's)`, "re-run it with the same settings (other --variants or --ranks are fine: finished runs are kept), pass --force to start over, or choose another --out");
      }
      const same = JSON.stringify([prev.variants, prev.ranks]) === JSON.stringify([o.variants, ranks]);
      log.info(same ? `resuming the study in ${o.out}` : `continuing the study in ${o.out} with --variants ${o.variants.join(",")}${ranks.length ? ` --ranks ${ranks.join(",")}` : ""}: finished runs are kept, the others trained`);
      if (!same || JSON.stringify(prev.settings) !== JSON.stringify(settings)) writeFileAtomic(stateFile, JSON.stringify({ ...prev, settings, variants: o.variants, ranks }, null, 2) + "\n");
    } else {
      refuseForeignFolder(o.out, !!o.force, ["study-state.json", "study.json"], "study (no study-state.json)");
      emptyRunFolder(o.out, "the study's --out folder");
      made.fresh = true;
      writeFileAtomic(stateFile, JSON.stringify({ settings, variants: o.variants, ranks, started: new Date().toISOString() }, null, 2) + "\n");
    }
    const data = trainingText(o.data, o.out);
    const init = path.join(o.out, "init-mha");
    if (!fs.existsSync(init)) {
      // Built aside and renamed, so an interrupted initialization is never mistaken for a finished one.
      fs.rmSync(init + ".part", { recursive: true, force: true });
      initFromScratch(like, init + ".part", seed);
      fs.renameSync(init + ".part", init);
    }
    // Only the default --eval-every reads it. Floored where the trainer rounds up (stepsFor): kept so that a
    // study resumed across versions validates its new runs at its finished runs' steps (the claims compare
    // rows at shared steps). Harmless: where the two differ (tokens not whole steps) the interval is at most
    // one step shorter, never 0 nor past the run (the trainer validates below its last step, then at it), and
    // a run of 8 steps or more still gets 3 points in its last quarter (claims.ts).
    const steps = Math.max(1, Math.floor(o.tokens / (seq * batch)));
    // Not a setting of the study (a later sitting may save more or less often): the same steps either way.
    const saving = o.saveEvery == null ? { saveEveryMinutes: STUDY_SAVE_MINUTES } : { saveEvery: o.saveEvery };
    log.info(`training checkpoints: ${o.saveEvery == null ? `after every ${STUDY_SAVE_MINUTES} minutes of training (--save-every N: every N steps)` : o.saveEvery === 0 ? "only when a run is stopped (Ctrl-C), not periodically: a hard kill restarts the run under way" : `every ${o.saveEvery} steps`}; re-running the same command continues a run from its last one`);
    const rows: StudyRow[] = [];
    const resumes = `the finished runs are kept in ${o.out} (and an interrupted training run's last checkpoint); call study() again with the same options to resume`;
    for (const [i, r] of runs.entries()) {
      const name = runName(r);
      const rowFile = path.join(o.out, `${name}.row.json`);
      if (fs.existsSync(rowFile)) {
        log.info(`study ${i + 1}/${runs.length}: ${name} already done`);
        rows.push(readStudyRow(rowFile, name));
        continue;
      }
      log.info(`study ${i + 1}/${runs.length}: ${name}`);
      const conversion = r.variant === "mha" ? null : runSettings(r, c, o.gateDim ?? undefined);
      const modelDir = conversion ? path.join(o.out, name) : init;
      const trained = path.join(o.out, `${name}-trained`);
      const ft = await resumableStep(o.signal, resumes, async () => {
        // The conversion's per-layer lines go to the study's progress sink, as its training's and measurement's do.
        if (conversion && !fs.existsSync(path.join(modelDir, "config.json"))) await convert(init, { ...conversion, device, out: modelDir, force: true, progress: o.progress, logger: log, signal: o.signal });
        // A run killed while saving (kill -9, a lost machine) may have left its last whole checkpoint moved
        // aside (checkpoint.old): put back first, so the run resumes from it rather than starting over.
        if (fs.existsSync(trained)) recoverInterruptedSave(trained);
        const resume = fs.existsSync(path.join(trained, "checkpoint", "state.json"));
        return finetune(modelDir, { data: [data], out: trained, force: !resume, resume, tokens: o.tokens, seq, batch, lr, seed, valFraction, tokenCache: path.join(o.out, "tokens"), evalEvery: o.evalEvery ?? Math.max(1, Math.round(steps / 20)), ...saving, device, progress: o.progress, logger: log, shouldStop: o.shouldStop, signal: o.signal });
      });
      if (ft.stoppedEarly) return { rows, report: null, html: null, stoppedEarly: true, claims: null };
      // The measurement stops on the signal too; the trained run is whole by then (finetune.json), so the
      // same call resumes by measuring it again: its fine-tune finds the run finished and trains nothing.
      const decodeTokensPerS = await resumableStep(o.signal, resumes, () => decodeSpeed(ft.out, device, { progress: o.progress, signal: o.signal }));
      const curve = fs.readFileSync(path.join(ft.out, "train_log.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as { step: number; val_nll?: number }).filter((l) => l.val_nll !== undefined).map((l) => [l.step, l.val_nll!] as [number, number]);
      const info = inspectModel(ft.out);
      const kv = info.kv_elems_per_token;
      const row: StudyRow = {
        variant: r.variant,
        label: r.L === null ? "MHA" : `${{ mla: "MLA", "mla-rope": "MLA + RoPE", "eg-mla": "EG-MLA" }[r.variant as Exclude<StudyVariant, "mha">]}, latent ${r.L}`,
        latentDim: r.L,
        ropePairs: conversion?.ropePairs ?? null,
        params: info.params,
        kvElemsPerToken: kv,
        kvBytesPerTokenBf16: kv * 2,
        valNll: ft.valNllAfter ?? NaN,
        curve,
        trainTokensPerS: ft.tokensPerSecond,
        decodeTokensPerS,
      };
      writeFileAtomic(rowFile, JSON.stringify(row, null, 2) + "\n");
      rows.push(row);
    }
    // Runs finished by earlier calls with other --variants or --ranks stay in the study's report (a call
    // naming fewer had rewritten it with its own rows alone).
    // Only the study's own row files (mha, VARIANT-L<width>): a copy or a note named *.row.json is not a run.
    const runFile = /^(mha|(mla|mla-rope|eg-mla)-L\d+)\.row\.json$/;
    const earlier = fs
      .readdirSync(o.out)
      .filter((f) => runFile.test(f))
      .map((f) => f.slice(0, -".row.json".length))
      .filter((name) => !runs.some((r) => runName(r) === name))
      .map((name) => readStudyRow(path.join(o.out, `${name}.row.json`), name));
    if (earlier.length) {
      log.info(`the report also holds ${earlier.length} run${earlier.length === 1 ? "" : "s"} finished by earlier calls: ${earlier.map((r) => r.label).join("; ")}`);
      rows.push(...earlier);
      // All of them in the study's order: MHA, then each variant from its widest latent down.
      rows.sort((a, b) => STUDY_VARIANTS.indexOf(a.variant) - STUDY_VARIANTS.indexOf(b.variant) || (b.latentDim ?? Infinity) - (a.latentDim ?? Infinity));
    }
    // The device as given, and for auto the backend it picked (the runs' own lines said so; the report should too).
    const deviceLabel = device === "auto" ? `auto (${selectBackend(device).name})` : device;
    // What each run trained: the trainer rounds the budget up to whole steps of batch × seq.
    const trainedTokens = stepsFor(o.tokens, seq * batch) * seq * batch;
    const meta = { like: o.like, hidden: c.hiddenSize, mlaRopeWidest: mlaRopeWidest(c), data: o.data, tokens: o.tokens, trainedTokens, seq, batch, lr, seed, device: deviceLabel, date: new Date().toISOString() };
    // The claims' verdicts beside the rows (added after them: readers of rows and meta are unchanged).
    const claims = checkClaims(rows, c.hiddenSize, meta.mlaRopeWidest);
    // Each whole or absent (temp file + rename), as the rows are: never a truncated file from a killed study.
    // Rendered before any is written, so a failure leaves the three as the last call wrote them.
    const report = path.join(o.out, "report.md");
    const html = path.join(o.out, "report.html");
    const [md, page] = [studyMarkdown(meta, rows), studyHtml(meta, rows)];
    writeFileAtomic(path.join(o.out, "study.json"), JSON.stringify({ ...meta, rows, claims }, null, 2) + "\n");
    writeFileAtomic(report, md);
    writeFileAtomic(html, page);
    return { rows, report, html, stoppedEarly: false, claims };
  });
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

/** Whether a study folder holds work worth keeping: a finished run's row, or a training run's checkpoint. */
function keptWork(out: string): boolean {
  if (!fs.existsSync(out)) return false;
  return fs.readdirSync(out).some((n) => n.endsWith(".row.json") || fs.existsSync(path.join(out, n, "checkpoint", "state.json")));
}
