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
 * with attention_bias), kv_a_layernorm, kv_b [H·(dn+dv), rk], and a zero o_proj bias where the source
 * has none and attention_bias is on (stock loaders then expect one).
 */
export function deepseekSpecs(p: string, s: { H: number; D: number; dn: number; dr: number; dv: number; rk: number; dtype: DType; normDtype: DType; attentionBias: boolean; addOBias: boolean }): TensorSpec[] {
  return [
    { name: p + "self_attn.q_proj.weight", dtype: s.dtype, shape: [s.H * (s.dn + s.dr), s.D] },
    { name: p + "self_attn.kv_a_proj_with_mqa.weight", dtype: s.dtype, shape: [s.rk + s.dr, s.D] },
    ...(s.attentionBias ? [{ name: p + "self_attn.kv_a_proj_with_mqa.bias", dtype: s.dtype, shape: [s.rk + s.dr] }] : []),
    { name: p + "self_attn.kv_a_layernorm.weight", dtype: s.normDtype, shape: [s.rk] },
    { name: p + "self_attn.kv_b_proj.weight", dtype: s.dtype, shape: [s.H * (s.dn + s.dv), s.rk] },
    ...(s.attentionBias && s.addOBias ? [{ name: p + "self_attn.o_proj.bias", dtype: s.dtype, shape: [s.D] }] : []),
  ];
}

const layerOf = (name: string) => /^model\.layers\.(\d+)\.(.*)$/.exec(name);

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
