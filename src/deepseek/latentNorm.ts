/**
 * kv_a_layernorm's weight for the bias-free deepseek_v3 form (`--no-attention-bias`, docs/deepseek.md).
 *
 * Without the constant latent channel the norm cannot be an identity: it divides every token's
 * latent c [rk] by its own RMS r = √(mean_j c_j² + ε) (ε = 1e-6, as transformers builds it). kv_b was
 * factored against c itself, so the weight γ is chosen to make the normalised latent as close to c as
 * one scale per channel can, over the calibration tokens:
 *
 *   min_γi E (c_i − γ_i·c_i/r)²  =  E c_i² − 2γ_i·E[c_i²/r] + γ_i²·E[c_i²/r²]
 *   ⇒ γ_i = E[c_i²/r] / E[c_i²/r²],   residual_i = E c_i² − E[c_i²/r]² / E[c_i²/r²] ≥ 0 (Cauchy–Schwarz),
 *
 * zero only where r is the same for every token. kv_b stays as factored. Layers are fitted in order,
 * each on the input the bias-free model itself (already fitted below it) gives it, so a layer's γ sees
 * the drift of the layers before, as the output refit does (src/convert/refitOutput.ts).
 */
import { Checkpoint } from "../io/checkpoint.js";
import { roundingFor } from "../io/dtype.js";
import { rewriteTensors } from "../io/rewriteTensors.js";
import { loadModel, type LlamaModel } from "../model/llama.js";
import type { ModelConfig } from "../model/config.js";
import { layerPrefix, type DeepseekWeights } from "../model/weights.js";
import { LATENT_NORM_EPS } from "../model/attention/deepseek.js";
import type { Backend } from "../tensor/backend.js";
import type { FloatArray, Tensor } from "../tensor/tensor.js";
import { Progress, ProgressSink } from "../util/progress.js";
import { nextTurn } from "../util/abort.js";
import { MlaError } from "../errors.js";

/** Per latent channel, over the tokens added: Σ c², Σ c²/r and Σ c²/r² (float64). */
export class LatentNormMoments {
  readonly sq: Float64Array;
  readonly byRms: Float64Array;
  readonly byRms2: Float64Array;
  tokens = 0;

  constructor(readonly rk: number) {
    this.sq = new Float64Array(rk);
    this.byRms = new Float64Array(rk);
    this.byRms2 = new Float64Array(rk);
  }

  /** Adds the un-normalised latents c [T, rk] of T tokens. */
  add(c: FloatArray, T: number): void {
    const rk = this.rk;
    for (let t = 0; t < T; t++) {
      const o = t * rk;
      let ms = 0;
      for (let i = 0; i < rk; i++) ms += c[o + i]! ** 2;
      const inv = 1 / Math.sqrt(ms / rk + LATENT_NORM_EPS);
      for (let i = 0; i < rk; i++) {
        const q = c[o + i]! ** 2;
        this.sq[i] += q;
        this.byRms[i] += q * inv;
        this.byRms2[i] += q * inv * inv;
      }
    }
    this.tokens += T;
  }

  /** The least-squares γ [rk]; 1 on a channel that is zero on every token (padding: no kv_a row, no kv_b column). */
  gamma(): Float64Array {
    return Float64Array.from(this.byRms2, (d, i) => (d > 0 ? this.byRms[i]! / d : 1));
  }

  /** √(E‖c − γ⊙c/r‖² / E‖c‖²): the fitted norm's relative error on the latent (0 where no channel moves). */
  relativeError(gamma: ArrayLike<number>): number {
    let err = 0;
    let total = 0;
    for (let i = 0; i < this.rk; i++) {
      const g = gamma[i]!;
      err += this.sq[i]! - 2 * g * this.byRms[i]! + g * g * this.byRms2[i]!;
      total += this.sq[i]!;
    }
    return total > 0 ? Math.sqrt(Math.max(err, 0) / total) : 0;
  }
}

/**
 * Refuses the bias-free form without calibration text. No default text is used: γ depends on the
 * latents' spread of RMS over real tokens, and a fit on text of another language or domain (or on
 * none) would set the scale kv_b sees; --eval-text would score the model on its own fitting text.
 */
export function requireFitText(calib: string | null | undefined): void {
  if (!calib) throw new MlaError("BAD_ARGUMENT", "--no-attention-bias needs calibration text: without the constant channel kv_a_layernorm cannot be an identity, and its weight is fitted on the latents of --calib", "pass --calib FILE (any text in the model's language; --calib-samples/--calib-len set the windows), or drop --no-attention-bias for the exact export with biases");
}

export interface LatentNormFit {
  /** Per layer, the relative error of the fitted norm on the calibration latents (relativeError). */
  relativeError: number[];
}

/**
 * Fits kv_a_layernorm of every layer of the bias-free deepseek_v3 folder `dir` (written, config
 * included) on calibration `windows`, and rewrites those tensors in its checkpoint (in their stored
 * dtype; later layers are fitted on the rounded γ the file holds).
 */
export async function fitLatentNorms(dir: string, windows: Int32Array[], backend: Backend, opts: { progress?: ProgressSink | null; signal?: AbortSignal } = {}): Promise<LatentNormFit> {
  const { model, config: c } = loadModel(dir, { backend });
  // The model's weights go back to the backend when the fit ends, however it ends.
  try {
    return await fitLoaded(model, c, dir, windows, backend, opts);
  } finally {
    model.dispose();
  }
}

async function fitLoaded(model: LlamaModel, c: ModelConfig, dir: string, windows: Int32Array[], backend: Backend, opts: { progress?: ProgressSink | null; signal?: AbortSignal }): Promise<LatentNormFit> {
  if (c.attention.kind !== "deepseek") throw new Error(`fitLatentNorms on a ${c.attention.kind} model`);
  const rk = c.attention.kvLoraRank;
  const latentCols = Int32Array.from({ length: rk }, (_, i) => i);
  const name = (l: number) => layerPrefix(l) + "self_attn.kv_a_layernorm.weight";
  const ck = Checkpoint.open(dir);
  const rounding = Array.from({ length: c.layers }, (_, l) => roundingFor(ck.entry(name(l)).dtype));
  ck.close();
  // In layers, as the conversion and export lines count: a count of windows × layers told a user nothing.
  const progress = new Progress("fit kv_a_layernorm", c.layers, "layers", opts.progress);
  const fitted = new Map<string, Float32Array>();
  const relativeError: number[] = [];
  // Each window's hidden states in the bias-free model, advanced one layer at a time; freed however
  // the fit ends (a stop between windows, an error in a pass).
  let hs: Tensor[] = [];
  try {
    for (const ids of windows) hs.push(model.embedTokens(ids));
    for (let l = 0; l < c.layers; l++) {
      const lw = model.weights.layers[l]!;
      const w = lw.attn as DeepseekWeights;
      const moments = new LatentNormMoments(rk);
      for (const h of hs) {
        const made: Tensor[] = [];
        try {
          const x = backend.rmsnorm(h, lw.inputNorm, c.rmsEps);
          made.push(x);
          const kv = backend.linear(x, w.kvA, w.kvABias);
          made.push(kv);
          const lat = backend.gatherCols(kv, latentCols);
          made.push(lat);
          moments.add(lat.toArray(), h.shape[0]!);
        } finally {
          for (const t of made) t.dispose();
        }
        await nextTurn(opts.signal);
      }
      const gamma = Float32Array.from(moments.gamma(), rounding[l]!);
      relativeError.push(moments.relativeError(gamma));
      fitted.set(name(l), gamma);
      const old = w.kvNorm;
      w.kvNorm = backend.upload(gamma, [rk]);
      model.weightsChanged();
      old.dispose();
      // advanceWindows consumes the states it is given, even when it throws: hs is emptied first.
      hs = model.advanceWindows(l, windows, hs.splice(0));
      progress.tick();
    }
  } finally {
    for (const h of hs) h.dispose();
  }
  rewriteTensors(dir, fitted);
  return { relativeError };
}

/** One log line: each layer's relative error of the fitted norm. */
export function describeLatentNormFit(f: LatentNormFit): string {
  return `fitted kv_a_layernorm (no attention bias): relative latent error per layer ${f.relativeError.map((e) => e.toFixed(4)).join(", ")}`;
}

/** The fit's record in mla_conversion.json (an empty object for the exact form). */
export function latentNormRecord(f: LatentNormFit | null): { kv_a_layernorm_fit?: { relative_error: number[] } } {
  return f ? { kv_a_layernorm_fit: { relative_error: f.relativeError } } : {};
}
