/**
 * The pipeline's checks made before its first phase (see pipeline.ts): the options' types, every
 * option whose validity needs no phase's result (each phase's own checks, called on the source model
 * and the shapes the conversion will give it), and the folders inside --out that the run writes in,
 * which another run's lock would stop part-way. With them, what the checks and the phases share: the
 * phases' folders under --out and the options the conversion and the evaluations are given.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { booleanFlag, ioError, MlaError, refuseInert } from "./errors.js";
import { deepseekSettings, deepseekShape, deepseekShapes } from "./deepseek/export.js";
import { checkDeclaredBiases, checkExportSettings, perLayerRefusal } from "./deepseek/exportable.js";
import { defaultRopePairs } from "./ropeSelect/strategies.js";
import { readHfConfig } from "./io/hfConfig.js";
import { checkCalibFile, mlaShapes, resolveSettings, SETTINGS_KINDS, type SettingsInput } from "./convert/plan.js";
import type { ModelConfig } from "./model/config.js";
import { checkEmbeddedEval, checkEvalOptions, embeddedEval, EvalOptions } from "./eval/evaluate.js";
import { requireBos } from "./eval/perplexity.js";
import { checkDataFile, checkDataIds, idsMayPassVocab, readDocuments } from "./finetune/data.js";
import { checkTokenCache } from "./finetune/runFolder.js";
import { checkTaskIds } from "./eval/tasks/index.js";
import { loadTokenizer } from "./io/tokenizer.js";
import { checkEndOfText } from "./finetune/trainer.js";
import { configShape, planMemory, trainingPrecision } from "./finetune/trainState.js";
import { exportReadsCalibration } from "./pipelineState.js";
import { conversionReadsCalibration, cutCalibration, type CutCalibration } from "./convert/calibrationNeeds.js";
import { checkFinetuneOptions, checkTeacher, FINETUNE_KINDS } from "./finetune/options.js";
import { checkOptionTypes, type OptionKinds } from "./util/optionTypes.js";
import { throwIfAborted } from "./util/abort.js";
import { silentLogger, Logger } from "./util/log.js";
import { selectBackend } from "./backends/select.js";
import { requireFitText } from "./deepseek/latentNorm.js";
import { entriesBesideLock } from "./io/outLock.js";
import type { PipelineOptions } from "./pipeline.js";

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
export function checkTypes(o: unknown): asserts o is PipelineOptions {
  checkOptionTypes("pipeline()", o, PIPELINE_KINDS, ["out", "convert"]);
  checkOptionTypes<SettingsInput>("pipeline()'s convert", o.convert, SETTINGS_KINDS, ["rank"]);
  if (o.deepseek) checkOptionTypes<PipelineDeepseek>("pipeline()'s deepseek", o.deepseek, PIPELINE_DEEPSEEK_KINDS);
  if (o.finetune) checkOptionTypes<PipelineFinetune>("pipeline()'s finetune", o.finetune, PIPELINE_FINETUNE_KINDS, ["data"]);
  // Strings of the right type but not a known value: "hf" ran a deepseek export, "DeepSeek" our format.
  if (o.format !== undefined && o.format !== "mha2mla" && o.format !== "deepseek") throw new MlaError("BAD_ARGUMENT", `pipeline(): format ${JSON.stringify(o.format)} is not known`, 'use "mha2mla" (the default) or "deepseek"');
  if (o.export !== undefined && o.export !== "deepseek") throw new MlaError("BAD_ARGUMENT", `pipeline(): export ${JSON.stringify(o.export)} is not known`, 'use "deepseek", or leave export out');
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
export function conversionPhase(o: PipelineOptions): SettingsInput {
  if (o.format === "deepseek" || !exportReadsCalibration(o) || conversionReadsCalibration(o.convert)) return o.convert;
  const { calib: _calib, calibSamples: _samples, calibLen: _len, ...rest } = o.convert;
  return rest;
}

/** Every evaluation of the pipeline: its --eval-text with the tasks (errors name the pipeline's flags). */
export function pipelineEval(o: PipelineOptions): EvalOptions {
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
export async function checkOptions(srcDir: string, o: PipelineOptions, log: Logger, out: string, scratch: string[]): Promise<{ cut: CutCalibration | null; tokenCache?: string }> {
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
export const phaseDirs = (out: string) => ({ mla: path.join(out, "mla"), tuned: path.join(out, "finetune"), exported: path.join(out, "deepseek") });
export const modelWritten = (dir: string) => fs.existsSync(path.join(dir, "config.json"));
export const finetuneDone = (out: string) => fs.existsSync(path.join(phaseDirs(out).tuned, "finetune.json"));

/**
 * The folders inside --out that this run writes in, where another run's lock would stop it part-way:
 * its phases' (a fine-tune started in OUT/finetune by `finetune --out` was found only when the
 * fine-tune phase began, after the conversion and evaluations), and with --force, which empties --out,
 * every folder there.
 */
export function foldersWritten(out: string, o: PipelineOptions): string[] {
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
