/**
 * Output refit (`convert --refit-output`): after the factorization, each layer's o_proj is solved
 * again by least squares so that the converted attention block reproduces the original block's output
 * on calibration text. Layers go in order and each one is measured on the input the converted model
 * (already refit below it) actually gives it, so a layer also absorbs the drift of the layers before.
 * Only o_proj changes: the KV cache, the parameter count and the format stay as they are. The linear
 * map cannot undo the distortion of the attention scores, but it can re-mix the heads' outputs to
 * best match the original's, which a weight-only factorization never looks at.
 *
 * Per layer, with O [N, Hd] the converted heads' output before o_proj and A [N, D] the original block's
 * output less the converted o_proj's bias (which stays), over the calibration tokens:
 * W_oᵀ = (OᵀO + λI)⁻¹ OᵀA, λ = ridge · trace(OᵀO)/Hd, kept only where it lowers the calibration error
 * (an exact conversion keeps its o_proj).
 */
import { rewriteTensors } from "../io/rewriteTensors.js";
import { activeLinalg } from "../backends/native/linalg.js";
import type { Backend } from "../tensor/backend.js";
import type { Tensor } from "../tensor/tensor.js";
import { loadModel, LlamaModel } from "../model/llama.js";
import { layerPrefix } from "../model/weights.js";
import { Progress, ProgressSink } from "../util/progress.js";
import { nextTurn } from "../util/abort.js";
import { RefitMoments } from "./refitMoments.js";

export interface RefitResult {
  /** Per layer, ‖block output − original‖ / ‖original‖ on the calibration tokens, before and after. */
  before: number[];
  after: number[];
}

/** Default ridge, relative to the mean diagonal of OᵀO (measured on mha26m-debian: docs/benchmarks.md). */
export const REFIT_RIDGE = 1e-3;

/**
 * Refits o_proj of every layer of the converted model in `convDir` (written, config included; its
 * checkpoint files holding an o_proj are rewritten) against the original in `srcDir`, on calibration `windows`.
 */
export async function refitOutputProjections(srcDir: string, convDir: string, windows: Int32Array[], backend: Backend, opts: { ridge?: number; progress?: ProgressSink | null; signal?: AbortSignal } = {}): Promise<RefitResult> {
  // Both models' weights go back to the backend when the refit ends, however it ends (on a GPU, two
  // copies of a 7B model would otherwise wait for the garbage collector).
  const original = loadModel(srcDir, { backend }).model;
  let converted: LlamaModel | null = null;
  try {
    converted = loadModel(convDir, { backend }).model;
    return await refitLoaded(original, converted, convDir, windows, backend, opts);
  } finally {
    converted?.dispose();
    original.dispose();
  }
}

async function refitLoaded(original: LlamaModel, converted: LlamaModel, convDir: string, windows: Int32Array[], backend: Backend, opts: { ridge?: number; progress?: ProgressSink | null; signal?: AbortSignal }): Promise<RefitResult> {
  const L = converted.config.layers;
  // In layers, as the conversion and export lines count: a count of windows × layers told a user nothing.
  const progress = new Progress("refit o_proj", L, "layers", opts.progress);
  const result: RefitResult = { before: [], after: [] };
  const refit: Float32Array[] = [];
  const linalg = activeLinalg(); // the converter's float64 library, or the native CPU one
  // Each window's hidden states in the converted model, advanced one layer at a time; freed however
  // the refit ends (a stop between windows, an error in a pass).
  let hs: Tensor[] = [];
  try {
    for (const ids of windows) hs.push(converted.embedTokens(ids));
    for (let l = 0; l < L; l++) {
      const w = converted.weights.layers[l]!.attn;
      const [D, Hd] = w.o.shape as [number, number];
      const moments = new RefitMoments(Hd, D);
      // The converted block adds its own o_proj bias after the product (the source's o_proj bias, with a
      // value bias folded in where the deepseek writer moved one there), and the refit leaves it as it is:
      // so the weight is solved for the original output less that bias, or the bias would count twice.
      const oBias = w.oBias ? w.oBias.toArray() : null;
      for (let i = 0; i < windows.length; i++) {
        const ids = windows[i]!;
        const x = attentionInput(converted, l, hs[i]!);
        let a: Tensor | null = null;
        let o: Tensor | null = null;
        try {
          a = withoutBias(backend, original.attentionOf(l, ids, x), oBias);
          o = converted.attentionOf(l, ids, x, true);
          moments.add(backend, o, a);
        } finally {
          for (const t of [x, a, o]) t?.dispose();
        }
        await nextTurn(opts.signal);
      }
      const oldW = Float32Array.from(w.o.toArray());
      const solved = moments.solve(opts.ridge ?? REFIT_RIDGE, linalg);
      const [before, after] = [moments.relativeError(oldW, linalg), moments.relativeError(solved, linalg)];
      // A conversion that is already (nearly) exact gains nothing, and the ridge would only shrink it.
      const newW = after < before ? solved : oldW;
      result.before.push(before);
      result.after.push(Math.min(before, after));
      refit.push(newW);
      // The next layer is measured on the stream this refit produces.
      const old = w.o;
      w.o = backend.upload(newW, [D, Hd]);
      converted.weightsChanged();
      old.dispose();
      // advanceWindows consumes the states it is given, even when it throws: hs is emptied first.
      hs = converted.advanceWindows(l, windows, hs.splice(0));
      progress.tick();
    }
  } finally {
    for (const h of hs) h.dispose();
  }
  rewriteTensors(convDir, new Map(refit.map((w, l) => [layerPrefix(l) + "self_attn.o_proj.weight", w])));
  return result;
}

/** a [T, D] less `bias` [D] on every row (a itself without one; otherwise a is let go, also on an error). */
function withoutBias(b: Backend, a: Tensor, bias: ArrayLike<number> | null): Tensor {
  if (!bias) return a;
  try {
    const v = a.toArray().slice();
    const D = bias.length;
    for (let i = 0; i < v.length; i++) v[i] -= bias[i % D]!;
    return b.upload(v, a.shape);
  } finally {
    a.dispose();
  }
}

/** Layer l's normed attention input [T, D] for one window whose hidden states before layer l are h. */
function attentionInput(model: LlamaModel, l: number, h: Tensor): Tensor {
  const w = model.weights.layers[l]!;
  return model.backend.rmsnorm(h, w.inputNorm, model.config.rmsEps);
}

/** One log line: each layer's calibration output error before → after the refit. */
export function describeRefit(r: RefitResult): string {
  return `refit o_proj: relative output error per layer ${r.before.map((b, i) => `${b.toFixed(3)}→${r.after[i]!.toFixed(3)}`).join(", ")}`;
}

/** The refit's record in mla_conversion.json (an empty object without a refit). */
export function refitRecord(r: RefitResult | null): { output_refit?: { relative_error_before: number[]; relative_error_after: number[] } } {
  return r ? { output_refit: { relative_error_before: r.before, relative_error_after: r.after } } : {};
}
