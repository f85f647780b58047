/**
 * Calibration pass over the original model: per layer, at the attention input (after
 * input_layernorm), the mean per-pair L2 norms of pre-RoPE q = q_proj(x) and k = k_proj(x) (bias
 * included; averaged over the tokens of a window, then over windows), and optionally the input
 * covariance E[x xᵀ] for activation-aware SVD. Windows follow DESIGN.md: [BOS] + next len−1 tokens,
 * stride len−1, from the start of the text.
 */
import { MlaError } from "../errors.js";
import type { LlamaModel } from "../model/llama.js";
import type { MhaWeights } from "../model/weights.js";
import { encodePrefix, TextTokenizer } from "../io/tokenizer.js";
import type { FloatArray, Tensor } from "../tensor/tensor.js";
import { Progress, ProgressSink } from "../util/progress.js";
import { nextTurn } from "../util/abort.js";
import { checkCtx, readText, requireBos } from "../eval/perplexity.js";
import { readDocuments } from "../finetune/data.js";

export interface CalibrationStats {
  /** Per layer [H, Dh/2]: mean ‖(q_i, q_{i+Dh/2})‖. */
  qNorm: Float64Array[];
  /** Per layer [Hkv, Dh/2]. */
  kNorm: Float64Array[];
  /** Per layer [D, D] attention-input covariance (when asked for). */
  covariance: Float64Array[] | null;
  windows: number;
  tokens: number;
  seconds: number;
}

/**
 * A --calib or --text file's text: a .jsonl file's "text" fields one document after another, a blank
 * line between them (as finetune --data reads it; its JSON punctuation is not text the model should be
 * calibrated on or scored by), any other file as it is.
 */
export function readTextOrJsonl(file: string): string {
  if (!file.endsWith(".jsonl")) return readText(file);
  // Empty documents are none: joined, they would be the blank lines between them, scored as text.
  const docs = readDocuments(file).filter((d) => d.length > 0);
  if (docs.length === 0) throw new MlaError("BAD_TEXT", `${file}: every document's text is empty`, "pass a .jsonl whose documents hold text");
  return docs.join("\n\n");
}

/** The calibration windows when --calib-samples / --calib-len are not given (DESIGN.md's calibration protocol). */
export const DEFAULT_CALIB_SAMPLES = 32;
export const DEFAULT_CALIB_LEN = 256;

/** Refuses a window count or length no text could fill; conversions call it before their work, not at calibration. */
export function checkWindowShape(samples: number, len: number): void {
  // Refused as --ctx is: "--calib-len 1.5 is too small" named neither a fraction nor Infinity's fault.
  checkCtx(len, "--calib-len");
  if (!Number.isInteger(samples) || samples < 1) throw new MlaError("BAD_ARGUMENT", `--calib-samples ${samples} is not a positive integer`, "pass e.g. --calib-samples 32");
}

export function calibrationWindows(tokenizer: TextTokenizer, text: string, samples: number, len: number, bos: number | null, source = "calibration text"): Int32Array[] {
  checkWindowShape(samples, len);
  const first = requireBos(bos);
  const stride = len - 1;
  const ids = encodePrefix(tokenizer, text, samples * stride);
  const available = Math.floor(ids.length / stride);
  if (available < 1) throw new MlaError("BAD_TEXT", `${source} holds ${ids.length} tokens, fewer than one calibration window of ${stride} (+BOS)`, "pass a longer --calib file or a smaller --calib-len");
  const n = Math.min(samples, available);
  return Array.from({ length: n }, (_, w) => {
    const win = new Int32Array(len);
    win[0] = first;
    win.set(ids.slice(w * stride, (w + 1) * stride), 1);
    return win;
  });
}

/** Accumulates mean pair norms of rows of y [T, heads·Dh] into acc [heads, Dh/2] (adds the window mean). */
export function addPairNorms(y: FloatArray, T: number, heads: number, Dh: number, acc: Float64Array): void {
  const half = Dh / 2;
  for (let t = 0; t < T; t++)
    for (let h = 0; h < heads; h++) {
      const o = (t * heads + h) * Dh;
      for (let i = 0; i < half; i++) acc[h * half + i] += Math.hypot(y[o + i]!, y[o + i + half]!) / T;
    }
}

export function addCovariance(x: FloatArray, T: number, D: number, acc: Float64Array): void {
  for (let t = 0; t < T; t++) {
    const o = t * D;
    for (let i = 0; i < D; i++) {
      const xi = x[o + i]!;
      const row = i * D;
      for (let j = i; j < D; j++) acc[row + j] += xi * x[o + j]!;
    }
  }
}

export async function calibrate(model: LlamaModel, windows: Int32Array[], opts: { covariance: boolean; progress?: ProgressSink | null; signal?: AbortSignal }): Promise<CalibrationStats> {
  const c = model.config;
  if (c.attention.kind !== "mha") throw new MlaError("UNSUPPORTED", "calibration needs the original MHA/GQA model", "calibrate before converting");
  const half = c.headDim / 2;
  const D = c.hiddenSize;
  const qNorm = Array.from({ length: c.layers }, () => new Float64Array(c.heads * half));
  const kNorm = Array.from({ length: c.layers }, () => new Float64Array(c.kvHeads * half));
  const cov = opts.covariance ? Array.from({ length: c.layers }, () => new Float64Array(D * D)) : null;
  const b = model.backend;
  const progress = new Progress("calibrate", windows.length, "windows", opts.progress);
  const t0 = performance.now();
  let tokens = 0;
  const native = b.calibration ?? null;
  const pairNorms = (y: Tensor, T: number, heads: number, acc: Float64Array) => {
    if (native) native.pairNorms(y, T, heads, c.headDim, acc);
    else addPairNorms(y.toArray(), T, heads, c.headDim, acc);
  };
  for (const win of windows) {
    const onAttentionInput = (layer: number, x: Tensor) => {
      const w = model.weights.layers[layer]!.attn as MhaWeights;
      const T = x.shape[0]!;
      const q = b.linear(x, w.q, w.qBias);
      pairNorms(q, T, c.heads, qNorm[layer]!);
      q.dispose();
      const k = b.linear(x, w.k, w.kBias);
      pairNorms(k, T, c.kvHeads, kNorm[layer]!);
      k.dispose();
      if (cov) {
        const xs = x.toArray();
        if (native?.covariance && xs instanceof Float32Array) native.covariance(xs, T, D, cov[layer]!);
        else addCovariance(xs, T, D, cov[layer]!);
      }
    };
    // In the backend's step arena where it has one (CUDA): the window's activations and logits are
    // freed on return rather than left to the garbage collector; only host statistics leave it.
    const run = () => model.forward(win, undefined, { onAttentionInput }).dispose();
    if (b.arena) b.arena(run);
    else run();
    tokens += win.length;
    progress.tick();
    await nextTurn(opts.signal);
  }
  for (const a of [...qNorm, ...kNorm]) for (let i = 0; i < a.length; i++) a[i] = a[i]! / windows.length;
  if (cov)
    for (const a of cov)
      for (let i = 0; i < D; i++)
        for (let j = i; j < D; j++) {
          a[i * D + j] = a[i * D + j]! / tokens;
          a[j * D + i] = a[i * D + j]!;
        }
  return { qNorm, kNorm, covariance: cov, windows: windows.length, tokens, seconds: (performance.now() - t0) / 1000 };
}
