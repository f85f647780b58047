/**
 * `pipeline`: convert → optional fine-tune → optional export to deepseek_v3 → evaluate the
 * original, the converted, the fine-tuned and the exported model → report, in one output folder.
 * Each phase leaves its result there (eval-*.json, mla/, finetune/, deepseek/, report.*); re-running
 * the same command skips finished phases and resumes an interrupted fine-tune from its checkpoint.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { booleanFlag, ioError, MlaError, refuseInert } from "./errors.js";
import { refuseFileAsOutDir, refuseForeignFolder, writeFileAtomic } from "./io/atomicDir.js";
import { refuseOutOverInputs } from "./io/outGuard.js";
import { convertWithWindows } from "./convert/pipeline.js";
import { convertDeepseekWithWindows, deepseekSettings, deepseekShape, deepseekShapes } from "./deepseek/export.js";
import { exportDeepseekWithWindows } from "./deepseek/fromMla.js";
import { checkDeclaredBiases, checkExportSettings, perLayerRefusal } from "./deepseek/exportable.js";
import { defaultRopePairs } from "./ropeSelect/strategies.js";
import { readHfConfig } from "./io/hfConfig.js";
import { resolveModel } from "./io/modelDir.js";
import { checkCalibFile, mlaShapes, resolveSettings, SETTINGS_KINDS, type SettingsInput } from "./convert/plan.js";
import type { ModelConfig } from "./model/config.js";
import { checkEmbeddedEval, checkEvalOptions, embeddedEval, evaluate, EvalOptions, EvalResult } from "./eval/evaluate.js";
import { requireBos } from "./eval/perplexity.js";
import { checkDataFile, checkDataIds, idsMayPassVocab, readDocuments } from "./finetune/data.js";
import { checkTokenCache } from "./finetune/runFolder.js";
import { checkTaskIds, type TaskName } from "./eval/tasks/index.js";
import { loadTokenizer } from "./io/tokenizer.js";
import { writeReport } from "./eval/report/report.js";
import { checkEndOfText, finetune, FinetuneOptions } from "./finetune/trainer.js";
import { configShape, planMemory, trainingPrecision } from "./finetune/trainState.js";
import { checkSameRun, exportReadsCalibration, runFingerprint } from "./pipelineState.js";
import { conversionReadsCalibration, cutCalibration, type CutCalibration } from "./convert/calibrationNeeds.js";
import { checkFinetuneOptions, checkTeacher, FINETUNE_KINDS } from "./finetune/options.js";
import { checkOptionTypes, type OptionKinds } from "./util/optionTypes.js";
import { resumableStep, throwIfAborted } from "./util/abort.js";
import { silentLogger, Logger } from "./util/log.js";
import { selectBackend, type DeviceName } from "./backends/select.js";
import type { ProgressSink } from "./util/progress.js";
import { requireFitText } from "./deepseek/latentNorm.js";
import { emptyRunFolder, entriesBesideLock, refuseLockedInside, withOutLock } from "./io/outLock.js";

export interface PipelineOptions {
  out: string;
  force?: boolean;
  convert: SettingsInput;
  /** "deepseek": the converted model is a deepseek_v3 folder (`convert --format deepseek`), with these widths. */
  format?: "mha2mla" | "deepseek";
  /** Only with format "deepseek" (a width set otherwise is refused). */
  deepseek?: { ropeDim?: number; kvLoraRank?: number; interleave?: boolean };
  /** The fine-tune, on `data`; a setting with no data is refused. */
  finetune?: Omit<FinetuneOptions, PipelineOwned>;
  /** "deepseek": write the final model (fine-tuned, else converted) as a deepseek_v3 folder (`export --format deepseek`, exact; needs convert.ropeDisjoint or one KV head). */
  export?: "deepseek";
  /**
   * false: the deepseek_v3 folder the pipeline writes (format "deepseek" or export "deepseek") has no
   * attention biases, so vLLM and SGLang serve it as written (`--no-attention-bias`; kv_a_layernorm's
   * weight fitted on convert.calib, which it needs). Default true: the exact form.
   */
  attentionBias?: boolean;
  evalText?: string;
  evalTokens?: number;
  evalCtx?: number;
  tasks?: TaskName[];
  dataDir?: string;
  limit?: number;
  device?: DeviceName;
  logger?: Logger;
  progress?: ProgressSink | null;
  /**
   * Polled between phases and by the fine-tune after every step: true ends the run with stoppedEarly.
   * A conversion or evaluation under way runs to its end first; `signal` stops those too (the CLI's Ctrl-C).
   */
  shouldStop?: () => boolean;
  /**
   * Aborting it stops the current phase at its next safe point (a conversion after the factorization
   * or calibration window under way, an evaluation after its window, a fine-tune after its step or
   * validation window, with the last step's checkpoint) and throws MlaError
   * INTERRUPTED. Finished phases are kept and nothing half-written is: the same call resumes.
   */
  signal?: AbortSignal;
}

/** The fine-tune's options the pipeline sets itself (its phase's folder, resume, output and stop). */
type PipelineOwned = "out" | "resume" | "force" | "logger" | "progress" | "shouldStop" | "signal";

const { out: _out, resume: _resume, force: _force, logger: _logger, progress: _progress, shouldStop: _shouldStop, signal: _signal, ...PIPELINE_FINETUNE_KINDS } = FINETUNE_KINDS;
const PIPELINE_KINDS: OptionKinds<PipelineOptions> = {
  out: "string",
  force: "boolean",
  convert: "object",
  format: "string",
  deepseek: "object",
  finetune: "object",
  export: "string",
  attentionBias: "boolean",
  evalText: "string",
  evalTokens: "number",
  evalCtx: "number",
  tasks: "string[]",
  dataDir: "string",
  limit: "number",
  device: "string",
  logger: "object",
  progress: "object",
  shouldStop: "function",
  signal: "object",
};
type PipelineDeepseek = NonNullable<PipelineOptions["deepseek"]>;
type PipelineFinetune = NonNullable<PipelineOptions["finetune"]>;
const PIPELINE_DEEPSEEK_KINDS: OptionKinds<PipelineDeepseek> = { ropeDim: "number", kvLoraRank: "number", interleave: "boolean" };

/** The JavaScript types of the options and of the phases' option objects inside them. */
function checkTypes(o: unknown): asserts o is PipelineOptions {
  checkOptionTypes("pipeline()", o, PIPELINE_KINDS, ["out", "convert"]);
  checkOptionTypes<SettingsInput>("pipeline()'s convert", o.convert, SETTINGS_KINDS, ["rank"]);
  if (o.deepseek) checkOptionTypes<PipelineDeepseek>("pipeline()'s deepseek", o.deepseek, PIPELINE_DEEPSEEK_KINDS);
  if (o.finetune) checkOptionTypes<PipelineFinetune>("pipeline()'s finetune", o.finetune, PIPELINE_FINETUNE_KINDS, ["data"]);
  // Strings of the right type but not a known value: "hf" ran a deepseek export, "DeepSeek" our format.
  if (o.format !== undefined && o.format !== "mha2mla" && o.format !== "deepseek") throw new MlaError("BAD_ARGUMENT", `pipeline(): format ${JSON.stringify(o.format)} is not known`, 'use "mha2mla" (the default) or "deepseek"');
  if (o.export !== undefined && o.export !== "deepseek") throw new MlaError("BAD_ARGUMENT", `pipeline(): export ${JSON.stringify(o.export)} is not known`, 'use "deepseek", or leave export out');
}

export interface PipelineResult {
  out: string;
  phases: { name: string; skipped: boolean; seconds: number }[];
  evals: EvalResult[];
  report: { html: string; md: string } | null;
  stoppedEarly: boolean;
}

/** Refuses --export deepseek up front (before hours of fine-tuning) where the export could not be exact. */
function checkExportable(c: ModelConfig, o: PipelineOptions): void {
  if (o.format === "deepseek") throw new MlaError("BAD_ARGUMENT", "--export deepseek exports a model in our format, and --format deepseek already converts to deepseek_v3", "drop one of them");
  if ((o.convert.kvSplit ?? "uniform") !== "uniform") throw perLayerRefusal("--kv-split per-layer gives each layer its own RoPE pairs and latent width");
  if (!o.convert.ropeDisjoint && c.kvHeads > 1)
    throw new MlaError("BAD_ARGUMENT", `--export deepseek needs each RoPE frequency on at most one KV head of a layer, which per-head selection on ${c.kvHeads} KV heads does not give`, "add --rope-disjoint (docs/deepseek.md)");
  checkExportSettings(c, o.convert.ropePairs ?? defaultRopePairs(c.headDim), o.convert.attention === "eg-mla");
}

/** The options in `fields` as [flag as on the command line, value], for refuseInert. */
function asFlags(fields: object): [string, unknown][] {
  return Object.entries(fields).map(([k, v]) => ["--" + k.replace(/[A-Z]/g, (ch) => "-" + ch.toLowerCase()), v]);
}

/** Refuses options of a phase that is off (--rope-dim without --format deepseek, --lr without --finetune-data), which would otherwise be dropped unseen (refuseInert's policy). */
function refuseIdleOptions(o: PipelineOptions): void {
  if (o.format !== "deepseek") refuseInert(asFlags(o.deepseek ?? {}), "--format deepseek", "widths of the deepseek_v3 model the conversion writes; --export deepseek sizes its own from the model");
  if (o.format !== "deepseek" && o.export !== "deepseek") refuseInert([[booleanFlag("attention-bias", o.attentionBias), o.attentionBias]], "--format deepseek or --export deepseek", "the biases of the deepseek_v3 folder it writes");
  // The export's own check, made now: it runs after the fine-tune, hours later.
  if (o.attentionBias === false) requireFitText(o.convert.calib);
  // eval's --ctx has a default; the pipeline's --eval-ctx has none, so one given is told from one not.
  if (!o.evalText) refuseInert([["--eval-ctx", o.evalCtx]], "--eval-text FILE", "the perplexity windows' length");
  if (!o.finetune || o.finetune.data.length) return;
  // device is the pipeline's own, handed on to the fine-tune.
  const { data: _data, device: _device, ...tuning } = o.finetune;
  refuseInert(asFlags(tuning), "--finetune-data FILE", "the pipeline fine-tunes only when given data");
  throw new MlaError("BAD_ARGUMENT", "--finetune-data names no files", "pass --finetune-data FILE..., or leave it out to skip fine-tuning");
}

/**
 * The conversion phase's settings: the pipeline's, less a calibration text (and its windows) that only
 * the bias-free export reads, which a conversion that reads none would refuse. A text no phase reads
 * stays, so the conversion's checks refuse it.
 */
function conversionPhase(o: PipelineOptions): SettingsInput {
  if (o.format === "deepseek" || !exportReadsCalibration(o) || conversionReadsCalibration(o.convert)) return o.convert;
  const { calib: _calib, calibSamples: _samples, calibLen: _len, ...rest } = o.convert;
  return rest;
}

/** Every evaluation of the pipeline: its --eval-text with the tasks (errors name the pipeline's flags). */
function pipelineEval(o: PipelineOptions): EvalOptions {
  return { ...embeddedEval(o), tasks: o.tasks, dataDir: o.dataDir, limit: o.limit };
}

/**
 * The fine-tune phase's refusals that need the model it trains, made before the conversion on the
 * shapes the conversion will give it (`trained`; the converted model keeps the source's vocabulary,
 * end-of-text id and all but the attention): the end-of-text id, a --precision the device lacks, and
 * a state and activations that cannot fit (the float32 weights it loads counted as taken from the
 * memory free now). Not counted: a --distill teacher's weights, which the phase loads before its own
 * check. The phase checks them all again on the converted model. `tuning`: the fine-tune's options as
 * checkFinetuneOptions gave them.
 */
function checkFinetunePhase(srcDir: string, c: ModelConfig, trained: ModelConfig, o: PipelineOptions, tuning: ReturnType<typeof checkFinetuneOptions>, log: Logger): void {
  const f = o.finetune!;
  const { seq, batch, trainWhat } = tuning;
  checkEndOfText(c, srcDir);
  // The device the phase trains on: the fine-tune's own, where a script sets one, else the pipeline's.
  const backend = selectBackend(f.device ?? o.device ?? "auto", log);
  const choice = { train: trainWhat, checkpoint: f.checkpointActivations ?? false, fullLogits: !!f.distill };
  planMemory(configShape(trained, backend), choice, trainingPrecision(f.precision, backend), batch * (seq - 1));
}

/**
 * Every option whose validity needs no phase's result, checked before the first phase and before
 * --force clears an earlier run: found later, a bad --lr would cost the conversion and evaluations
 * before it, and the corrected command, no longer the one that started the run, would need --force.
 * Each phase's checks are called, not written again here. Returns the --calib windows, cut now (a
 * text too short for one window is refused, a --calib-len past the model's positions warned of, as
 * convert does) for the phase that calibrates to take (none where a resumed run in `out` has done
 * its calibrating phases), and the token cache the fine-tune phase reads (checkFinetuneIds; `scratch`
 * gets a folder made for it).
 */
async function checkOptions(srcDir: string, o: PipelineOptions, log: Logger, out: string, scratch: string[]): Promise<{ cut: CutCalibration | null; tokenCache?: string }> {
  refuseIdleOptions(o);
  const c = readHfConfig(srcDir);
  // The shapes of the model the fine-tune phase trains, for its memory check below.
  let trained: ModelConfig;
  // Silent: the convert phase says what it chose (the default strategy) when it runs.
  if (o.format === "deepseek") {
    const { ropeDim: dr, kvLoraRank: rk } = deepseekShape(c, { ...deepseekSettings(o.convert), ...o.deepseek });
    // Declared attention biases are judged on the weights (a zero q bias converts): read them now.
    checkDeclaredBiases(srcDir, c, o.attentionBias ?? true);
    trained = deepseekShapes(c, { dr, rk, attentionBias: o.attentionBias ?? true });
  } else {
    const s = resolveSettings(c, conversionPhase(o), silentLogger);
    // --kv-split per-layer chooses each layer's split while converting. Its candidate with the most rope
    // pairs has the fewest weights (at equal bytes, k_rope and kv_down share their rows; the latent the
    // up-projections read narrows): a lower bound, so what the check refuses, the phase would too.
    trained = mlaShapes(c, s, s.kvSplitPairs?.at(-1));
  }
  // Its --eval-ctx past the model's positions is warned about here, once, not by each evaluation.
  await checkEmbeddedEval({ ...o, logger: log }, srcDir, c);
  // The task items' ids as the eval phases will encode them, checked against the vocabulary now, not after the conversion.
  const tasks = checkEvalOptions(pipelineEval(o));
  if (tasks.items.size) checkTaskIds(loadTokenizer(srcDir), tasks, c.vocabSize, srcDir);
  // Perplexity and task items start with BOS: a model without one is refused before the conversion.
  if (o.evalText || o.tasks?.length) requireBos(c.bosTokenId);
  if (o.export) checkExportable(c, o);
  // The windows every phase that calibrates reads (the conversion, or the bias-free export hours later):
  // cut from the source model, whose tokenizer and positions the converted and fine-tuned models keep.
  // A --calib no phase reads was refused above, so one given is read. Its file is checked as convert
  // checks it (resolveSettings did not where only the bias-free export reads it: conversionPhase drops it).
  checkCalibFile(o.convert.calib);
  // A resumed run whose calibrating phases are done reads no windows: the first run cut them (and said so).
  const cut = calibratingPhasesDone(out, o) ? null : cutCalibration(srcDir, o.convert.calib, o.convert.calibSamples, o.convert.calibLen, c, log);
  selectBackend(o.device ?? "auto", log);
  if (o.finetune) {
    // finetune's own check: it takes .xz corpora, which a perplexity text may not be.
    for (const f of o.finetune.data) {
      checkDataFile(f, "--finetune-data");
      // A .jsonl file's lines are read now, so that a bad one (file:line) stops the run before the
      // conversion and evaluations, not after them. An .xz corpus would have to be decompressed for it.
      if (f.endsWith(".jsonl") && fs.statSync(f).isFile()) readDocuments(f);
    }
    const tuning = checkFinetuneOptions(o.finetune);
    // The converted model keeps the source's vocabulary and tokenizer.
    if (o.finetune.distill) checkTeacher(o.finetune.distill, c.vocabSize, srcDir);
    // A resumed run whose fine-tune is done may go on where it could not train (another device).
    if (o.force || !finetuneDone(out)) {
      checkFinetunePhase(srcDir, c, trained, o, tuning, log);
      // Last: on a corpus, the tokenizing takes minutes.
      return { cut, tokenCache: await checkFinetuneIds(srcDir, c, o, out, log, scratch) };
    }
  }
  return { cut };
}

/**
 * Refuses --finetune-data whose ids the model's tokenizer puts past its vocabulary now, not when the
 * fine-tune phase tokenizes it after the conversion and evaluations: the phase's own check and
 * tokenizing (checkDataIds), on the source model, whose tokenizer, vocabulary, BOS and EOS the
 * converted one keeps. Only a tokenizer.json with more ids than config.json's vocab_size can give one;
 * with any other nothing is read. The streams go to the token cache the phase reads, so that it does
 * not tokenize them again: the fine-tune's own tokenCache (checked as the phase checks it, before
 * anything is written there), else a scratch folder, added to `scratch` for pipeline() to remove when
 * it ends. Returns the folder the phase reads (undefined: none).
 */
async function checkFinetuneIds(srcDir: string, c: ModelConfig, o: PipelineOptions, out: string, log: Logger, scratch: string[]): Promise<string | undefined> {
  const f = o.finetune!;
  const { mla, tuned } = phaseDirs(out);
  if (f.tokenCache !== undefined) checkTokenCache(f.tokenCache, [{ name: "the converted model's folder", path: mla, output: true }, ...f.data.map((d) => ({ name: "--finetune-data", path: d })), { name: "--distill", path: f.distill }, { name: "the fine-tune's run folder", path: tuned, output: true }]);
  const tokenizer = loadTokenizer(srcDir);
  if (!idsMayPassVocab(tokenizer, c.vocabSize)) return f.tokenCache;
  let cacheDir = f.tokenCache;
  if (cacheDir === undefined) {
    try {
      cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), "mha2mla-pipeline-tokens-"));
    } catch (e) {
      throw ioError("cannot make a scratch folder for the fine-tune's tokens", os.tmpdir(), e);
    }
    scratch.push(cacheDir);
  }
  log.info(`the model's tokenizer has ids past its ${c.vocabSize}-token vocabulary: tokenizing --finetune-data now to check its ids, before the conversion (the fine-tune phase reads the tokens from ${cacheDir})`);
  try {
    await checkDataIds(tokenizer, f.data, { bos: requireBos(c.bosTokenId, srcDir), eos: checkEndOfText(c, srcDir), vocab: { size: c.vocabSize, dir: srcDir }, cacheDir, logger: log, shouldStop: () => o.signal?.aborted === true });
  } catch (e) {
    // Stopped by the signal: said as the signal's stop (the tokenizing says only that a stop was asked for).
    if (e instanceof MlaError && e.code === "INTERRUPTED") throwIfAborted(o.signal);
    throw e;
  }
  return cacheDir;
}

/** The folders of a run's converted, fine-tuned and exported models under --out (the models are done once their config.json is written, the fine-tune once its finetune.json is). */
const phaseDirs = (out: string) => ({ mla: path.join(out, "mla"), tuned: path.join(out, "finetune"), exported: path.join(out, "deepseek") });
const modelWritten = (dir: string) => fs.existsSync(path.join(dir, "config.json"));
const finetuneDone = (out: string) => fs.existsSync(path.join(phaseDirs(out).tuned, "finetune.json"));

/**
 * The folders inside --out that this run writes in, where another run's lock would stop it part-way:
 * its phases' (a fine-tune started in OUT/finetune by `finetune --out` was found only when the
 * fine-tune phase began, after the conversion and evaluations), and with --force, which empties --out,
 * every folder there.
 */
function foldersWritten(out: string, o: PipelineOptions): string[] {
  const isFolder = (p: string) => fs.statSync(p, { throwIfNoEntry: false })?.isDirectory() === true;
  if (o.force) return isFolder(out) ? entriesBesideLock(out).map((f) => path.join(out, f)).filter(isFolder) : [];
  const { mla, tuned, exported } = phaseDirs(out);
  return [mla, ...(o.finetune ? [tuned] : []), ...(o.export ? [exported] : [])];
}

/**
 * Whether a resumed run (same options, no --force) has finished every phase that reads --calib: the
 * conversion and, in the bias-free form, the export. A guess made before checkSameRun confirms the run;
 * a phase that runs after all reads its windows itself.
 */
function calibratingPhasesDone(out: string, o: PipelineOptions): boolean {
  if (o.force) return false;
  const { mla, exported } = phaseDirs(out);
  const exportCalibrates = !!o.export && o.attentionBias === false;
  return modelWritten(mla) && (!exportCalibrates || modelWritten(exported));
}

/** The options pipeline.json records: what the run does, not how this call reports (a stream's internals) or is stopped. */
function recordedSettings({ logger: _l, progress: _p, shouldStop: _s, signal: _a, ...settings }: PipelineOptions): object {
  return settings;
}

export async function pipeline(spec: string, o: PipelineOptions): Promise<PipelineResult> {
  // Folders the run makes for itself outside --out (a scratch token cache: checkFinetuneIds), gone when it ends however it ends.
  const scratch: string[] = [];
  try {
    return await runPipeline(spec, o, scratch);
  } finally {
    for (const d of scratch) fs.rmSync(d, { recursive: true, force: true });
  }
}

async function runPipeline(spec: string, o: PipelineOptions, scratch: string[]): Promise<PipelineResult> {
  checkTypes(o);
  throwIfAborted(o.signal);
  const log = o.logger ?? silentLogger;
  const out = path.resolve(o.out);
  const srcDir = resolveModel(spec).dir;
  const inputs = [
    { name: "the input model folder", path: srcDir },
    { name: "--calib", path: o.convert.calib },
    { name: "--eval-text", path: o.evalText },
    { name: "--data-dir", path: o.tasks?.length ? o.dataDir : undefined },
    ...(o.finetune?.data ?? []).map((f) => ({ name: "--finetune-data", path: f })),
  ];
  refuseOutOverInputs("--out", o.out, [...inputs, { name: "--distill", path: o.finetune?.distill }]);
  // Before --force clears --out (which may hold an earlier run's results): every input file exists.
  for (const i of inputs.slice(1)) if (i.path && !fs.existsSync(i.path)) throw new MlaError("NOT_FOUND", `${i.name} ${i.path} does not exist`, "check the path; nothing was changed");
  // A phase folder another run holds (a fine-tune in OUT/finetune) is refused now, not when its phase starts.
  refuseLockedInside(o.out, foldersWritten(out, o));
  const { cut, tokenCache } = await checkOptions(srcDir, o, log, out, scratch);
  const fingerprint = runFingerprint(spec, o);
  const stateFile = path.join(out, "pipeline.json");
  // An --out holding only the state file is a run whose first phase failed (on what only the work
  // finds, or, before the checks above cut the --calib windows, a calibration text too short): nothing
  // in it to lose, so a corrected command starts over.
  refuseFileAsOutDir(o.out);
  // The run's folder is held from here to the end, by this call alone (its phases' folders are inside it).
  const existed = fs.existsSync(out);
  return withOutLock(o.out, { command: "pipeline", log }, async () => {
    // Again, now that no run can start inside --out: one may have while the options were checked.
    refuseLockedInside(o.out, foldersWritten(out, o));
    const nothingDone = existed && entriesBesideLock(out).every((name) => name === "pipeline.json");
    if (existed && !o.force && !nothingDone) {
      checkSameRun(o.out, stateFile, spec, o, log);
    } else {
      refuseForeignFolder(o.out, !!o.force, ["pipeline.json"], "pipeline run (no pipeline.json)");
      emptyRunFolder(out, "the pipeline's --out folder");
      writeFileAtomic(stateFile, JSON.stringify({ fingerprint, model: spec, settings: recordedSettings(o), cwd: process.cwd(), started: new Date().toISOString() }, null, 2) + "\n");
    }
    const phases: PipelineResult["phases"] = [];
    // A stop asked for through shouldStop between phases (outside fine-tuning) ends the run before the next one;
    // finished phases are kept, and the same command resumes.
    let stoppedEarly = false;
    const resumes = `the finished phases are kept in ${o.out} (and an interrupted fine-tune's last checkpoint); call pipeline() again with the same options to resume`;
    const phase = async <T>(name: string, done: () => boolean, run: () => Promise<T>): Promise<void> => {
      const t0 = performance.now();
      if (done()) {
        phases.push({ name, skipped: true, seconds: 0 });
        log.info(`pipeline: ${name} already done`);
        return;
      }
      if (stoppedEarly || o.shouldStop?.()) {
        stoppedEarly = true;
        return;
      }
      log.info(`pipeline: ${name}`);
      await resumableStep(o.signal, resumes, run);
      // A fine-tune stopped part-way is not done: the next run resumes it.
      if (!stoppedEarly) phases.push({ name, skipped: false, seconds: (performance.now() - t0) / 1000 });
    };
    const evalTo = (label: string, model: string, file: string) =>
      phase(`eval ${label}`, () => fs.existsSync(file), async () => {
        const r = await evaluate(model, { ...pipelineEval(o), label, device: o.device, progress: o.progress, signal: o.signal, logger: log, pastPositionsWarned: true });
        writeFileAtomic(file, JSON.stringify(r, null, 2) + "\n");
      });
    const { mla, tuned: ft, exported } = phaseDirs(out);
    const files = { original: path.join(out, "eval-original.json"), converted: path.join(out, "eval-converted.json"), finetuned: path.join(out, "eval-finetuned.json"), exported: path.join(out, "eval-exported.json") };
    const common = { out: mla, force: true, device: o.device, progress: o.progress, logger: log, signal: o.signal };
    await phase("convert", () => modelWritten(mla), (): Promise<unknown> =>
      o.format === "deepseek"
        ? convertDeepseekWithWindows(spec, { ...deepseekSettings(o.convert), ...o.deepseek, ...(o.attentionBias === false ? { attentionBias: false } : {}), ...common }, cut)
        : convertWithWindows(spec, { ...conversionPhase(o), ...common }, cut),
    );
    await evalTo("original", spec, files.original);
    await evalTo("converted", mla, files.converted);
    if (o.finetune) {
      await phase("finetune", () => finetuneDone(out), async () => {
        const resume = fs.existsSync(path.join(ft, "checkpoint", "state.json"));
        // The pipeline's device covers every phase (the fine-tune's own, where a script sets one, wins).
        // The token cache checkOptions tokenized --finetune-data into, where it did: read, not tokenized again.
        const r = await finetune(mla, { ...o.finetune!, ...(tokenCache === undefined ? {} : { tokenCache }), device: o.finetune!.device ?? o.device, out: ft, resume, force: !resume, logger: log, progress: o.progress, shouldStop: o.shouldStop, signal: o.signal });
        stoppedEarly = r.stoppedEarly;
      });
      await evalTo("fine-tuned", ft, files.finetuned);
    }
    if (o.export) {
      await phase("export", () => modelWritten(exported), () =>
        exportDeepseekWithWindows(o.finetune ? ft : mla, {
          out: exported,
          force: true,
          // The bias-free form fits kv_a_layernorm on the conversion's calibration text.
          ...(o.attentionBias === false ? { attentionBias: false, calib: o.convert.calib, calibSamples: o.convert.calibSamples, calibLen: o.convert.calibLen } : {}),
          device: o.device,
          progress: o.progress,
          logger: log,
          signal: o.signal,
        }, cut),
      );
      await evalTo("exported (deepseek_v3)", exported, files.exported);
    }
    if (stoppedEarly) return { out, phases, evals: [], report: null, stoppedEarly };
    const jsons = [files.original, files.converted, ...(o.finetune ? [files.finetuned] : []), ...(o.export ? [files.exported] : [])];
    const report = writeReport(jsons, path.join(out, "report.html"), { trainLogs: o.finetune ? [path.join(ft, "train_log.jsonl")] : [] });
    phases.push({ name: "report", skipped: false, seconds: 0 });
    return { out, phases, evals: jsons.map((f) => JSON.parse(fs.readFileSync(f, "utf8")) as EvalResult), report, stoppedEarly };
  });
}
