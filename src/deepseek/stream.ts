/**
 * Writing a deepseek_v3 checkpoint from a source checkpoint: the attention tensors of each layer are
 * computed one layer at a time (and let go once written), everything else is copied byte for byte,
 * in the source's tensor order. Shared by `convert --format deepseek` and `export --format deepseek`.
 */
import { Checkpoint, CheckpointWriter } from "../io/checkpoint.js";
import { DType, encodeFromF32 } from "../io/dtype.js";
import type { TensorSpec } from "../io/safetensors.js";
import { layerPrefix } from "../model/weights.js";
import type { Progress } from "../util/progress.js";
import { throwIfAborted } from "../util/abort.js";

export interface TensorPlan {
  specs: TensorSpec[];
  /** Names computed per layer; every other spec is copied from the source. */
  generated: Set<string>;
}

/**
 * The attention tensors of one deepseek_v3 layer (prefix p): q_proj [H·(dn+dr), D], kv_a (+ its bias
 * with attention_bias), kv_a_layernorm, kv_b [H·(dn+dv), rk], and with attention_bias a zero o_proj
 * bias (stock loaders then expect one; a source's own is never carried: STRAY_O_BIAS).
 */
export function deepseekSpecs(p: string, s: { H: number; D: number; dn: number; dr: number; dv: number; rk: number; dtype: DType; normDtype: DType; attentionBias: boolean }): TensorSpec[] {
  return [
    { name: p + "self_attn.q_proj.weight", dtype: s.dtype, shape: [s.H * (s.dn + s.dr), s.D] },
    { name: p + "self_attn.kv_a_proj_with_mqa.weight", dtype: s.dtype, shape: [s.rk + s.dr, s.D] },
    ...(s.attentionBias ? [{ name: p + "self_attn.kv_a_proj_with_mqa.bias", dtype: s.dtype, shape: [s.rk + s.dr] }] : []),
    { name: p + "self_attn.kv_a_layernorm.weight", dtype: s.normDtype, shape: [s.rk] },
    { name: p + "self_attn.kv_b_proj.weight", dtype: s.dtype, shape: [s.H * (s.dn + s.dv), s.rk] },
    ...(s.attentionBias ? [{ name: p + "self_attn.o_proj.bias", dtype: s.dtype, shape: [s.D] }] : []),
  ];
}

const layerOf = (name: string) => /^model\.layers\.(\d+)\.(.*)$/.exec(name);

/**
 * An o_proj bias in the source's file, which both writers drop (planTensors' `dropped`). Their sources
 * declare no attention bias (a config with attention_bias has q/k/v biases, which both refuse), and then
 * no loader of the source applies one: transformers' Llama builds o_proj with bias=attention_bias, its
 * Mistral and Qwen2 with none, our runtime reads it only with attention_bias. It is no part of the model.
 * Copied into the exact form's folder (attention_bias true) it would be: transformers' DeepseekV3Attention
 * builds o_proj with bias=attention_bias and would add it to every layer's output, a model the source is
 * not (vLLM and SGLang build o_proj without a bias and skip it on load, so they would compute yet another).
 * Its part in the source's function is zero, so the exact form writes a zero o_proj bias in its place
 * (transformers expects one with attention_bias) and the bias-free form none. Not refused: the folder
 * then computes exactly the source as every loader of the source runs it, and the warning names it.
 */
export const STRAY_O_BIAS = "self_attn.o_proj.bias";

/** The warning for the o_proj biases `src` holds (see STRAY_O_BIAS), or null where it holds none. */
export function strayOBiasWarning(src: Checkpoint, attentionBias: boolean): string | null {
  const found = src.names().filter((n) => layerOf(n)?.[2] === STRAY_O_BIAS);
  if (!found.length) return null;
  const which = found.length === 1 ? found[0]! : `${found[0]} and ${found.length - 1} more`;
  return (
    `${src.dir} holds ${which}, but its config.json declares no attention_bias, so neither transformers nor this tool applies an o_proj bias to the source model; ` +
    `the deepseek_v3 folder does not carry it (${attentionBias ? "its own o_proj bias is zero" : "it has no o_proj bias"}) and computes the source model as loaded ` +
    "(an o_proj with a bias and q/k/v without is no Llama, Mistral or Qwen2 attention as transformers defines them)"
  );
}

/**
 * The output tensors: a layer's `anchor` tensor (its name after the layer prefix) is replaced by
 * `made(l, prefix)`, the `dropped` ones disappear, the rest are kept as they are.
 */
export function planTensors(src: Checkpoint, anchor: string, dropped: ReadonlySet<string>, made: (l: number, prefix: string) => TensorSpec[]): TensorPlan {
  const specs: TensorSpec[] = [];
  const generated = new Set<string>();
  for (const name of src.names()) {
    const m = layerOf(name);
    if (m && m[2] === anchor) {
      for (const s of made(Number(m[1]), layerPrefix(Number(m[1])))) {
        specs.push(s);
        generated.add(s.name);
      }
    } else if (!m || !dropped.has(m[2]!)) specs.push({ name, dtype: src.entry(name).dtype, shape: [...src.entry(name).shape] });
  }
  return { specs, generated };
}

/**
 * Streams the planned tensors into `dir`; `layer(l)` returns layer l's generated tensors by name after
 * the prefix. An aborted `signal` stops it after the layer under way (MlaError INTERRUPTED), with the
 * open file let go; the caller removes `dir`.
 */
export async function writePlanned(src: Checkpoint, dir: string, plan: TensorPlan, layer: (l: number) => Promise<Map<string, Float32Array>>, progress: Progress, signal?: AbortSignal): Promise<void> {
  const writer = new CheckpointWriter(dir, plan.specs, { metadata: { format: "pt" } });
  const made = new Map<number, Map<string, Float32Array>>();
  try {
    for (const s of plan.specs) {
      if (!plan.generated.has(s.name)) {
        await writer.append(src.readBytes(s.name));
        continue;
      }
      const [, layerIndex, field] = layerOf(s.name)!;
      const l = Number(layerIndex);
      let t = made.get(l);
      if (!t) {
        t = await layer(l);
        made.set(l, t);
        progress.tick();
        // Between layers, as the main conversion checks (a layer's tensors are the unit of work).
        throwIfAborted(signal);
      }
      await writer.append(encodeFromF32(s.dtype, t.get(field!)!));
      t.delete(field!);
      if (t.size === 0) made.delete(l);
    }
  } catch (e) {
    await writer.abandon();
    throw e;
  }
  await writer.close();
}
