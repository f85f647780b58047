/**
 * `export --format deepseek`: a model already in our MLA format (converted, and usually fine-tuned)
 * → a `deepseek_v3` folder that stock `DeepseekV3ForCausalLM` loads, computing the same function.
 *
 * It is exact when no RoPE frequency is kept by two KV heads of one layer (`convert --rope-disjoint`
 * guarantees it; so does any conversion with one KV head): DeepSeek's one shared rope key then gives
 * each kept (head, pair) its own slot on a ladder of frequencies, and the query heads of the other KV
 * groups meet that slot with zeros. With a shared frequency the two heads' keys would need one slot
 * between them, which no weight choice gives; that case is refused with what to do instead.
 *
 * Per layer: q_proj = [the position-free query dims of the head's KV group; its pairs on their ladder
 * slots], scaled by √((dn + dr)/Dh) so DeepSeek's (dn + dr)^−½ is our 1/√Dh; kv_a = [kv_down; a
 * constant channel (kv_a_layernorm an identity, ./layer.ts); k_rope rows on their slots]; kv_b = per
 * query head its group's k_up and v_up rows. dn = Dh − 2R, dv = Dh. Asked for a larger kv_lora_rank
 * or rope dim (the 512 + 64 the fused MLA kernels take), it pads with zero channels and slots, which
 * changes nothing but the cache size.
 *
 * `attentionBias: false` (`--no-attention-bias`) drops the constant channel and every bias, for the
 * stacks that drop them (vLLM, SGLang): kv_a = [kv_down; zero padding; k_rope rows], kv_b unscaled,
 * and kv_a_layernorm's weight fitted on calibration text once the folder is written (./latentNorm.ts).
 * That form is not exact: the norm divides each token's latent by its own RMS.
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError, refuseInert } from "../errors.js";
import { requireRoom, weightFileBytes } from "../io/diskRoom.js";
import { abandonOutDir, beginOutDir, commitOutDir } from "../io/atomicDir.js";
import { Checkpoint, copyModelSideFiles, modelSideFiles } from "../io/checkpoint.js";
import type { DType } from "../io/dtype.js";
import { readHfConfig } from "../io/hfConfig.js";
import { resolveModel } from "../io/modelDir.js";
import { headDimOrder, MlaAttention, MlaSplit, ModelConfig } from "../model/config.js";
export { checkExportSettings, exportLadder } from "./exportable.js";
import { layerPrefix } from "../model/weights.js";
import { checkDeviceName, checkOutDir, defaultExportOut, refuseDefaultOutInModel } from "../convert/plan.js";
import { checkEmbeddedEval } from "../eval/evaluate.js";
import { silentLogger } from "../util/log.js";
import { Progress } from "../util/progress.js";
import { constantChannel, ropeRow } from "./layer.js";
import { BeforeAfter, DEEPSEEK_EVAL_KINDS, DeepseekEvalOptions, evalBeforeAfter, KvPerToken, kvPerToken, roundingFor, writeDeepseekConfig } from "./export.js";
import { checkOptionTypes, type OptionKinds } from "../util/optionTypes.js";
import { FUSED_MLA, servingWarnings } from "./serving.js";
import { checkExportSettings, exportLadder, exportSplit } from "./exportable.js";
import { deepseekSpecs, planTensors, strayNotes, writePlanned } from "./stream.js";
import { requireSourceTensors, undeclaredTensors } from "../convert/sourceTensors.js";
import { throwIfAborted } from "../util/abort.js";
import { checkCalibFile } from "../convert/plan.js";
import { calibrationRecord, readCalibrationWindows, type CutCalibration } from "../convert/calibrationNeeds.js";
import { checkWindowShape, DEFAULT_CALIB_LEN, DEFAULT_CALIB_SAMPLES } from "../ropeSelect/calibrate.js";
import { selectBackend } from "../backends/select.js";
import { describeLatentNormFit, fitLatentNorms, latentNormRecord, requireFitText } from "./latentNorm.js";

export interface ExportOptions extends DeepseekEvalOptions {
  /** Output folder (default ./NAME-deepseek next to the working directory). */
  out?: string;
  force?: boolean;
  /** Interleaved rope rows (rope_interleave; DeepSeek's layout, what vLLM expects); default true. */
  interleave?: boolean;
  /** kv_lora_rank ≥ the latent + 1 (default: exactly that); extra channels are zeros. */
  kvLoraRank?: number;
  /** qk_rope_head_dim ≥ 2 × the ladder's slots (default: exactly that); extra slots are zeros. */
  ropeDim?: number;
  /**
   * true (default): exact, through a constant latent channel held by the kv_a bias (vLLM and SGLang
   * drop it). false (`--no-attention-bias`): no biases, kv_a_layernorm's weight fitted on `calib`
   * (required, and read only then): ./latentNorm.ts.
   */
  attentionBias?: boolean;
  calib?: string;
  calibSamples?: number;
  calibLen?: number;
}

export interface ExportResult {
  out: string;
  ropeDim: number;
  kvLoraRank: number;
  nopeDim: number;
  ropeTheta: number;
  /** Rope slot k turns at the source's frequency spacing·k. */
  spacing: number;
  /** Per token and layer, before: ours (Hkv·2R + L), after: kv_lora_rank + rope dim. */
  kvPerToken: KvPerToken;
  layers: number;
  eval: BeforeAfter | null;
  /** Bias-free only: per layer, the fitted kv_a_layernorm's relative error on the calibration latents. */
  latentNormError: number[] | null;
}

/** The model's MLA settings and its one split (DeepSeek-V3 has one latent and rope width), or why it cannot be exported. */
function checkExportable(c: ModelConfig, dir: string): { a: MlaAttention; split: MlaSplit } {
  const a = c.attention;
  if (a.kind !== "mla") throw new MlaError("BAD_ARGUMENT", `${dir} is not in our MLA format (config.json has no mha2mla section)`, a.kind === "mha" ? "convert it: `mha2mla convert MODEL --format deepseek`" : "it is already a deepseek_v3 folder");
  const split = exportSplit(a);
  checkExportSettings(c, split.ropePairs, a.gateDim > 0);
  return { a, split };
}

interface ExportLayerInput {
  /** [H·Dh, D] */
  wq: Float32Array;
  /** [Hkv·2R, D]: per KV head the x rows of its pairs, then the y rows. */
  kRope: Float32Array;
  /** [L, D] */
  kvDown: Float32Array;
  /** [Hkv·(Dh − 2R), L] */
  kUp: Float32Array;
  /** [Hkv·Dh, L] */
  vUp: Float32Array;
  /** [Hkv][R] kept pairs, ascending. */
  selection: number[][];
  /** The attention input's RMSNorm weight [D]: sizes the constant channel against the real input scale. */
  inputNorm: Float32Array;
  /** kv_lora_rank (≥ L + 1 with the constant channel, else ≥ L; the extra channels are zeros). */
  kvLoraRank: number;
  /** false: no constant channel, no bias; kv_a_layernorm left at 1 for latentNorm.ts to fit. */
  attentionBias: boolean;
  heads: number;
  headDim: number;
  hidden: number;
  /** The ladder slot of pair i is i / spacing; `slots` of them. */
  spacing: number;
  slots: number;
  interleave: boolean;
  roundStored: (x: number) => number;
}

/** One layer in the DeepSeek-V3 layout (see the top of the file); tensors by name after the layer prefix. */
export function exportLayer(p: ExportLayerInput): Map<string, Float32Array> {
  const { heads: H, headDim: Dh, hidden: D, slots: m } = p;
  const G = p.selection.length;
  const R = p.selection[0]!.length;
  const L = p.kvDown.length / D;
  const rk = p.kvLoraRank;
  const dr = 2 * m;
  const dn = Dh - 2 * R;
  const group = H / G;
  const half = Dh / 2;
  // The latent's scale as the model sees it: x = RMSNorm(h)·γ has E x_c² ≈ γ_c². Zero channels count
  // in the norm's mean, so the constant channel sits at index rk − 1 with every padded one before it.
  const scaled = () => {
    const x = new Float32Array((rk - 1) * D);
    for (let i = 0; i < L * D; i++) x[i] = p.kvDown[i]! * p.inputNorm[i % D]!;
    return x;
  };
  // Without the constant channel kv_b keeps the source's scale (undo 1) and γ is fitted later.
  const cc = p.attentionBias ? constantChannel(scaled(), rk - 1, D, null, p.roundStored) : { beta: null, kvNorm: new Float32Array(rk).fill(1), undo: 1 };

  const kvA = new Float32Array((rk + dr) * D);
  kvA.set(p.kvDown);
  p.selection.forEach((pairs, g) =>
    pairs.forEach((i, j) => {
      for (const y of [false, true]) {
        const src = (g * 2 * R + (y ? R : 0) + j) * D;
        kvA.set(p.kRope.subarray(src, src + D), (rk + ropeRow(i / p.spacing, y, m, p.interleave)) * D);
      }
    }),
  );

  const kvB = new Float32Array(H * (dn + Dh) * rk);
  const qk = dn + dr;
  const scale = Math.sqrt(qk / Dh);
  const qProj = new Float32Array(H * qk * D);
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / group);
    for (const [part, rows, from] of [[0, dn, p.kUp], [dn, Dh, p.vUp]] as const)
      for (let d = 0; d < rows; d++) {
        const dst = (h * (dn + Dh) + part + d) * rk;
        const src = (g * rows + d) * L;
        for (let j = 0; j < L; j++) kvB[dst + j] = from[src + j]! * cc.undo;
      }
    const { nope } = headDimOrder(Dh, p.selection[g]!);
    nope.forEach((d, k) => {
      for (let c = 0; c < D; c++) qProj[(h * qk + k) * D + c] = p.wq[(h * Dh + d) * D + c]! * scale;
    });
    for (const i of p.selection[g]!)
      for (const [off, y] of [[i, false], [i + half, true]] as const) {
        const dst = (h * qk + dn + ropeRow(i / p.spacing, y, m, p.interleave)) * D;
        for (let c = 0; c < D; c++) qProj[dst + c] = p.wq[(h * Dh + off) * D + c]! * scale;
      }
  }
  const t = new Map([
    ["self_attn.q_proj.weight", qProj],
    ["self_attn.kv_a_proj_with_mqa.weight", kvA],
    ["self_attn.kv_a_layernorm.weight", cc.kvNorm],
    ["self_attn.kv_b_proj.weight", kvB],
  ]);
  if (cc.beta !== null) {
    const kvABias = new Float32Array(rk + dr);
    kvABias[rk - 1] = cc.beta;
    t.set("self_attn.kv_a_proj_with_mqa.bias", kvABias);
  }
  return t;
}

const SOURCE = ["q_proj", "k_rope_proj", "kv_down_proj", "k_up_proj", "v_up_proj"].map((n) => `self_attn.${n}.weight`);

const EXPORT_KINDS: OptionKinds<ExportOptions> = { ...DEEPSEEK_EVAL_KINDS, out: "string", force: "boolean", interleave: "boolean", kvLoraRank: "number", ropeDim: "number", attentionBias: "boolean", calib: "string", calibSamples: "number", calibLen: "number" };

/** The calibration settings of an export: read only by the bias-free form's norm fit, so refused elsewhere (refuseInert's policy). */
function checkExportCalibration(o: ExportOptions, bias: boolean): void {
  if (bias) return refuseInert([["--calib", o.calib], ["--calib-samples", o.calibSamples], ["--calib-len", o.calibLen]], "--no-attention-bias", "calibration settings of the kv_a_layernorm fit; the exact export reads no text");
  requireFitText(o.calib);
  checkCalibFile(o.calib);
  checkWindowShape(o.calibSamples ?? DEFAULT_CALIB_SAMPLES, o.calibLen ?? DEFAULT_CALIB_LEN);
}

export async function exportDeepseek(spec: string, o: ExportOptions = {}): Promise<ExportResult> {
  return exportDeepseekWithWindows(spec, o, null);
}

/**
 * exportDeepseek() taking the --calib windows the pipeline's up-front checks cut from its source model
 * (whose tokenizer the converted and fine-tuned models keep): convertWithWindows's reason. Not part of the public API.
 */
export async function exportDeepseekWithWindows(spec: string, o: ExportOptions, cut: CutCalibration | null): Promise<ExportResult> {
  checkOptionTypes("exportDeepseek()", o, EXPORT_KINDS);
  checkDeviceName(o.device);
  throwIfAborted(o.signal);
  const log = o.logger ?? silentLogger;
  const { dir: srcDir } = resolveModel(spec);
  const c = readHfConfig(srcDir);
  const { a, split } = checkExportable(c, srcDir);
  const { ropePairs: R, latentDim: L } = split;
  const { heads: H, kvHeads: G, headDim: Dh, hiddenSize: D, layers: nLayers } = c;
  const ladder = exportLadder(a.selection);
  const { spacing } = ladder;
  const bias = o.attentionBias ?? true;
  checkExportCalibration(o, bias);
  // The channels the latent needs: the model's L, plus the constant one when biased.
  const need = L + (bias ? 1 : 0);
  const rk = o.kvLoraRank ?? need;
  const dr = o.ropeDim ?? 2 * ladder.slots;
  if (!Number.isInteger(rk)) throw new MlaError("BAD_ARGUMENT", `--kv-lora-rank ${rk} is not a whole number of latent channels`, `use a whole number ≥ ${need} (the model's ${L} latent dims${bias ? " and the constant channel" : ""}; larger pads with zero channels)`);
  if (rk < need) throw new MlaError("BAD_ARGUMENT", `--kv-lora-rank ${rk} cannot hold the model's ${L} latent dims${bias ? " and the constant channel" : ""}`, `use a whole number ≥ ${need} (larger pads with zero channels)`);
  if (!Number.isInteger(dr) || dr % 2 !== 0 || dr < 2 * ladder.slots) throw new MlaError("BAD_ARGUMENT", `--rope-dim ${dr} cannot hold the model's rope ladder of ${ladder.slots} slots`, `use an even number ≥ ${2 * ladder.slots} (larger pads with zero slots)`);
  // Zero padding is exact but costs cache and weights: up to the hidden size, or the fused kernels' dims.
  const maxRk = Math.max(need, D, FUSED_MLA.kvLoraRank), maxDr = Math.max(2 * ladder.slots, Dh, FUSED_MLA.ropeDim);
  if (rk > maxRk) throw new MlaError("BAD_ARGUMENT", `--kv-lora-rank ${rk} pads far past this model (at most ${maxRk}: its hidden size or the fused kernels' ${FUSED_MLA.kvLoraRank})`, `use ${need}…${maxRk}`);
  if (dr > maxDr) throw new MlaError("BAD_ARGUMENT", `--rope-dim ${dr} pads far past this model (at most ${maxDr}: its head dim or the fused kernels' ${FUSED_MLA.ropeDim})`, `use an even number ${2 * ladder.slots}…${maxDr}`);
  const slots = dr / 2;
  const dn = Dh - 2 * R;
  // Slot k turns at base'^(−2k/dr) = θ_{s·k} = θ^(−2·s·k/Dh).
  const ropeTheta = Math.pow(c.rope.theta, (2 * spacing * slots) / Dh);
  // Loaders compute the frequencies in float32 (transformers: rope_theta ** (arange(0, dim, 2) / dim)):
  // a base past its range is inf there, and every frequency but the first comes out 0.
  const F32_MAX = 3.4028234663852886e38;
  const finiteDr = 2 * Math.floor((Math.log(F32_MAX) * Dh) / (2 * spacing * Math.log(c.rope.theta)));
  if (!(ropeTheta < F32_MAX))
    throw new MlaError("BAD_ARGUMENT", `--rope-dim ${dr} pads the rope key so far that its rope_theta, ${ropeTheta.toExponential(3)}, is past float32's range, in which transformers and vLLM compute the frequencies (all but the first would be 0)`, `use an even --rope-dim from ${2 * ladder.slots} to ${finiteDr}`);
  const kv = kvPerToken(G * 2 * R + L, rk + dr);
  const fits = need <= FUSED_MLA.kvLoraRank && 2 * ladder.slots <= FUSED_MLA.ropeDim && FUSED_MLA.ropeDim <= finiteDr;
  const remedy = fits
    ? // Named as a command: pipeline's export phase takes no widths, so there it is a separate `export`.
      `For the fused kernels export with \`mha2mla export MODEL --format deepseek --kv-lora-rank ${FUSED_MLA.kvLoraRank} --rope-dim ${FUSED_MLA.ropeDim}\` (zero padding: exact, ${FUSED_MLA.kvLoraRank + FUSED_MLA.ropeDim} cached values per token and layer)`
    : FUSED_MLA.ropeDim > finiteDr && 2 * ladder.slots <= FUSED_MLA.ropeDim
      ? `Padded to the fused kernels' ${FUSED_MLA.ropeDim} rope dims, this ladder's rope_theta would pass float32's range (at most --rope-dim ${finiteDr})`
      : `The fused kernels' ${FUSED_MLA.kvLoraRank} + ${FUSED_MLA.ropeDim} cannot hold this model's ${need} latent channels and ${2 * ladder.slots} rope dims`;
  // The evaluation comes last: its settings are checked now, not after the export.
  // With the source's tokenizer and BOS, which the evaluation needs: found missing after the export, the
  // work was thrown away.
  await checkEmbeddedEval(o, srcDir, c);
  const out = path.resolve(o.out ?? defaultExportOut(spec));
  refuseDefaultOutInModel(out, srcDir, o.out);
  checkOutDir(out, srcDir, o.force ?? false, [{ name: "--eval-text", path: o.evalText }, { name: "--calib", path: o.calib }]);
  // Said once every setting has passed its check (the output folder, the evaluation's text): a refusal after the
  // summary read as if the export had started.
  for (const w of servingWarnings(rk, dr, H, remedy, bias)) log.warn(w);
  log.info(`export: shared rope key of ${dr} dims (frequencies ${spacing}·k, k < ${ladder.slots}; ${G * R} used per layer), kv_lora_rank ${rk} (${bias ? "1 constant channel" : "no attention bias: kv_a_layernorm fitted on --calib"}): ${kv.after} cached values per token and layer, ours ${kv.before}`);
  // Tokenized before any work, so a text too short for one window is refused up front.
  const windows = readCalibrationWindows(srcDir, o.calib, o.calibSamples ?? DEFAULT_CALIB_SAMPLES, o.calibLen ?? DEFAULT_CALIB_LEN, o.calibSamples, c, log, cut);
  // The norm fit and the evaluation run on --device once the layers are written: one that cannot run is refused first.
  const backend = !bias || o.evalText ? selectBackend(o.device ?? "auto", log) : null;
  // The export adds one latent channel and a shared rope key per layer: a little over the source.
  requireRoom(out, 1.05 * weightFileBytes(srcDir), "the exported model");
  const src = Checkpoint.open(srcDir);
  let tmp: string | null = null;
  try {
    // Every declared tensor there, of its shape (exportLayer trusts the config's sizes) and a float dtype.
    requireSourceTensors(src, c);
    modelSideFiles(srcDir); // copied after the work: an unreadable one is refused before it
    tmp = beginOutDir(out, o.force ?? false);
    const dtypeOf = (name: string): DType => src.entry(name).dtype;
    // An exportable model declares no attention bias (checkExportSettings), so a q/k_rope/k_up/v_up/o bias
    // in its file is no part of the model, nor is an lm_head beside tied embeddings: never carried, in
    // either form (strayNotes says why).
    const stray = undeclaredTensors(src, c);
    const { warnings, notes } = strayNotes(src, c, stray, bias);
    for (const w of warnings) log.warn(w);
    for (const n of notes) log.info(n);
    const plan = planTensors(src, SOURCE[0]!, new Set(SOURCE.slice(1)), new Set(stray), (_l, p) =>
      deepseekSpecs(p, { H, D, dn, dr, dv: Dh, rk, dtype: dtypeOf(p + SOURCE[0]!), normDtype: dtypeOf(p + "input_layernorm.weight"), attentionBias: bias }),
    );
    await writePlanned(
      src,
      tmp,
      plan,
      async (l) => {
        const p = layerPrefix(l);
        const t = exportLayer({
          wq: src.readF32(p + SOURCE[0]!),
          kRope: src.readF32(p + SOURCE[1]!),
          kvDown: src.readF32(p + SOURCE[2]!),
          kUp: src.readF32(p + SOURCE[3]!),
          vUp: src.readF32(p + SOURCE[4]!),
          selection: a.selection[l]!,
          inputNorm: src.readF32(p + "input_layernorm.weight"),
          kvLoraRank: rk,
          attentionBias: bias,
          heads: H,
          headDim: Dh,
          hidden: D,
          spacing,
          slots,
          interleave: o.interleave ?? true,
          roundStored: roundingFor(dtypeOf(p + "input_layernorm.weight")),
        });
        if (plan.generated.has(p + "self_attn.o_proj.bias")) t.set("self_attn.o_proj.bias", new Float32Array(D));
        return t;
      },
      new Progress("export", nLayers, "layers", o.progress),
      o.signal,
    );
    writeDeepseekConfig(srcDir, tmp, c, { dr, dn, rk, ropeTheta, interleave: o.interleave ?? true, attentionBias: bias, note: "written by mha2mla export --format deepseek; see mla_conversion.json" });
    copyModelSideFiles(srcDir, tmp);
    const fit = bias ? null : await fitLatentNorms(tmp, windows, backend!, { progress: o.progress, signal: o.signal });
    if (fit) log.info(describeLatentNormFit(fit));
    const settings = { attention_bias: bias, ...(bias ? {} : { calib: o.calib, calib_samples: o.calibSamples ?? DEFAULT_CALIB_SAMPLES, calib_len: o.calibLen ?? DEFAULT_CALIB_LEN }) };
    const manifest = { tool: "mha2mla", format: "deepseek_v3", exported_from: { model: spec, dir: srcDir, format: "mha2mla MLA" }, settings, ...calibrationRecord(o.calib, windows), ...latentNormRecord(fit), ladder: { spacing, slots, rope_theta: ropeTheta }, kv_per_token_per_layer: kv, created: new Date().toISOString() };
    fs.writeFileSync(path.join(tmp, "mla_conversion.json"), JSON.stringify(manifest, null, 2) + "\n");
    const report = o.evalText ? (await evalBeforeAfter(spec, srcDir, tmp, out, { ...o, evalText: o.evalText, logger: log }, kv)).report : null;
    // A stop asked during the last layer's writes or the evaluation leaves nothing, as one before them does.
    throwIfAborted(o.signal);
    commitOutDir(tmp, out, o.force ?? false);
    tmp = null;
    return { out, ropeDim: dr, kvLoraRank: rk, nopeDim: dn, ropeTheta, spacing, kvPerToken: kv, layers: nLayers, eval: report, latentNormError: fit?.relativeError ?? null };
  } catch (e) {
    if (tmp) abandonOutDir(tmp);
    throw e;
  } finally {
    src.close();
  }
}
