/**
 * `convert --format deepseek`: an MHA/GQA Llama checkpoint → a `deepseek_v3` folder that stock
 * `DeepseekV3ForCausalLM` loads without custom code (vLLM and SGLang drop its attention biases: serving.ts;
 * `attentionBias: false` writes the bias-free form they serve, its norm fitted by ./latentNorm.ts). The layer math is in
 * ./layer.ts; this file reads the source, calibrates, picks the rope ladder, streams the tensors out
 * (the output folder appears only when complete) and writes the config.
 */
import fs from "node:fs";
import path from "node:path";
import { booleanFlag, MlaError, refuseInert } from "../errors.js";
import { abandonOutDir, beginOutDir, commitOutDir } from "../io/atomicDir.js";
import { Checkpoint, copyModelSideFiles, modelSideFiles } from "../io/checkpoint.js";
import { DType } from "../io/dtype.js";
export { roundingFor } from "../io/dtype.js";
import { roundingFor } from "../io/dtype.js";
import { readHfConfig } from "../io/hfConfig.js";
import { resolveModel } from "../io/modelDir.js";
import { layerPrefix } from "../model/weights.js";
import { loadModel } from "../model/llama.js";
import type { ModelConfig } from "../model/config.js";
import { DeviceName, selectBackend, selectLinalg } from "../backends/select.js";
import { linalgScope, useLinalg } from "../backends/native/linalg.js";
import { calibrate, CalibrationStats, checkWindowShape, DEFAULT_CALIB_LEN, DEFAULT_CALIB_SAMPLES } from "../ropeSelect/calibrate.js";
import { checkRopePairs, defaultRopePairs } from "../ropeSelect/strategies.js";
import { covarianceRoots } from "../svd/truncated.js";
import { silentLogger, Logger, warningsOnce } from "../util/log.js";
import { checkOptionTypes, type OptionKinds } from "../util/optionTypes.js";
import { Progress, ProgressSink } from "../util/progress.js";
import { alreadyMla, checkCalibFile, checkDeviceName, checkOutDir, defaultDeepseekOut, refuseDefaultOutInModel, SETTINGS_KINDS, SettingsInput } from "../convert/plan.js";
import { checkEmbeddedEval, embeddedEval, evaluate } from "../eval/evaluate.js";
import { deepseekLayer, foldValueBias, FrequencyPca, frequencyPca, ladder, ladderScores, validSpacings } from "./layer.js";
import { convertRemedy, servingWarnings } from "./serving.js";
import { describeRefit, refitOutputProjections, refitRecord } from "../convert/refitOutput.js";
import { requireRoom, weightFileBytes } from "../io/diskRoom.js";
import { deepseekSpecs, planTensors, strayNotes, writePlanned } from "./stream.js";
import { finiteForFactoring, requireSourceTensors, undeclaredTensors } from "../convert/sourceTensors.js";
import { checkDeclaredBiasesOf } from "./exportable.js";
import { calibrationRecord, readCalibrationWindows, refuseWindowsWithoutText, requireCalibration, type CutCalibration } from "../convert/calibrationNeeds.js";
import { nextTurn, throwIfAborted } from "../util/abort.js";
import { describeLatentNormFit, fitLatentNorms, latentNormRecord, requireFitText } from "./latentNorm.js";
import { percentChange } from "../util/percent.js";

export interface DeepseekOptions extends DeepseekEvalOptions {
  /** Latent dims per KV head of the equivalent mha2mla conversion: sets the KV budget with ropePairs. */
  rank: number;
  /** RoPE pairs per KV head of the equivalent mha2mla conversion (default head_dim/16). */
  ropePairs?: number;
  /** qk_rope_head_dim (even, ≤ head_dim); default min(2·R·Hkv, head_dim). */
  ropeDim?: number;
  /** kv_lora_rank (constant channel included); default keeps the KV bytes of the mha2mla conversion: rank·Hkv + 2·R·Hkv − ropeDim. */
  kvLoraRank?: number;
  svdInit?: "weights" | "activations";
  /** Balance keys against values before the joint SVD (TransMLA's BKV); default true. */
  balanceKv?: boolean;
  /** Refit each layer's o_proj on the calibration text after factoring (src/convert/refitOutput.ts); needs calib. */
  refitOutput?: boolean;
  calib?: string;
  /** Windows of `calib` and their length (defaults 32 and 256); refused without calib. */
  calibSamples?: number;
  calibLen?: number;
  /** Interleaved rope rows (rope_interleave, DeepSeek's own layout and what vLLM expects); default true. */
  interleave?: boolean;
  /**
   * true (default): exact kv_a_layernorm through a constant latent channel held by the kv_a bias
   * (stock transformers; vLLM and SGLang drop it). false (`--no-attention-bias`): no biases, every
   * latent channel learned, kv_a_layernorm's weight fitted on `calib` (required): ./latentNorm.ts.
   */
  attentionBias?: boolean;
  /** Output folder (default ./NAME-deepseek-r<rank>, or ./NAME-deepseek-kv<kvLoraRank> where rank sets nothing: defaultDeepseekOut). */
  out?: string;
  force?: boolean;
  /** Only validate and return the KV accounting; write nothing. */
  dryRun?: boolean;
}

/** The evaluation (and device) settings both deepseek writers take: with evalText, the NLL of the source and of the result (report.json in the output). */
export interface DeepseekEvalOptions {
  evalText?: string;
  evalTokens?: number;
  evalCtx?: number;
  device?: DeviceName;
  logger?: Logger;
  progress?: ProgressSink | null;
  /**
   * Aborting it stops the work at its next layer, calibration or evaluation window (MlaError
   * INTERRUPTED); no output folder, whole or temporary, is left.
   */
  signal?: AbortSignal;
}

export const DEEPSEEK_EVAL_KINDS: OptionKinds<DeepseekEvalOptions> = { evalText: "string", evalTokens: "number", evalCtx: "number", device: "string", logger: "object", progress: "object", signal: "object" };
// The conversion settings this format shares with ours keep their one table.
const SHARED_KINDS = (({ rank, ropePairs, svdInit, balanceKv, refitOutput, calib, calibSamples, calibLen }) => ({ rank, ropePairs, svdInit, balanceKv, refitOutput, calib, calibSamples, calibLen }))(SETTINGS_KINDS);
const DEEPSEEK_KINDS: OptionKinds<DeepseekOptions> = {
  ...DEEPSEEK_EVAL_KINDS,
  ...SHARED_KINDS,
  ropeDim: "number",
  kvLoraRank: "number",
  interleave: "boolean",
  attentionBias: "boolean",
  out: "string",
  force: "boolean",
  dryRun: "boolean",
};

/** NLL (nats/token) of the source and of the written model on one text. */
export interface BeforeAfter {
  text: string;
  tokens: number;
  ctx: number;
  before: number;
  after: number;
  /** after − before, and the perplexity's change: named as our format's report names them. */
  nll_delta: number;
  ppl_change_percent: number;
}

/** Cached values per token and layer, of the source and of the deepseek_v3 folder (both writers' results and records). */
export interface KvPerToken {
  before: number;
  after: number;
  changePercent: number;
}

export function kvPerToken(before: number, after: number): KvPerToken {
  return { before, after, changePercent: percentChange(before, after) };
}

/**
 * Evaluates the source `srcDir` and the written folder `dir` (not yet committed) on o.evalText and
 * writes report.json into `dir`; also returns both perplexities (for a Markdown report).
 */
export async function evalBeforeAfter(spec: string, srcDir: string, dir: string, out: string, o: DeepseekEvalOptions & { evalText: string }, kv: KvPerToken): Promise<{ report: BeforeAfter; ppl: [number, number] }> {
  // Both evaluations read the same text: a warning about it is said once.
  const e = { ...embeddedEval(o), device: o.device, progress: o.progress, signal: o.signal, logger: warningsOnce(o.logger ?? silentLogger), pastPositionsWarned: true };
  const [b, a] = [await evaluate(srcDir, e), await evaluate(dir, e)];
  const report = { text: o.evalText, tokens: b.tokens!, ctx: b.ctx!, before: b.nll!, after: a.nll!, nll_delta: a.nll! - b.nll!, ppl_change_percent: percentChange(b.ppl!, a.ppl!) };
  // A source that scores but an output that does not (a weight out of its dtype's range) is no model to hand over.
  if (Number.isFinite(report.before) && !Number.isFinite(report.after))
    throw new MlaError("UNSUPPORTED", `the deepseek_v3 folder scores NLL ${report.after} on ${o.evalText} where the source scores ${report.before.toFixed(5)}: a weight is out of its dtype's range`, "nothing was written; this is a bug, report it with the command (a bf16 or f32 copy of the source may convert meanwhile)");
  fs.writeFileSync(path.join(dir, "report.json"), JSON.stringify({ source: spec, output: out, format: "deepseek_v3", ...report, kv_per_token_per_layer: kv }, null, 2) + "\n");
  return { report, ppl: [b.ppl!, a.ppl!] };
}

/** What convertDeepseek returns: a dry run's result (out null, nothing written) or a written one's; `out` tells them apart. */
export type DeepseekResult = WrittenDeepseek | DryRunDeepseek;

/** convertDeepseek() without dryRun: the deepseek_v3 folder written. */
export interface WrittenDeepseek {
  /** The output folder (absolute). */
  out: string;
  ropeDim: number;
  kvLoraRank: number;
  /** qk_nope_head_dim: the source's head dim (its query keeps every dim beside the shared rope key). */
  nopeDim: number;
  /** rope_theta of the ladder. */
  ropeTheta: number;
  /** The ladder's spacing s: rope slot k sits on the original frequency s·k. */
  spacing: number;
  /** Cached values per token and layer (the model caches them in each of its `layers`). */
  kvPerToken: KvPerToken;
  layers: number;
  energy: number[];
  /** With evalText: NLL of the source and of the result. */
  eval: BeforeAfter | null;
  /** Bias-free only: per layer, the fitted kv_a_layernorm's relative error on the calibration latents (latentNorm.ts). */
  latentNormError: number[] | null;
}

/** convertDeepseek() with dryRun: true: the shapes and KV accounting, nothing written (ropeTheta is the source's; no ladder is chosen, so spacing is 0). */
export interface DryRunDeepseek extends Omit<WrittenDeepseek, "out" | "eval" | "latentNormError"> {
  out: null;
  eval: null;
  latentNormError: null;
}

/**
 * The conversion settings of our format (CLI flags, pipeline options) as DeepSeek export options.
 * What the format decides itself (the rope key by RoRoPE, the joint SVD, plain MLA attention, one
 * split for every layer) is refused when given, its default's value included (refuseInert's policy).
 */
export function deepseekSettings(s: SettingsInput): Pick<DeepseekOptions, "rank" | "ropePairs" | "svdInit" | "balanceKv" | "refitOutput" | "calib" | "calibSamples" | "calibLen"> {
  const add = "drop --format deepseek to convert in our format";
  refuseInert([["--rope-strategy", s.ropeStrategy], [booleanFlag("rope-disjoint", s.ropeDisjoint), s.ropeDisjoint]], "--format mha2mla", "--format deepseek chooses its one shared rope key by RoRoPE", add);
  refuseInert([[`--svd ${s.svd}`, s.svd]], "--format mha2mla", "--format deepseek always factors keys and values jointly", add);
  refuseInert([[`--attention ${s.attention}`, s.attention], ["--gate-dim", s.gateDim]], "--format mha2mla", "DeepSeek-V3's attention has no EG-MLA gate", add);
  refuseInert([[`--kv-split ${s.kvSplit}`, s.kvSplit], ["--kv-split-pairs", s.kvSplitPairs]], "--format mha2mla", "deepseek_v3 has one kv_lora_rank and one rope dim for every layer", add);
  return { rank: s.rank, ropePairs: s.ropePairs, svdInit: s.svdInit, balanceKv: s.balanceKv, refitOutput: s.refitOutput, calib: s.calib, calibSamples: s.calibSamples, calibLen: s.calibLen };
}

const ATTN = ["q_proj", "k_proj", "v_proj"].map((n) => `self_attn.${n}.weight`);
const BIASES = ["q_proj", "k_proj", "v_proj", "o_proj"];

/** The checks that decide whether a model can be written in the stock DeepSeek-V3 format. */
function checkSource(c: ModelConfig): void {
  if (c.attention.kind !== "mha") throw alreadyMla(c, c.attention.kind === "mla" ? "convert the original MHA/GQA model with --format deepseek, or write this one with `mha2mla export MODEL --format deepseek` (it needs --rope-disjoint)" : "convert the original MHA/GQA model with --format deepseek");
  // Declared q/k/v/o biases are read from the weights (checkDeclaredBiases): a zero q bias converts.
  if (c.rope.scaling) throw new MlaError("UNSUPPORTED", `--format deepseek: rope scaling "${c.rope.scaling.type}" changes the frequency ladder, which one shared DeepSeek rope key cannot follow exactly`, "convert it in our format (without --format deepseek)");
  if (c.slidingWindow !== null) throw new MlaError("UNSUPPORTED", "--format deepseek: DeepseekV3 has no sliding-window attention", "convert it in our format (without --format deepseek)");
  if (c.mlpBias) throw new MlaError("UNSUPPORTED", "--format deepseek: DeepseekV3's MLP has no biases", "convert it in our format (without --format deepseek)");
}

/** Typed by `dryRun` as convert() is: without it `out` is a string, with `dryRun: true` null. */
export function convertDeepseek(spec: string, o: DeepseekOptions & { dryRun: true }): Promise<DryRunDeepseek>;
export function convertDeepseek(spec: string, o: DeepseekOptions & { dryRun?: false }): Promise<WrittenDeepseek>;
export function convertDeepseek(spec: string, o: DeepseekOptions): Promise<DeepseekResult>;
export async function convertDeepseek(spec: string, o: DeepseekOptions): Promise<DeepseekResult> {
  return convertDeepseekWithWindows(spec, o, null);
}

/** convertDeepseek() taking the --calib windows the pipeline's up-front checks cut (convertWithWindows's reason). Not part of the public API. */
export async function convertDeepseekWithWindows(spec: string, o: DeepseekOptions, cut: CutCalibration | null): Promise<DeepseekResult> {
  checkOptionTypes("convertDeepseek()", o, DEEPSEEK_KINDS, ["rank"]);
  checkDeviceName(o.device);
  throwIfAborted(o.signal);
  // The float64 route this conversion picks (from --device) is its own, not the process's.
  return linalgScope(() => convertDeepseekInScope(spec, o, cut));
}

/**
 * The deepseek_v3 widths `o` asks of a source of config `c`, with every option checked against it:
 * all a conversion can refuse without reading weights, so `pipeline` asks it before its first phase.
 * `rank` and `ropePairs` are null where they set nothing (the widths were given, or ropePairs is past
 * the head_dim cap beside a given kv_lora_rank) and disagree with the cache; `note` then says so of
 * --rank, which cannot be left out.
 */
export function deepseekShape(c: ModelConfig, o: DeepseekOptions): { rank: number | null; ropePairs: number | null; ropeDim: number; kvLoraRank: number; svdInit: "weights" | "activations"; note: string | null } {
  checkSource(c);
  const { kvHeads: G, headDim: Dh, hiddenSize: D } = c;
  const half = Dh / 2;
  const R = o.ropePairs ?? defaultRopePairs(Dh);
  checkRopePairs(R, 1, Dh, `use an integer in 1…${half}`);
  if (!Number.isInteger(o.rank) || o.rank < 1) throw new MlaError("BAD_ARGUMENT", `--rank ${o.rank} must be a positive integer`, "pass the latent dims per KV head, e.g. --rank 16");
  const budget = G * (o.rank + 2 * R);
  const dr = o.ropeDim ?? Math.min(2 * R * G, Dh);
  if (!Number.isInteger(dr) || dr < 2 || dr % 2 !== 0 || dr > Dh) throw new MlaError("BAD_ARGUMENT", `--rope-dim ${dr} must be even, in 2…${Dh} (head_dim)`, "one shared rope key holds at most head_dim/2 frequencies");
  const rk = o.kvLoraRank ?? budget - dr;
  const bias = o.attentionBias ?? true;
  // The latent holds at most min(2·Hkv·Dh, D) learned dims, plus the constant channel when biased.
  const maxRk = Math.min(2 * G * Dh, D) + (bias ? 1 : 0);
  if (!Number.isInteger(rk) || rk < 2 || rk > maxRk) throw new MlaError("BAD_ARGUMENT", `kv_lora_rank ${rk} is out of range 2…${maxRk} for this model`, o.kvLoraRank === undefined ? "lower --rope-dim or change --rank / --rope-pairs" : "choose another --kv-lora-rank");
  // --rank and --rope-pairs size the cache only through the widths they default to (the KV bytes of the
  // same conversion in our format). A width given in their place leaves them deciding nothing: they
  // then stand for this conversion, and are recorded, only where their budget is its cache.
  const agrees = rk + dr === budget;
  const budgeted = `--rank ${o.rank} and ${o.ropePairs === undefined ? "the default " : ""}--rope-pairs ${R} budget ${budget} (${G} KV heads × (${o.rank} + 2·${R}))`;
  // Without --rope-dim, R sets the rope dim only up to the head_dim cap: past the fewest pairs that
  // fill head_dim (⌈Dh/(2·Hkv)⌉), a larger R gives the same rope dim and, beside --kv-lora-rank, sets nothing.
  const fill = Math.ceil(Dh / (2 * G));
  const setsRopeDim = o.ropeDim === undefined && R <= fill;
  const pairsSet = setsRopeDim || o.kvLoraRank === undefined || agrees;
  if (!pairsSet && o.ropePairs !== undefined && o.ropeDim === undefined)
    throw new MlaError("BAD_ARGUMENT", `--rope-pairs ${R} conflicts with --kv-lora-rank ${rk}: past --rope-pairs ${fill} the rope dim stays at head_dim ${Dh}, so --rope-pairs ${R} sets nothing, and --kv-lora-rank ${rk} with it caches ${rk + dr} values per token and layer, where ${budgeted}`, `give --rope-pairs ${fill} (the fewest that fill head_dim) or leave it out, or drop --kv-lora-rank and let --rank and --rope-pairs set it (kv_lora_rank ${budget - dr})`);
  if (!pairsSet && o.ropePairs !== undefined)
    throw new MlaError("BAD_ARGUMENT", `--rope-pairs ${R} conflicts with --rope-dim ${dr} and --kv-lora-rank ${rk}: those two set the cache, ${rk + dr} values per token and layer, where ${budgeted}`, "leave --rope-pairs out (--rope-dim and --kv-lora-rank set the cache), or give one of --rope-dim and --kv-lora-rank and let --rank and --rope-pairs set the other");
  const rankSet = o.kvLoraRank === undefined || agrees;
  const note = rankSet ? null : `note: --rank ${o.rank} sets nothing here: --kv-lora-rank ${rk} with rope dim ${dr} caches ${rk + dr} values per token and layer, where ${budgeted}; mla_conversion.json records rank null`;
  const svdInit = o.svdInit ?? "weights";
  refuseWindowsWithoutText(o);
  requireCalibration(o.calib, { svdInit, refitOutput: o.refitOutput });
  if (!bias) requireFitText(o.calib);
  checkCalibFile(o.calib);
  checkWindowShape(o.calibSamples ?? DEFAULT_CALIB_SAMPLES, o.calibLen ?? DEFAULT_CALIB_LEN);
  return { rank: rankSet ? o.rank : null, ropePairs: pairsSet ? R : null, ropeDim: dr, kvLoraRank: rk, svdInit, note };
}

async function convertDeepseekInScope(spec: string, o: DeepseekOptions, cut: CutCalibration | null): Promise<DeepseekResult> {
  const log = o.logger ?? silentLogger;
  const { dir: srcDir } = resolveModel(spec);
  const c = readHfConfig(srcDir);
  const { rank, ropePairs: R, ropeDim: dr, kvLoraRank: rk, svdInit, note } = deepseekShape(c, o);
  if (note) log.info(note);
  const { heads: H, kvHeads: G, headDim: Dh, hiddenSize: D, layers: L } = c;
  const half = Dh / 2;
  const bias = o.attentionBias ?? true;
  // One handle for the checks, both passes and the writer, closed on every path (the finally below).
  const src = Checkpoint.open(srcDir);
  let tmp: string | null = null;
  try {
    // From the headers, before the biases are read and before a dry run answers: every declared tensor
    // there, of its shape (the layer math trusts the config's sizes) and a float dtype.
    requireSourceTensors(src, c);
    modelSideFiles(srcDir); // copied after the work: an unreadable one is refused before it
    checkDeclaredBiasesOf(src, c, bias);
    const kv = kvPerToken(2 * G * Dh, rk + dr);
    for (const w of servingWarnings(rk, dr, H, convertRemedy(Dh, Math.min(2 * G * Dh, D), bias), bias)) log.warn(w);
    // The evaluation comes last: its settings are checked now, not after the conversion (a dry run too).
    await checkEmbeddedEval(o, srcDir, c);
    const out = path.resolve(o.out ?? defaultDeepseekOut(spec, rank, rk));
    const inputs = [{ name: "--calib", path: o.calib }, { name: "--eval-text", path: o.evalText }];
    refuseDefaultOutInModel(out, srcDir, o.out);
    checkOutDir(out, srcDir, o.force ?? false, inputs, o.dryRun ? log : undefined);
    requireRoom(out, weightFileBytes(srcDir), "the converted model");
    // Read before a dry run answers, as convert() does: the dry run refuses what the run would.
    const windows = readCalibrationWindows(srcDir, o.calib, o.calibSamples ?? DEFAULT_CALIB_SAMPLES, o.calibLen ?? DEFAULT_CALIB_LEN, o.calibSamples, c, log, cut);
    const linalg = selectLinalg(o.device ?? "auto", log);
    if (o.dryRun) return { out: null, ropeDim: dr, kvLoraRank: rk, nopeDim: Dh, ropeTheta: c.rope.theta, spacing: 0, kvPerToken: kv, layers: c.layers, energy: [], eval: null, latentNormError: null };

    let stats: CalibrationStats | null = null;
    if (o.calib) {
      const { model } = loadModel(srcDir, { backend: selectBackend(o.device ?? "auto", log) });
      // The model only calibrates: its weights go back to the backend before the factoring starts.
      try {
        stats = await calibrate(model, windows, { covariance: true, progress: o.progress, signal: o.signal });
      } finally {
        model.dispose();
      }
    }
    const cov = (l: number) => stats?.covariance?.[l] ?? null;
    useLinalg(linalg);

    // Pass 1: the rotations per layer and frequency, and the one ladder spacing every layer shares
    // (the config has one rope_theta).
    const m = dr / 2;
    const pcas: FrequencyPca[] = [];
    const total = new Float64Array(half);
    for (let l = 0; l < L; l++) {
      // Pass 1 reads every layer's q, k and v first: a NaN or Inf there is refused before any is written.
      const [wq, wk] = [0, 1].map((i) => finiteForFactoring(srcDir, layerPrefix(l) + ATTN[i]!, src.readF32(layerPrefix(l) + ATTN[i]!)));
      finiteForFactoring(srcDir, layerPrefix(l) + ATTN[2]!, src.readF32(layerPrefix(l) + ATTN[2]!));
      const pca = frequencyPca(wk!, G, Dh, D, cov(l));
      pcas.push(pca);
      const s = ladderScores(pca, wq!, stats?.qNorm[l] ?? null, H, G, Dh, D);
      for (let i = 0; i < half; i++) total[i] += s[i]!;
      // On the CPU a layer's PCA never leaves the JavaScript thread: a turn of the event loop per layer
      // lets a signal handler's abort (Ctrl-C) run, then the check sees it (as convert's layer loop).
      await nextTurn(o.signal);
    }
    let spacing = 1;
    let best = -1;
    for (const s of validSpacings(m, half)) {
      const score = ladder(m, s).reduce((a, i) => a + total[i]!, 0);
      if (score > best) [best, spacing] = [score, s];
    }
    const freqs = ladder(m, spacing);
    // Ladder slot k turns at base'^(−2k/dr) = θ_{s·k} = base^(−2·s·k/Dh).
    const ropeTheta = Math.pow(c.rope.theta, (2 * spacing * m) / Dh);
    log.info(`deepseek format: shared rope key of ${dr} dims on frequencies ${freqs.join(",")} of ${half} (spacing ${spacing}, rope_theta ${ropeTheta.toPrecision(8)}), kv_lora_rank ${rk} (${bias ? "1 constant channel" : "no attention bias: kv_a_layernorm fitted on --calib"})`);

    if (c.qkvBias || c.oBias)
      log.info(
        bias
          ? "attention biases: the q bias is zero in every layer (no tensor); the k bias's rope part goes in kv_a_proj_with_mqa's bias, its position-free part cancels in softmax; the v and o biases go in o_proj's bias"
          : "attention biases: all zero in every layer, so the bias-free form writes none",
      );
    tmp = beginOutDir(out, o.force ?? false);
    const dtypeOf = (name: string): DType => src.entry(name).dtype;
    // Tensors its config does not declare (a q/k/v/o bias beside a config without attention_bias, an
    // lm_head beside tied embeddings) are no part of the source model: never carried, in either form
    // (strayNotes says why).
    const stray = undeclaredTensors(src, c);
    const { warnings, notes } = strayNotes(src, c, stray, bias);
    for (const w of warnings) log.warn(w);
    for (const n of notes) log.info(n);
    // The source's declared biases are read and folded by the layer (or, zero, just dropped): never copied.
    const consumed = new Set([...ATTN.slice(1), ...BIASES.map((n) => `self_attn.${n}.bias`)]);
    const plan = planTensors(src, ATTN[0]!, consumed, new Set(stray), (_l, p) =>
      deepseekSpecs(p, { H, D, dn: Dh, dr, dv: Dh, rk, dtype: dtypeOf(p + ATTN[0]!), normDtype: dtypeOf(p + "input_layernorm.weight"), attentionBias: bias }),
    );
    const energy: number[] = new Array(L).fill(0);
    const betas: (number | null)[] = new Array(L).fill(null);
    await writePlanned(src, tmp, plan, async (l) => {
      const p = layerPrefix(l);
      const r = await deepseekLayer({
        wq: src.readF32(p + ATTN[0]!),
        wk: src.readF32(p + ATTN[1]!),
        wv: src.readF32(p + ATTN[2]!),
        heads: H,
        kvHeads: G,
        headDim: Dh,
        hidden: D,
        pca: pcas[l]!,
        ladder: freqs,
        kvLoraRank: rk,
        whiten: svdInit === "activations" ? covarianceRoots(cov(l)!, D) : null,
        cov: cov(l),
        interleave: o.interleave ?? true,
        roundStored: roundingFor(dtypeOf(p + "input_layernorm.weight")),
        balance: o.balanceKv ?? true,
        attentionBias: bias,
        // Declared k/v biases (their q bias is zero: checkDeclaredBiases), where ./layer.ts says.
        kBias: bias && c.qkvBias ? src.readF32(p + "self_attn.k_proj.bias") : null,
      });
      energy[l] = r.energy;
      betas[l] = r.beta;
      const t = new Map([
        ["self_attn.q_proj.weight", r.qProj],
        ["self_attn.kv_a_proj_with_mqa.weight", r.kvA],
        ["self_attn.kv_a_layernorm.weight", r.kvNorm],
        ["self_attn.kv_b_proj.weight", r.kvB],
      ]);
      if (r.kvABias) t.set("self_attn.kv_a_proj_with_mqa.bias", r.kvABias);
      if (plan.generated.has(p + "self_attn.o_proj.bias")) {
        const read = (n: string, on: boolean) => (on ? src.readF32(p + `self_attn.${n}`) : null);
        const [bo, bv] = [read("o_proj.bias", c.oBias), read("v_proj.bias", c.qkvBias)];
        t.set("self_attn.o_proj.bias", bo || bv ? foldValueBias(src.readF32(p + "self_attn.o_proj.weight"), bo, bv, H, G, Dh, D) : new Float32Array(D));
      }
      return t;
    }, new Progress("deepseek", L, "layers", o.progress), o.signal);

    writeDeepseekConfig(srcDir, tmp, c, { dr, dn: Dh, rk, ropeTheta, interleave: o.interleave ?? true, attentionBias: bias, note: "written by mha2mla convert --format deepseek; see mla_conversion.json" });
    copyModelSideFiles(srcDir, tmp);
    // The norm is fitted before the refit: o_proj is then solved against the attention as it will run.
    const fit = bias ? null : await fitLatentNorms(tmp, windows, selectBackend(o.device ?? "auto", log), { progress: o.progress, signal: o.signal });
    if (fit) log.info(describeLatentNormFit(fit));
    const refit = o.refitOutput ? await refitOutputProjections(srcDir, tmp, windows, selectBackend(o.device ?? "auto", log), { progress: o.progress, signal: o.signal }) : null;
    if (refit) log.info(describeRefit(refit));
    // The calibration windows as used: null without --calib (this format reads any it is given).
    const calibration = o.calib ? { calib: o.calib, calib_samples: o.calibSamples ?? DEFAULT_CALIB_SAMPLES, calib_len: o.calibLen ?? DEFAULT_CALIB_LEN } : { calib: null, calib_samples: null, calib_len: null };
    fs.writeFileSync(
      path.join(tmp, "mla_conversion.json"),
      JSON.stringify({ tool: "mha2mla", format: "deepseek_v3", source: { model: spec, dir: srcDir }, settings: { rank, rope_pairs: R, rope_dim: dr, kv_lora_rank: rk, svd_init: svdInit, balance_kv: o.balanceKv ?? true, refit_output: o.refitOutput ?? false, ...calibration, interleave: o.interleave ?? true, attention_bias: bias }, ...calibrationRecord(o.calib, windows), ...refitRecord(refit), ...latentNormRecord(fit), ladder: { spacing, frequencies: freqs, rope_theta: ropeTheta }, kv_per_token_per_layer: kv, retained_energy: energy, ...(bias ? { constant_channel_beta: betas } : {}), created: new Date().toISOString() }, null, 2) + "\n",
    );
    let report: BeforeAfter | null = null;
    if (o.evalText) {
      const r = await evalBeforeAfter(spec, srcDir, tmp, out, { ...o, evalText: o.evalText, logger: log }, kv);
      report = r.report;
      fs.writeFileSync(
        path.join(tmp, "report.md"),
        `# MHA → DeepSeek-V3 MLA conversion report\n\nSource: \`${spec}\` → \`${out}\`\n\n| | NLL | perplexity | KV elements per token and layer |\n| --- | --- | --- | --- |\n| original | ${report.before.toFixed(4)} | ${r.ppl[0].toFixed(3)} | ${kv.before} |\n| converted | ${report.after.toFixed(4)} | ${r.ppl[1].toFixed(3)} | ${kv.after} |\n\nText: \`${o.evalText}\`, ${report.tokens} tokens, ctx ${report.ctx}. Shared rope key ${dr} dims on frequencies ${freqs.join(", ")}; kv_lora_rank ${rk} (${bias ? "one constant channel" : "no attention bias; kv_a_layernorm fitted on the calibration text"}).\n`,
      );
    }
    // A stop asked during the last layer's writes or the evaluation leaves nothing, as one before them does.
    throwIfAborted(o.signal);
    commitOutDir(tmp, out, o.force ?? false);
    tmp = null;
    return { out, ropeDim: dr, kvLoraRank: rk, nopeDim: Dh, ropeTheta, spacing, kvPerToken: kv, layers: c.layers, energy, eval: report, latentNormError: fit?.relativeError ?? null };
  } catch (e) {
    if (tmp) abandonOutDir(tmp);
    throw e;
  } finally {
    src.close();
  }
}

/**
 * The shapes of the deepseek_v3 model converted from `c` with rope dim `dr` and kv_lora_rank `rk`: the
 * config readHfConfig reads from writeDeepseekConfig's file, but its rope (for a fine-tune's memory
 * estimate made before the conversion).
 */
export function deepseekShapes(c: ModelConfig, s: { dr: number; rk: number; attentionBias: boolean }): ModelConfig {
  return { ...c, modelType: "deepseek_v3", kvHeads: c.heads, qkvBias: false, oBias: s.attentionBias, attention: { kind: "deepseek", kvLoraRank: s.rk, ropeDim: s.dr, nopeDim: c.headDim, vDim: c.headDim, interleave: true, kvABias: s.attentionBias } };
}

/** The source config.json rewritten as a dense DeepseekV3 config (keys stock loaders read); dn = qk_nope_head_dim. */
export function writeDeepseekConfig(srcDir: string, dir: string, c: ModelConfig, s: { dr: number; dn: number; rk: number; ropeTheta: number; interleave: boolean; attentionBias: boolean; note: string }): void {
  const raw = JSON.parse(fs.readFileSync(path.join(srcDir, "config.json"), "utf8")) as Record<string, unknown>;
  for (const k of ["head_dim", "rope_scaling", "mlp_bias", "pretraining_tp", "sliding_window", "use_sliding_window", "max_window_layers", "auto_map", "mha2mla"]) delete raw[k];
  Object.assign(raw, {
    architectures: ["DeepseekV3ForCausalLM"],
    model_type: "deepseek_v3",
    num_key_value_heads: c.heads,
    q_lora_rank: null,
    kv_lora_rank: s.rk,
    qk_rope_head_dim: s.dr,
    qk_nope_head_dim: s.dn,
    v_head_dim: c.headDim,
    rope_interleave: s.interleave,
    rope_theta: s.ropeTheta,
    rope_parameters: { rope_type: "default", rope_theta: s.ropeTheta },
    attention_bias: s.attentionBias,
    // Dense: a layer is MoE only from first_k_dense_replace on (HF, vLLM, SGLang), so none is. The MoE
    // keys keep their defaults: transformers' config is typed (n_routed_experts must be an int).
    first_k_dense_replace: c.layers,
    num_nextn_predict_layers: 0,
    mha2mla_deepseek: { source_model_type: c.modelType, note: s.note },
  });
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(raw, null, 2) + "\n");
}
