/**
 * `convert`: MHA/GQA checkpoint → MLA checkpoint. Streams layer by layer: every tensor that is not a
 * key/value projection is copied byte for byte; each layer's k_proj/v_proj are read, factored and
 * written before the next layer is touched, so memory stays at about one layer. The output folder
 * appears only when complete (temporary sibling + rename).
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError } from "../errors.js";
import { beginOutDir, commitOutDir, abandonOutDir } from "../io/atomicDir.js";
import { Checkpoint, CheckpointWriter, copyModelSideFiles, modelSideFiles } from "../io/checkpoint.js";
import { DTYPE_BYTES, DType, encodeFromF32 } from "../io/dtype.js";
import { readHfConfig } from "../io/hfConfig.js";
import { resolveModel } from "../io/modelDir.js";
import { numel, type TensorSpec } from "../io/safetensors.js";
import { ByteBudget } from "../io/byteBudget.js";
import { kvElemsPerToken, MlaAttention, MlaSplit, ModelConfig } from "../model/config.js";
import { expectedTensors, layerPrefix } from "../model/weights.js";
import { requireSourceTensors, undeclaredTensors, undeclaredWarning } from "./sourceTensors.js";
import { loadModel } from "../model/llama.js";
import { DeviceName, selectBackend, selectLinalg } from "../backends/select.js";
import { chosenLinalg, linalgScope, useLinalg } from "../backends/native/linalg.js";
import { calibrate, CalibrationStats } from "../ropeSelect/calibrate.js";
import { describeRefit, refitOutputProjections, refitRecord, RefitResult } from "./refitOutput.js";
import { requireRoom, weightFileBytes } from "../io/diskRoom.js";
import { checkEmbeddedEval, embeddedEval, evaluate, EvalResult } from "../eval/evaluate.js";
import { inspectModel } from "../eval/inspect.js";
import { silentLogger, Logger, warningsOnce } from "../util/log.js";
import { Progress, ProgressSink } from "../util/progress.js";
import { factorTensors, LayerFactors } from "./factor.js";
import { checkDeviceName, checkOutDir, ConversionPlan, refuseDefaultOutInModel, ConversionSettings, defaultOut, planConversion, resolveSettings, SETTINGS_KINDS, SettingsInput } from "./plan.js";
import { checkOptionTypes, type OptionKinds } from "../util/optionTypes.js";
import { nextTurn, throwIfAborted } from "../util/abort.js";
import { LayerSource } from "./layerSource.js";
import { chooseKvSplits, kvSplitRecord, SplitChoice } from "./splitChoice.js";
import { calibrationRecord, readCalibrationWindows, type CutCalibration } from "./calibrationNeeds.js";
import { mlaSection, splitFields } from "../io/mlaSection.js";
import { buildReport, ConversionReport, reportMarkdown } from "./report.js";
import { initialGate } from "./gate.js";

export const TOOL_VERSION = "0.1.0";

export interface ConvertOptions extends SettingsInput {
  out?: string;
  /** Backend for calibration and the report's evaluations (default auto). */
  device?: DeviceName;
  force?: boolean;
  /** Only validate and report the KV accounting; write nothing. */
  dryRun?: boolean;
  evalText?: string;
  evalTokens?: number;
  evalCtx?: number;
  logger?: Logger;
  progress?: ProgressSink | null;
  /**
   * Aborting it stops the conversion at the next calibration window, or inside the layer being
   * factored at its next boundary: after its whitening roots, between the split SVD's key and value
   * factorizations, between the per-layer split choice's candidates and their scoring, after the
   * layer (MlaError INTERRUPTED; never inside an SVD call). No output folder is left.
   */
  signal?: AbortSignal;
}

const CONVERT_KINDS: OptionKinds<ConvertOptions> = {
  ...SETTINGS_KINDS,
  out: "string",
  device: "string",
  force: "boolean",
  dryRun: "boolean",
  evalText: "string",
  evalTokens: "number",
  evalCtx: "number",
  logger: "object",
  progress: "object",
  signal: "object",
};

/** What a conversion returns: a dry run's result (out null, nothing written) or a written one's; `out` tells them apart. */
export type ConvertResult = WrittenConversion | DryRunConversion;

/** A conversion's result, both kinds. */
interface ConversionResultBase {
  /** The plan; its settings are those mla_conversion.json records (no calibration text or windows where none is read, a dry run included). */
  plan: ConversionPlan;
  /** [layer]: the singular-value energy the factorization kept ([] for a dry run). */
  energy: number[];
  timings: Record<string, number>;
}

/** convert() without dryRun: the folder written. */
export interface WrittenConversion extends ConversionResultBase {
  /** The output folder (absolute). */
  out: string;
  /** [layer][kvHead] → the rope pairs kept. */
  selection: number[][][];
  /** [layer] → its rope pairs and latent width (all equal unless --kv-split per-layer). */
  splits: MlaSplit[];
  /** With evalText: the before/after evaluation (also report.json in the folder). */
  report: ConversionReport | null;
}

/** convert() with dryRun: true: the plan and its KV accounting, nothing written. */
export interface DryRunConversion extends ConversionResultBase {
  out: null;
  selection: null;
  splits: null;
  report: null;
}

/**
 * Converts `spec` (see the file's header). Typed by `dryRun` where the call's options say it
 * literally: without it `out` is a string, with `dryRun: true` null; a `dryRun` only known at run
 * time gives the union (check `out !== null`).
 */
export function convert(spec: string, opts: ConvertOptions & { dryRun: true }): Promise<DryRunConversion>;
export function convert(spec: string, opts: ConvertOptions & { dryRun?: false }): Promise<WrittenConversion>;
export function convert(spec: string, opts: ConvertOptions): Promise<ConvertResult>;
export async function convert(spec: string, opts: ConvertOptions): Promise<ConvertResult> {
  return convertWithWindows(spec, opts, null);
}

/**
 * convert() taking the --calib windows its caller cut already (`cut`, the pipeline's up-front checks),
 * so the text is not read, nor its warning and note said, again. Not part of the public API.
 */
export async function convertWithWindows(spec: string, opts: ConvertOptions, cut: CutCalibration | null): Promise<ConvertResult> {
  checkOptionTypes("convert()", opts, CONVERT_KINDS, ["rank"]);
  checkDeviceName(opts.device);
  throwIfAborted(opts.signal);
  // The float64 route this conversion picks (from --device) is its own, not the process's.
  return linalgScope(() => convertInScope(spec, opts, cut));
}

async function convertInScope(spec: string, opts: ConvertOptions, cut: CutCalibration | null): Promise<ConvertResult> {
  const log = opts.logger ?? silentLogger;
  const t0 = performance.now();
  const timings: Record<string, number> = {};
  const { dir: srcDir } = resolveModel(spec);
  const config = readHfConfig(srcDir);
  // Its notes (a strategy defaulted for want of --calib) wait for the checks below: a refused --out was
  // preceded by a note about --calib.
  const notes: string[] = [];
  const settings = resolveSettings(config, opts, { info: (m) => notes.push(m), warn: (m) => log.warn(m) });
  const src = Checkpoint.open(srcDir);
  let tmp: string | null = null;
  try {
    // Every declared tensor there, of its shape and a float dtype: a dry run is refused what the run would be.
    requireSourceTensors(src, config);
    modelSideFiles(srcDir); // copied after the work: an unreadable one is refused before it
    const kName = layerPrefix(0) + "self_attn.k_proj.weight";
    const kvDtype: DType = src.has(kName) ? src.entry(kName).dtype : "F32";
    const plan = planConversion(config, settings, DTYPE_BYTES[kvDtype]);
    // The evaluation text is read after the conversion: check it now, not after minutes of work (a
    // dry run too: it validates what the real run would be refused for).
    await checkEmbeddedEval(opts, srcDir, config);
    const out = path.resolve(opts.out ?? defaultOut(spec, settings.rank));
    const inputs = [{ name: "--calib", path: settings.calib }, { name: "--eval-text", path: opts.evalText }];
    refuseDefaultOutInModel(out, srcDir, opts.out);
    checkOutDir(out, srcDir, opts.force ?? false, inputs, opts.dryRun ? log : undefined);
    // The converted model is at most its source's size (smaller attention), plus EG-MLA's float32 gate:
    // (vocab + latent) × --gate-dim values per layer (a large --gate-dim passed this check, then filled the disk).
    requireRoom(out, weightFileBytes(srcDir) + settings.gateDim * (config.vocabSize + plan.latentDim) * config.layers * 4, "the converted model");
    for (const note of notes) log.info(note);

    // What only the files can refuse (no tokenizer, a --calib shorter than one window, a --device whose
    // library does not load) is read before a dry run answers: it refuses what the run would, in its words.
    // The plan decides whether calibration runs (its settings keep --calib only where a setting reads it, and resolveSettings refuses one none reads), so the records and the result agree.
    const windows = readCalibrationWindows(srcDir, plan.settings.calib, settings.calibSamples, settings.calibLen, opts.calibSamples, config, log, cut);
    const linalg = selectLinalg(opts.device ?? "auto", log);
    if (opts.dryRun) return { out: null, plan, selection: null, splits: null, energy: [], timings, report: null };

    useLinalg(linalg);
    log.info(`factoring with the ${linalg?.name ?? "TypeScript"} float64 routines`);
    const { source, attention, choice } = await analyzeSource(srcDir, src, config, settings, plan, windows, opts, log, timings);
    const mlaConfig: ModelConfig = { ...config, attention };
    // Every candidate spends the budget's bytes (kvSplit.ts), so the total is the uniform conversion's.
    if (kvElemsPerToken(mlaConfig) !== plan.after.elems_per_token) throw new Error(`internal: the chosen splits cache ${kvElemsPerToken(mlaConfig)} values per token, the plan ${plan.after.elems_per_token}`);
    const selection = attention.selection;

    const undeclared = undeclaredTensors(src, config);
    const warning = undeclaredWarning(src, config, undeclared);
    if (warning) log.warn(warning);
    tmp = beginOutDir(out, opts.force ?? false);
    const tFactor: PhaseTimes = { s: 0, wait: 0, readWait: 0, writeWait: 0 };
    const energy = await writeConverted(src, config, mlaConfig, kvDtype, undeclared, tmp, source, tFactor, opts);
    timings["factor_s"] = tFactor.s;
    timings["factor_wait_s"] = tFactor.wait;
    timings["read_wait_s"] = tFactor.readWait;
    timings["write_wait_s"] = tFactor.writeWait;
    writeConfigAndFiles(srcDir, tmp, settings, attention);
    let refit: RefitResult | null = null;
    if (settings.refitOutput) {
      const t = performance.now();
      refit = await refitOutputProjections(srcDir, tmp, windows, selectBackend(opts.device ?? "auto", log), { progress: opts.progress, signal: opts.signal });
      timings["refit_s"] = (performance.now() - t) / 1000;
      log.info(describeRefit(refit));
    }
    timings["convert_s"] = (performance.now() - t0) / 1000;

    let report: ConversionReport | null = null;
    if (opts.evalText) {
      // Both evaluations read the same text: a warning about it (fewer tokens than --eval-tokens) is said once.
      const e = { ...embeddedEval(opts), device: opts.device, progress: opts.progress, signal: opts.signal, logger: warningsOnce(log), pastPositionsWarned: true };
      const before: EvalResult = await evaluate(srcDir, e);
      const after: EvalResult = await evaluate(tmp, e);
      before.model = spec;
      after.model = out;
      timings["eval_s"] = before.seconds + after.seconds;
      report = buildReport(spec, out, plan, energy, before, after, timings, kvDtype, { before: inspectModel(srcDir).params, after: inspectModel(tmp).params }, attention.splits);
      fs.writeFileSync(path.join(tmp, "report.json"), JSON.stringify(report, null, 2) + "\n");
      fs.writeFileSync(path.join(tmp, "report.md"), reportMarkdown(report));
    }
    timings["total_s"] = (performance.now() - t0) / 1000;
    fs.writeFileSync(
      path.join(tmp, "mla_conversion.json"),
      JSON.stringify({ tool: "mha2mla", version: TOOL_VERSION, source: { model: spec, dir: srcDir }, settings: plan.settings, ...calibrationRecord(settings.calib, windows), latent_dim: splitFields(attention).latent_dim, kv: { before: plan.before, after: plan.after, change_percent: plan.kvChangePercent }, ...kvSplitRecord(choice), selection, retained_energy: energy, ...refitRecord(refit), timings, created: new Date().toISOString() }, null, 2) + "\n",
    );
    // A stop asked for after the last layer (while the config or side files were written) is honoured
    // too, as convert --format deepseek does: an aborted call always throws and leaves no folder.
    throwIfAborted(opts.signal);
    commitOutDir(tmp, out, opts.force ?? false);
    tmp = null;
    return { out, plan, selection, splits: attention.splits, energy, timings, report };
  } catch (e) {
    if (tmp) abandonOutDir(tmp);
    throw e;
  } finally {
    src.close();
  }
}

/**
 * What runs the original model: calibration (2-norm scores, covariances) and the per-layer split
 * choice. Returns how each layer will be factored and the converted model's attention; the model is
 * disposed on return, before the writer streams the checkpoint layer by layer.
 */
async function analyzeSource(srcDir: string, src: Checkpoint, config: ModelConfig, settings: ConversionSettings, plan: ConversionPlan, windows: Int32Array[], opts: ConvertOptions, log: Logger, timings: Record<string, number>): Promise<{ source: LayerSource; attention: MlaAttention; choice: SplitChoice | null }> {
  const perLayer = settings.kvSplit === "per-layer";
  const calibrated = settings.ropeStrategy === "2-norm" || settings.svdInit === "activations";
  const original = calibrated || perLayer ? loadModel(srcDir, { backend: selectBackend(opts.device ?? "auto", log) }).model : null;
  // Its weights go back to the backend on return, however it returns, not when the collector runs.
  try {
    let stats: CalibrationStats | null = null;
    if (original && calibrated) {
      stats = await calibrate(original, windows, { covariance: settings.svdInit === "activations", progress: opts.progress, signal: opts.signal });
      timings["calibration_s"] = stats.seconds;
    }
    // The split choice keeps each layer's winning factors for the writer, within a budget (keptFactorBytes).
    const source = new LayerSource(src, config, settings, stats, opts.signal, perLayer ? keptFactorBytes() : 0);
    const { svd, gateDim } = settings;
    if (!perLayer) {
      const split = { ropePairs: settings.ropePairs, rank: settings.rank, latentDim: plan.latentDim };
      const selection = Array.from({ length: config.layers }, (_, l) => source.pairs(l, settings.ropePairs));
      return { source, attention: { kind: "mla", splits: Array.from({ length: config.layers }, () => split), selection, svd, gateDim }, choice: null };
    }
    const choice = await chooseKvSplits(original!, windows, source, settings, log, { progress: opts.progress, signal: opts.signal });
    timings["kv_split_s"] = choice.seconds;
    return { source, attention: { kind: "mla", splits: choice.chosen.map((i) => choice.candidates[i]!), selection: choice.selection, svd, gateDim }, choice };
  } finally {
    original?.dispose();
  }
}

/** Where the conversion's time went: factoring (summed per layer, overlapped) and what the writer loop waited for. */
interface PhaseTimes {
  s: number;
  wait: number;
  readWait: number;
  writeWait: number;
}

/** Writes all tensors in order, the `undeclared` ones of `src` (undeclaredTensors) last; returns the retained energy per layer. */
async function writeConverted(src: Checkpoint, config: ModelConfig, mla: ModelConfig, kvDtype: DType, undeclared: readonly string[], dir: string, source: LayerSource, tFactor: PhaseTimes, run: Pick<ConvertOptions, "progress" | "signal">): Promise<number[]> {
  const targets: TensorSpec[] = [
    // EG-MLA's gate stays float32 whatever the model's dtype: a bf16 bias would move the gate off 1.
    ...expectedTensors(mla).map((t) => ({ ...t, dtype: src.has(t.name) ? src.entry(t.name).dtype : /kv_gate_/.test(t.name) ? ("F32" as DType) : kvDtype })),
    ...undeclared.map((n) => ({ name: n, dtype: src.entry(n).dtype, shape: src.entry(n).shape })),
  ];
  const writer = new CheckpointWriter(dir, targets, { metadata: { format: "pt" } });
  const energy: number[] = [];
  const progress = new Progress("convert", config.layers, "layers", run.progress);
  const a = mla.attention.kind === "mla" ? mla.attention : null;
  // Layer ℓ+1 is factored (off the JavaScript thread on CUDA) while layer ℓ's other tensors are written.
  const inFlight = new Map<number, Promise<LayerFactors>>();
  const start = (layer: number) => {
    if (layer >= config.layers || inFlight.has(layer)) return;
    const t1 = performance.now();
    // The factors the split choice made of this layer's chosen split where it kept them, else made now.
    const job = source.take(layer, a!.splits[layer]!.rank, a!.selection[layer]!).then((f) => {
      tFactor.s += (performance.now() - t1) / 1000;
      return f;
    });
    job.catch(() => {}); // awaited below; a failure of a look-ahead layer surfaces there
    inFlight.set(layer, job);
  };
  // The targets are the MLA model's tensors and the source's undeclared ones; the source's key/value
  // projections are none of them (they are factored into the new ones). So every target the source holds,
  // undeclared ones included (a k_proj bias without attention_bias, a layer past num_hidden_layers), is
  // copied as it is, and the others are made from the layer's factors.
  const copied = (name: string) => src.has(name);
  const io = new ByteBudget(
    targets.map((t) => ({ bytes: numel(t.shape) * DTYPE_BYTES[t.dtype], read: copied(t.name) ? () => src.readBytesAsync(t.name) : null })),
    readAheadBytes(),
  );
  let current: { layer: number; f: LayerFactors; gate?: ReturnType<typeof initialGate> } | null = null;
  try {
    for (const [i, t] of targets.entries()) {
      if (copied(t.name)) {
        const bytes = await io.take(i);
        io.wrote(bytes.length, writer.append(bytes), false);
        continue;
      }
      const layer = Number(/^model\.layers\.(\d+)\./.exec(t.name)?.[1]);
      if (!current || current.layer !== layer) {
        // A stop seen while the previous layer was written spares this layer's SVD.
        throwIfAborted(run.signal);
        start(layer);
        // Look ahead only where factoring leaves the JavaScript thread; on the CPU it would just run first.
        if (chosenLinalg()?.factorColsAsync) start(layer + 1);
        const t1 = performance.now();
        const done: LayerFactors = await inFlight.get(layer)!;
        tFactor.wait += (performance.now() - t1) / 1000;
        inFlight.delete(layer);
        energy.push(done.energy);
        current = { layer, f: done };
        progress.tick();
        // A turn of the event loop, not just a look at the signal: on the CPU a layer's SVD never
        // leaves the JavaScript thread and its reads were issued ahead, so without it a Ctrl-C
        // handler (which aborts the signal) would run only after the last layer.
        await nextTurn(run.signal);
      }
      const f = current.f;
      const name = t.name.slice((layerPrefix(layer) + "self_attn.").length);
      if (a!.gateDim > 0 && name.startsWith("kv_gate_")) current.gate ??= initialGate(layer, config.vocabSize, a!.gateDim, a!.splits[layer]!.latentDim);
      const gate = current.gate;
      const values = ({ ...factorTensors(f), "kv_gate_embed.weight": gate?.embed, "kv_gate_proj.weight": gate?.proj, "kv_gate_proj.bias": gate?.bias } as Record<string, Float32Array | null | undefined>)[name];
      if (!values) throw new MlaError("BAD_CHECKPOINT", `${src.dir}: tensor "${t.name}" is missing`, "the checkpoint does not match its config.json");
      const bytes = encodeFromF32(t.dtype, values);
      io.wrote(bytes.length, writer.append(bytes), true);
    }
  } catch (e) {
    await writer.abandon(); // its open shard file, which the caller's cleanup removes
    throw e;
  } finally {
    await Promise.allSettled(inFlight.values()); // never leave a GPU call writing into freed arrays
    await io.drain(); // nor a write into a folder that is about to be removed
  }
  const t1 = performance.now();
  await writer.close();
  tFactor.readWait = io.waited.read;
  tFactor.writeWait = io.waited.write + (performance.now() - t1) / 1000;
  return energy;
}

/**
 * Megabytes from the environment variable `name` (default 1024), in bytes; `zeroHint`: 0 is allowed and
 * means what it says, else a size must be positive.
 */
function envMegabytes(name: string, zeroHint?: string): number {
  const v = process.env[name];
  if (v === undefined || v === "") return 1024 * 2 ** 20;
  const mb = Number(v);
  if (!(Number.isFinite(mb) && (zeroHint ? mb >= 0 : mb > 0)))
    throw new MlaError("BAD_ARGUMENT", `${name}=${v} is not a size in MB`, zeroHint ? `use a number ≥ 0 (default 1024; ${zeroHint}), or unset it` : "use a positive number (default 1024), or unset it");
  return mb * 2 ** 20;
}

/** Bytes read ahead of the writer (MHA2MLA_READ_AHEAD_MB, default 1024): enough to keep the disk busy, small against the RSS goal. */
const readAheadBytes = () => envMegabytes("MHA2MLA_READ_AHEAD_MB");

/**
 * Bytes of the chosen splits' factors that `--kv-split per-layer` keeps from its search for the writer
 * (MHA2MLA_KEPT_FACTORS_MB, default 1024): the layers past it are factored again (the same result).
 */
const keptFactorBytes = () => envMegabytes("MHA2MLA_KEPT_FACTORS_MB", "0 factors every layer again in the writer");

function writeConfigAndFiles(srcDir: string, dir: string, s: ConversionSettings, attention: MlaAttention): void {
  const raw = JSON.parse(fs.readFileSync(path.join(srcDir, "config.json"), "utf8")) as Record<string, unknown>;
  raw["mha2mla"] = mlaSection(attention, s);
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(raw, null, 2) + "\n");
  copyModelSideFiles(srcDir, dir);
}
