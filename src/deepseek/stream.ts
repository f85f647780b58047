/**
 * Writing a deepseek_v3 checkpoint from a source checkpoint: the attention tensors of each layer are
 * computed one layer at a time (and let go once written), every other tensor the source's config
 * declares is copied byte for byte, in the source's tensor order, and nothing else (strayNotes). Shared by `convert --format deepseek` and `export --format deepseek`.
 */
import { Checkpoint, CheckpointWriter } from "../io/checkpoint.js";
import { DType, encodeFromF32 } from "../io/dtype.js";
import type { TensorSpec } from "../io/safetensors.js";
import { layerPrefix } from "../model/weights.js";
import type { ModelConfig } from "../model/config.js";
import type { Progress } from "../util/progress.js";
import { throwIfAborted } from "../util/abort.js";

export interface TensorPlan {
  specs: TensorSpec[];
  /** Names computed per layer; every other spec is copied from the source. */
  generated: Set<string>;
}

/**
 * The attention tensors of one deepseek_v3 layer (prefix p): q_proj [H·(dn+dr), D], kv_a (+ its bias
 * with attention_bias), kv_a_layernorm, kv_b [H·(dn+dv), rk], and with attention_bias an o_proj bias
 * (stock loaders then expect one): zero, or the source's declared o and v biases folded (./layer.ts);
 * a stray one is never carried (strayNotes).
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

const HEAD = "lm_head.weight";
const EMBED = "model.embed_tokens.weight";

/**
 * What the run says about the stray tensors `stray` of `src`: those its file holds that its config does
 * not declare (undeclaredTensors in ../convert/sourceTensors.ts), in the layers and outside them. In a
 * layer: a q, k, v or o_proj bias beside a config without attention_bias (our MLA format's
 * k_rope/k_up/v_up biases likewise), an MLP bias without mlp_bias, an old rotary_emb.inv_freq buffer. Outside: an lm_head.weight beside tied embeddings (tie_word_embeddings
 * true), an old model.rotary_emb.inv_freq, any other name the model has no place for. Both writers drop
 * them, so the folder holds exactly what stock DeepseekV3ForCausalLM builds from the config it is
 * written with (that config keeps the source's tie_word_embeddings: writeDeepseekConfig):
 * - Copied, they are tensors stock DeepseekV3ForCausalLM never loads (its q_proj and kv_b_proj have no
 *   bias, it has no k_proj/v_proj, and with tied embeddings its lm_head is the embedding): at best an
 *   "unused weights" warning, and a folder that holds what it does not compute.
 * - No loader of the source applies them: transformers builds the model from config.json (q/k/v/o_proj
 *   with a bias only under attention_bias, Qwen2's q/k/v always, the MLP's only under mlp_bias; Mistral
 *   none; the output head tied to the embedding under tie_word_embeddings) and so does our runtime.
 *   Their part in the source's function is zero, so dropping them is the exact fold, whatever they hold:
 *   the folder computes exactly the source as every loader of it runs it. Not refused, for that reason;
 *   the warning names them, in case the config is what is wrong. A tied lm_head.weight
 *   that differs from the embedding is the one conflict among them: the source's loaders use the
 *   embedding, so the folder does too, and the warning says the two differ.
 * - An o_proj bias among them is the one place the exact form needs care: it has attention_bias true,
 *   with which transformers' DeepseekV3Attention builds o_proj with a bias and would add a copied one to
 *   every layer's output (vLLM and SGLang skip it: yet another model). The exact form writes its own
 *   o_proj bias in its place (deepseekSpecs: zero, or a declared value bias folded), the bias-free
 *   form none.
 * Biases the source's config does declare are no strays: `convert` folds them where DeepSeek-V3 can
 * hold them and refuses the rest before any work, `export` refuses them (qkvBiasRefusal and
 * checkDeclaredBiases in ./exportable.ts say why, case by case).
 * Returns `warnings` for the strays (the layer ones in one message, the others in another, a tied
 * lm_head.weight that differs from the embedding in its own), `notes` for a tied lm_head.weight that
 * equals it (the usual copy some savers write: nothing is lost).
 */
export function strayNotes(src: Checkpoint, c: ModelConfig, stray: readonly string[], attentionBias: boolean): { warnings: string[]; notes: string[] } {
  const warnings: string[] = [];
  const notes: string[] = [];
  const layer = strayWarning(src, stray.filter((n) => layerOf(n)), attentionBias, c.qkvBias, c.layers);
  if (layer) warnings.push(layer);
  const head = c.tieEmbeddings && stray.includes(HEAD);
  if (head) {
    const diff = tensorDifference(src, HEAD, EMBED);
    if (diff === null) notes.push(`${src.dir} holds ${HEAD} beside tied embeddings (tie_word_embeddings true), equal to ${EMBED}: the deepseek_v3 folder keeps tie_word_embeddings true and does not carry it`);
    else
      warnings.push(
        `${src.dir} holds ${HEAD}, which differs from ${EMBED} (${diff}), but its config.json has tie_word_embeddings true, so the source's loaders (transformers ties the output head to the embedding; so does this tool) use the embedding as the output head and never read ${HEAD}; ` +
          `the deepseek_v3 folder keeps tie_word_embeddings true and does not carry ${HEAD}, so it computes the source model as loaded; if the model was meant to use ${HEAD}, set tie_word_embeddings to false in the source's config.json and convert again`,
      );
  }
  const outer = stray.filter((n) => !layerOf(n) && !(head && n === HEAD));
  if (outer.length) {
    const it = outer.length === 1 ? "it" : "them";
    warnings.push(
      `${src.dir} holds ${outer.length === 1 ? outer[0]! : `${outer.length} tensors outside the layers (${outer.join(", ")})`} that its config.json does not declare, so neither transformers nor this tool reads ${it} for the source model; ` +
        `the deepseek_v3 folder does not carry ${it} (stock DeepseekV3ForCausalLM would not load ${it}) and computes the source model as loaded`,
    );
  }
  return { warnings, notes };
}

/** null where tensors a and b of `src` hold the same values, else how they differ. */
function tensorDifference(src: Checkpoint, a: string, b: string): string | null {
  const [x, y] = [src.entry(a), src.entry(b)];
  if (x.shape.length !== y.shape.length || x.shape.some((d, i) => d !== y.shape[i])) return `shape [${x.shape}] against [${y.shape}]`;
  if (x.dtype === y.dtype) {
    const [u, v] = [src.readBytes(a), src.readBytes(b)];
    if (u.every((byte, i) => byte === v[i])) return null;
  }
  const [u, v] = [src.readF32(a), src.readF32(b)];
  let max = 0;
  let n = 0;
  for (let i = 0; i < u.length; i++)
    if (!(u[i] === v[i])) {
      n++;
      max = Math.max(max, Math.abs(u[i]! - v[i]!));
    }
  return n === 0 ? null : `${n} of ${u.length} values differ, by up to ${max.toPrecision(3)}`;
}

/** The warning for the stray layer tensors `stray` of `src` (see strayNotes), or null where there are none. */
function strayWarning(src: Checkpoint, stray: readonly string[], attentionBias: boolean, valueBias: boolean, layerCount: number): string | null {
  if (!stray.length) return null;
  const past = stray.filter((n) => Number(layerOf(n)![1]) >= layerCount).length;
  // A layer past num_hidden_layers (a config cut short, or a deeper model's weights) is not built at all.
  const why = past
    ? `${past === stray.length ? "" : `${past} of them `}in layers past num_hidden_layers ${layerCount}, which they do not build`
    : "they build q/k/v/o_proj with a bias only under attention_bias, or Qwen2's q/k/v, and the MLP's only under mlp_bias";
  const fields = [...new Set(stray.map((n) => layerOf(n)![2]!))].sort();
  const layers = new Set(stray.map((n) => layerOf(n)![1]!)).size;
  const it = stray.length === 1 ? "it" : "them";
  const what = stray.length === 1 ? stray[0]! : `${stray.length} tensors (${fields.join(", ")}${layers > 1 ? ` in ${layers} layers` : ""}; the first ${stray[0]})`;
  return (
    `${src.dir} holds ${what} that its config.json does not declare, so neither transformers nor this tool applies ${it} to the source model ` +
    `(${why}); ` +
    `the deepseek_v3 folder does not carry ${it} (stock DeepseekV3ForCausalLM would not load ${it}) and computes the source model as loaded` +
    (fields.includes(STRAY_O_BIAS) ? `; ${!attentionBias ? "it has no o_proj bias" : valueBias ? "its own o_proj bias holds only the declared v_proj bias, folded" : "its own o_proj bias is zero"}` : "") +
    `; if the source was meant to use ${it}, its config.json is wrong`
  );
}

/** The o_proj bias field: the one stray tensor whose place the exact form fills with its own (zero) bias. */
export const STRAY_O_BIAS = "self_attn.o_proj.bias";

/**
 * The output tensors: a layer's `anchor` tensor (its name after the layer prefix) is replaced by
 * `made(l, prefix)`; the `consumed` ones (names after the prefix: the source attention the writer
 * reads) and the `stray` ones (full names, undeclaredTensors) disappear; the rest are kept as they are.
 */
export function planTensors(src: Checkpoint, anchor: string, consumed: ReadonlySet<string>, stray: ReadonlySet<string>, made: (l: number, prefix: string) => TensorSpec[]): TensorPlan {
  const specs: TensorSpec[] = [];
  const generated = new Set<string>();
  for (const name of src.names()) {
    // Strays first: an anchor-named tensor of a layer past num_hidden_layers is one, not a layer to make.
    if (stray.has(name)) continue;
    const m = layerOf(name);
    if (m && m[2] === anchor) {
      for (const s of made(Number(m[1]), layerPrefix(Number(m[1])))) {
        specs.push(s);
        generated.add(s.name);
      }
    } else if (!(m && consumed.has(m[2]!))) specs.push({ name, dtype: src.entry(name).dtype, shape: [...src.entry(name).shape] });
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
