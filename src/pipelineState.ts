/**
 * Whether a pipeline's --out holds the same run as the options now given, so that a re-run resumes
 * it. The run is identified by what it computes: the model, the phases' settings and the
 * evaluations, not how it runs (--device, a token cache, how often the fine-tune saves or
 * validates) nor how the options object happens to be ordered. A refusal names each option whose
 * value differs, with both values, as the fine-tune's --resume does.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { MlaError } from "./errors.js";
import { shown } from "./finetune/resume.js";
import { defaultLr } from "./finetune/schedule.js";
import { FINETUNE_DEFAULTS, parameterCount } from "./finetune/trainer.js";
import type { Logger } from "./util/log.js";
import type { PipelineOptions } from "./pipeline.js";
import { conversionReadsCalibration } from "./convert/calibrationNeeds.js";
import { canonicalJson } from "./util/canonicalJson.js";

/** What pipeline.json holds (runs of older versions may lack `settings`). */
interface RunState {
  fingerprint?: string;
  model?: string;
  settings?: Partial<PipelineOptions>;
  /** The working folder the run was started from: its relative paths are relative to it. */
  cwd?: string;
}

/**
 * The fine-tune's options that change how it runs, not what it trains: finetune's own --resume
 * accepts other values for them (its fingerprint leaves them out), so the pipeline does too.
 */
const FINETUNE_HOW = new Set(["device", "tokenCache", "evalEvery", "saveEvery", "saveEveryMinutes", "checkpointActivations"]);

/** What the run computes, as plain data: the model as given and every option that changes a phase's result. */
export function runIdentity(spec: string, o: Partial<PipelineOptions>): Record<string, unknown> {
  const finetune = o.finetune
    ? Object.fromEntries(
        // seq and batch at their defaults when not given: the CLI once passed them always, and a value
        // equal to the default computes the same run.
        Object.entries({ ...o.finetune, seq: o.finetune.seq ?? FINETUNE_DEFAULTS.seq, batch: o.finetune.batch ?? FINETUNE_DEFAULTS.batch }).filter(([k]) => !FINETUNE_HOW.has(k)),
      )
    : undefined;
  return {
    model: spec,
    convert: o.convert ? effectiveConversion(o.convert, o) : o.convert,
    format: o.format ?? "mha2mla",
    deepseek: o.format === "deepseek" ? o.deepseek : undefined,
    finetune,
    export: o.export,
    attentionBias: o.attentionBias === false ? false : undefined,
    evalText: o.evalText,
    evalTokens: o.evalTokens,
    evalCtx: o.evalCtx,
    tasks: o.tasks,
    limit: o.limit,
  };
}

/** Whether the pipeline's export reads the conversion's calibration text: the bias-free form fits kv_a_layernorm on it. */
export function exportReadsCalibration(o: Pick<PipelineOptions, "export" | "attentionBias">): boolean {
  return o.export === "deepseek" && o.attentionBias === false;
}

/**
 * The conversion settings that change the run. Settings that do nothing are refused now (refuseInert),
 * but runs started before were taken with them, so each counts as not given and such a run resumes
 * without it (and the other way round): --balance-kv either way under the split SVD, absent counting
 * as the default under the joint one (the CLI passed true then, passes only a given one now), and a
 * --calib no phase reads, its windows with it (the windows without --calib too).
 */
function effectiveConversion(c: NonNullable<PipelineOptions["convert"]>, o: Partial<PipelineOptions>): Record<string, unknown> {
  const { balanceKv, calib, calibSamples, calibLen, ...rest } = c;
  const read = calib && (o.format === "deepseek" || exportReadsCalibration(o) || conversionReadsCalibration(c));
  // --format deepseek refuses these given (it decides them itself), but the CLI passed their defaults before: counted at those, its runs keep their fingerprint.
  const decided = o.format === "deepseek" ? { ropeDisjoint: c.ropeDisjoint ?? false, svd: c.svd ?? "joint", attention: c.attention ?? "mla" } : {};
  return { ...rest, ...decided, ...(c.svd === "split" ? {} : { balanceKv: balanceKv ?? true }), ...(read ? { calib, calibSamples, calibLen } : {}) };
}

/** The run's fingerprint, recorded in pipeline.json: a re-run with the same one resumes. */
export function runFingerprint(spec: string, o: PipelineOptions): string {
  return crypto.createHash("sha256").update(canonicalJson(runIdentity(spec, o))).digest("hex").slice(0, 16);
}

/**
 * The fingerprint versions before this one recorded: the options' JSON in the order they were
 * written, the fine-tune's device included. Still accepted, so that a run they started resumes.
 */
function legacyFingerprint(spec: string, o: PipelineOptions): string {
  // saveEveryMinutes came after these versions: a run they started never had it.
  const finetune = o.finetune ? { ...o.finetune, saveEveryMinutes: undefined, seq: o.finetune.seq ?? FINETUNE_DEFAULTS.seq, batch: o.finetune.batch ?? FINETUNE_DEFAULTS.batch } : null;
  const deepseek = o.format === "deepseek" ? (o.deepseek ?? null) : null;
  const settings = { spec, convert: o.convert, format: o.format ?? "mha2mla", deepseek, finetune, export: o.export ?? null, evalText: o.evalText, evalTokens: o.evalTokens, evalCtx: o.evalCtx, tasks: o.tasks, limit: o.limit };
  return crypto.createHash("sha256").update(JSON.stringify(settings)).digest("hex").slice(0, 16);
}

/** The pipeline's flags by identity key; options only the library takes keep their own (dotted) name. */
const FLAGS: Record<string, string> = {
  model: "MODEL",
  format: "--format",
  export: "--export",
  attentionBias: "--attention-bias",
  evalText: "--eval-text",
  evalTokens: "--eval-tokens",
  evalCtx: "--eval-ctx",
  tasks: "--tasks",
  limit: "--limit",
  "deepseek.ropeDim": "--rope-dim",
  "deepseek.kvLoraRank": "--kv-lora-rank",
  "finetune.data": "--finetune-data",
  "finetune.tokens": "--tokens",
  "finetune.seq": "--seq",
  "finetune.batch": "--batch",
  "finetune.lr": "--lr",
  "finetune.distill": "--distill",
};

/** A key's flag: the table's, a conversion setting's own flag (all are the pipeline's), else the key. */
function flagOf(key: string): string {
  if (FLAGS[key]) return FLAGS[key];
  if (key.startsWith("convert.")) return "--" + key.slice("convert.".length).replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());
  return key;
}

/** The identity's fields as `key` and `section.key` entries (the sections are one level deep), unset ones left out. */
function flatten(identity: Record<string, unknown>): Map<string, unknown> {
  const flat = new Map<string, unknown>();
  for (const [k, v] of Object.entries(identity)) {
    if (v !== null && typeof v === "object" && !Array.isArray(v)) {
      for (const [k2, v2] of Object.entries(v)) if (v2 !== undefined && v2 !== null) flat.set(`${k}.${k2}`, v2);
    } else if (v !== undefined && v !== null) flat.set(k, v);
  }
  return flat;
}

/**
 * The fine-tune's defaults that depend on the model it trains, where they can be known: the learning
 * rate by the size of the run's converted model (`mla` in its --out), once the conversion has written it.
 */
export interface SizedDefaults {
  lr?: number;
}

/** The run in the --out folder `outDir`: its converted model's default learning rate, if that model is there. */
export function sizedDefaults(outDir: string): SizedDefaults {
  const mla = path.join(outDir, "mla");
  if (!fs.existsSync(path.join(mla, "config.json"))) return {};
  try {
    return { lr: defaultLr(parameterCount(mla)) };
  } catch {
    return {}; // a converted model that cannot be read sizes nothing: the options are compared as given
  }
}

/**
 * An identity as two runs are compared: file paths resolved (./data.txt and data.txt are one file), and
 * the fine-tune's settings at their defaults where not given (a default given is the run not given it),
 * the learning rate too where `sized` knows it.
 * Only for comparing: the fingerprint keeps the values as given, so runs recorded before still match it.
 */
function comparable(identity: Record<string, unknown>, sized: SizedDefaults, base: string): Record<string, unknown> {
  // A path resolved from the folder the run was started in; a name (stories260K, an alias) as typed.
  const file = (p: unknown) => (typeof p !== "string" ? p : fs.existsSync(path.resolve(base, p)) || /^\.|[\\/]/.test(p) ? path.resolve(base, p) : p);
  const convert = identity["convert"] as Record<string, unknown> | undefined;
  const finetune = identity["finetune"] as Record<string, unknown> | undefined;
  const given = (o: Record<string, unknown>) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
  return {
    ...identity,
    model: file(identity["model"]),
    evalText: file(identity["evalText"]),
    convert: convert ? { ...convert, calib: file(convert["calib"]) } : convert,
    finetune: finetune ? { ...FINETUNE_DEFAULTS, ...given(sized as Record<string, unknown>), ...given(finetune), data: Array.isArray(finetune["data"]) ? finetune["data"].map(file) : finetune["data"], distill: file(finetune["distill"]) } : finetune,
  };
}

/**
 * One "FLAG old → new" clause per option whose value differs between the runs `was` and `now`
 * (identities), an option not given counting as its default (`sized`: those the model's size sets).
 */
export function identityDifferences(was: Record<string, unknown>, now: Record<string, unknown>, sized: SizedDefaults = {}, wasCwd = process.cwd()): string[] {
  const [a, b] = [flatten(was), flatten(now)];
  const [ca, cb] = [flatten(comparable(was, sized, wasCwd)), flatten(comparable(now, sized, process.cwd()))];
  const clauses: string[] = [];
  for (const key of new Set([...ca.keys(), ...cb.keys()])) {
    if (canonicalJson(ca.get(key)) === canonicalJson(cb.get(key))) continue;
    // Given in neither: a default filled on one side only (a fine-tune in one run, none in the other), which
    // the clause about the fine-tune's own options names; nor a fine-tune option at its default where the
    // other run has no fine-tune (the identity fills --seq and --batch).
    if (a.get(key) === undefined && b.get(key) === undefined) continue;
    if (key.startsWith("finetune.") && (!was["finetune"] || !now["finetune"])) {
      const dflt = (FINETUNE_DEFAULTS as Record<string, unknown>)[key.slice("finetune.".length)];
      if (dflt !== undefined && canonicalJson(a.get(key) ?? b.get(key)) === canonicalJson(dflt)) continue;
    }
    // Not given, but compared as its default: the value the run computes with.
    const show = (v: unknown, c: unknown) => (v !== undefined ? shown(v) : c !== undefined ? `(not given: ${shown(c)})` : "(not given)");
    clauses.push(`${flagOf(key)} ${show(a.get(key), ca.get(key))} → ${show(b.get(key), cb.get(key))}`);
  }
  return clauses;
}

/**
 * Accepts resuming the run recorded in `stateFile` (in --out `out`, as given) with `spec` and `o`,
 * or refuses it: EXISTS, naming each option that differs where the run recorded its settings.
 */
export function checkSameRun(out: string, stateFile: string, spec: string, o: PipelineOptions, log: Logger): void {
  let prev: RunState | null = null;
  try {
    prev = fs.existsSync(stateFile) ? (JSON.parse(fs.readFileSync(stateFile, "utf8")) as RunState) : null;
  } catch (e) {
    throw new MlaError("EXISTS", `output ${out} already exists and its pipeline.json is not valid JSON (${(e as Error).message})`, "pass --force to start over, or choose another --out");
  }
  const hint = "re-run the same command to resume it, pass --force to start over, or choose another --out";
  // No pipeline.json: not a pipeline's folder (a fine-tune's run, a model, other files), so nothing to resume.
  if (!prev) throw new MlaError("EXISTS", `output ${out} already exists and holds no pipeline run (no pipeline.json)`, "choose another --out, or pass --force to replace what it holds");
  if (prev.fingerprint === runFingerprint(spec, o) || prev.fingerprint === legacyFingerprint(spec, o)) return log.info(`resuming the pipeline in ${out}`);
  // Older runs' fingerprints also covered the order of the options and the fine-tune's device: their
  // recorded settings tell whether the run is the same one.
  const recorded = prev.settings && typeof prev.settings === "object" && typeof prev.model === "string";
  // Its paths as typed where it was started (runs recorded before the working folder was: this one).
  const clauses = recorded ? identityDifferences(runIdentity(prev.model!, prev.settings!), runIdentity(spec, o), sizedDefaults(path.dirname(stateFile)), typeof prev.cwd === "string" ? prev.cwd : process.cwd()) : [];
  if (recorded && clauses.length === 0) return log.info(`resuming the pipeline in ${out}`);
  if (!clauses.length) throw new MlaError("EXISTS", `output ${out} already exists from a pipeline with other settings`, hint);
  const elsewhere = typeof prev.cwd === "string" && prev.cwd !== process.cwd() ? `, the run's paths relative to ${prev.cwd}` : "";
  throw new MlaError("EXISTS", `output ${out} already exists from a pipeline with other settings: ${clauses.join("; ")} (the run's value → this call's${elsewhere})`, "re-run with the run's values to resume it, pass --force to start over, or choose another --out");
}
