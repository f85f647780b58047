/** Loads a Llama-family checkpoint's tensors onto a backend, checking every shape against the config. */
import { MlaError } from "../errors.js";
import { FLOAT_DTYPES, type Checkpoint } from "../io/checkpoint.js";
import type { Backend } from "../tensor/backend.js";
import type { Tensor } from "../tensor/tensor.js";
import type { ModelConfig } from "./config.js";

/** Standard attention projections (MHA/GQA). */
export interface MhaWeights {
  kind: "mha";
  q: Tensor; // [H·Dh, D]
  k: Tensor; // [Hkv·Dh, D]
  v: Tensor; // [Hkv·Dh, D]
  o: Tensor; // [D, H·Dh]
  qBias: Tensor | null;
  kBias: Tensor | null;
  vBias: Tensor | null;
  oBias: Tensor | null;
}

/** MLA projections as stored (docs/formats.md); q_proj and o_proj are the original ones. */
export interface MlaWeights {
  kind: "mla";
  q: Tensor; // [H·Dh, D]
  qBias: Tensor | null;
  kRope: Tensor; // [Hkv·2R, D], per KV head [x-part R rows, y-part R rows]
  kRopeBias: Tensor | null;
  kvDown: Tensor; // [L, D]
  kUp: Tensor; // [Hkv·(Dh−2R), L]
  kUpBias: Tensor | null;
  vUp: Tensor; // [Hkv·Dh, L]
  vUpBias: Tensor | null;
  o: Tensor; // [D, H·Dh]
  oBias: Tensor | null;
  /** EG-MLA's gate (null for plain MLA): table [V, E] by token id, projection [L, E] and bias [L]. */
  gateEmbed: Tensor | null;
  gateProj: Tensor | null;
  gateProjBias: Tensor | null;
}

/** DeepSeek-V3 MLA projections (model_type deepseek_v3, q_lora_rank null). */
export interface DeepseekWeights {
  kind: "deepseek";
  q: Tensor; // [H·(dn+dr), D], per head [nope dn | rope dr]
  kvA: Tensor; // [rk + dr, D]: the latent, then the shared rope key
  kvABias: Tensor | null; // [rk + dr]
  kvNorm: Tensor; // [rk]
  kvB: Tensor; // [H·(dn+dv), rk], per head [k_nope dn | v dv]
  o: Tensor; // [D, H·dv]
  oBias: Tensor | null;
}

export interface LayerWeights {
  inputNorm: Tensor; // [D]
  attn: MhaWeights | MlaWeights | DeepseekWeights;
  postNorm: Tensor; // [D]
  gate: Tensor; // [F, D]
  up: Tensor; // [F, D]
  down: Tensor; // [D, F]
  gateBias: Tensor | null;
  upBias: Tensor | null;
  downBias: Tensor | null;
}

export interface LlamaWeights {
  embed: Tensor; // [V, D]
  finalNorm: Tensor; // [D]
  lmHead: Tensor; // [V, D] (the embedding itself when tied)
  layers: LayerWeights[];
}

export function layerPrefix(i: number): string {
  return `model.layers.${i}.`;
}

/** Refuses a checkpoint tensor whose shape is not `shape` (config.json and the weights disagree). */
export function checkShape(ckpt: Checkpoint, name: string, shape: readonly number[]): void {
  const e = ckpt.entry(name);
  if (e.shape.length !== shape.length || e.shape.some((d, i) => d !== shape[i]))
    throw new MlaError("BAD_CHECKPOINT", `${ckpt.dir}: tensor "${name}" has shape [${e.shape}], config.json implies [${shape}]`, "the weights and config.json belong to different models");
}

/**
 * A checkpoint tensor on `backend`, checked against `shape`. With `keepBf16` a bf16 tensor stays bf16
 * when the backend can store it (GPU inference: half the memory, and decode is bandwidth-bound).
 */
export function loadTensor(ckpt: Checkpoint, backend: Backend, name: string, shape: readonly number[], keepBf16 = false): Tensor {
  checkShape(ckpt, name, shape);
  const e = ckpt.entry(name);
  if (!FLOAT_DTYPES.includes(e.dtype)) throw new MlaError("BAD_CHECKPOINT", `${ckpt.dir}: tensor "${name}" is ${e.dtype}`, "weights must be floating point (quantized checkpoints are not read)");
  if (keepBf16 && e.dtype === "BF16" && backend.uploadBf16) {
    const bytes = ckpt.readBytes(name); // a fresh array: offset 0, so the uint16 view is aligned
    return backend.uploadBf16(new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.length / 2), shape);
  }
  return backend.upload(ckpt.readF32(name), shape);
}

/**
 * One tensor of a decoder layer in a checkpoint format: the LayerWeights field (or attention field)
 * that holds it, its name after `model.layers.N.`, its shape, whether this config has it, and whether
 * it is only ever the `w` of a linear (so a bf16 checkpoint may keep it bf16 on the backend).
 */
interface LayerTensor {
  field: string;
  name: string;
  shape: number[];
  on: boolean;
  linear: boolean;
}

const row = (field: string, name: string, shape: number[], on = true, linear = false): LayerTensor => ({ field, name, shape, on, linear });

/** The attention tensors of `layer` in the format of `c` (MHA, our MLA, or deepseek_v3), in file order. */
function attentionTable(c: ModelConfig, layer: number): LayerTensor[] {
  const D = c.hiddenSize;
  const qd = c.heads * c.headDim;
  const kvd = c.kvHeads * c.headDim;
  const a = "self_attn.";
  const q = [row("q", a + "q_proj.weight", [qd, D], true, true), row("qBias", a + "q_proj.bias", [qd], c.qkvBias)];
  const o = [row("o", a + "o_proj.weight", [D, qd], true, true), row("oBias", a + "o_proj.bias", [D], c.oBias)];
  if (c.attention.kind === "mha")
    return [
      ...q,
      row("k", a + "k_proj.weight", [kvd, D], true, true),
      row("kBias", a + "k_proj.bias", [kvd], c.qkvBias),
      row("v", a + "v_proj.weight", [kvd, D], true, true),
      row("vBias", a + "v_proj.bias", [kvd], c.qkvBias),
      ...o,
    ];
  if (c.attention.kind === "deepseek") {
    const { kvLoraRank: rk, ropeDim: dr, nopeDim: dn, vDim: dv } = c.attention;
    return [
      row("q", a + "q_proj.weight", [c.heads * (dn + dr), D], true, true),
      row("kvA", a + "kv_a_proj_with_mqa.weight", [rk + dr, D], true, true),
      row("kvABias", a + "kv_a_proj_with_mqa.bias", [rk + dr], c.attention.kvABias),
      row("kvNorm", a + "kv_a_layernorm.weight", [rk]),
      row("kvB", a + "kv_b_proj.weight", [c.heads * (dn + dv), rk], true, true),
      row("o", a + "o_proj.weight", [D, c.heads * dv], true, true),
      row("oBias", a + "o_proj.bias", [D], c.oBias),
    ];
  }
  const { ropePairs: R, latentDim: L } = c.attention.splits[layer]!;
  const E = c.attention.gateDim;
  const kn = c.kvHeads * (c.headDim - 2 * R);
  return [
    ...q,
    row("kRope", a + "k_rope_proj.weight", [c.kvHeads * 2 * R, D], true, true),
    row("kRopeBias", a + "k_rope_proj.bias", [c.kvHeads * 2 * R], c.qkvBias),
    row("kvDown", a + "kv_down_proj.weight", [L, D], true, true),
    row("kUp", a + "k_up_proj.weight", [kn, L], true, true),
    row("kUpBias", a + "k_up_proj.bias", [kn], c.qkvBias),
    row("vUp", a + "v_up_proj.weight", [kvd, L], true, true),
    row("vUpBias", a + "v_up_proj.bias", [kvd], c.qkvBias),
    ...o,
    row("gateEmbed", a + "kv_gate_embed.weight", [c.vocabSize, E], E > 0),
    row("gateProj", a + "kv_gate_proj.weight", [L, E], E > 0),
    row("gateProjBias", a + "kv_gate_proj.bias", [L], E > 0),
  ];
}

/** The rest of a layer: its input norm (before the attention) and the post-attention norm and MLP (after). */
function normAndMlpTables(c: ModelConfig): { before: LayerTensor[]; after: LayerTensor[] } {
  const [D, F] = [c.hiddenSize, c.intermediateSize];
  const mlp = (proj: string, shape: number[]) => [row(proj, `mlp.${proj}_proj.weight`, shape, true, true), row(`${proj}Bias`, `mlp.${proj}_proj.bias`, [shape[0]!], c.mlpBias)];
  return {
    before: [row("inputNorm", "input_layernorm.weight", [D])],
    after: [row("postNorm", "post_attention_layernorm.weight", [D]), ...mlp("gate", [F, D]), ...mlp("up", [F, D]), ...mlp("down", [D, F])],
  };
}

/** The attention tensors of `layer` (names after `model.layers.N.`, `field` their attention-weights field), in file order; `on` = present. */
export function attentionTensors(c: ModelConfig, layer: number): { field: string; name: string; shape: number[]; on: boolean }[] {
  return attentionTable(c, layer).map(({ field, name, shape, on }) => ({ field, name, shape, on }));
}

/** Every tensor a checkpoint of this config holds, in Hugging Face order, with its shape. */
export function expectedTensors(c: ModelConfig): { name: string; shape: number[] }[] {
  const D = c.hiddenSize;
  const { before, after } = normAndMlpTables(c);
  const out: { name: string; shape: number[] }[] = [{ name: "model.embed_tokens.weight", shape: [c.vocabSize, D] }];
  for (let i = 0; i < c.layers; i++) for (const t of [...before, ...attentionTable(c, i), ...after]) if (t.on) out.push({ name: layerPrefix(i) + t.name, shape: [...t.shape] });
  out.push({ name: "model.norm.weight", shape: [D] });
  if (!c.tieEmbeddings) out.push({ name: "lm_head.weight", shape: [c.vocabSize, D] });
  return out;
}

/** How weights are stored on the backend: "auto" keeps bf16 checkpoints bf16 where supported. */
export const WEIGHT_STORAGES = ["auto", "f32"] as const;
export type WeightStorage = (typeof WEIGHT_STORAGES)[number];

/**
 * Every weight of the model on `backend`. `weights: "auto"` keeps bf16 linear weights (and the LM
 * head, tied or not) in bf16 where the backend can; "f32" decodes everything (training needs float32 leaves).
 */
export function loadLlamaWeights(ckpt: Checkpoint, c: ModelConfig, backend: Backend, weights: WeightStorage = "f32"): LlamaWeights {
  const t = (name: string, shape: number[], linear = false) => loadTensor(ckpt, backend, name, shape, linear && weights === "auto");
  const D = c.hiddenSize;
  // A tied embedding is also the LM head's weight, so under "auto" it stays bf16 like the other linear
  // weights: the head's product then runs on tensor cores (in float32 it was half of smollm-135m's
  // eval forward on the H200), and the lookup reads bf16 rows (every backend with uploadBf16 does).
  const embed = t("model.embed_tokens.weight", [c.vocabSize, D], c.tieEmbeddings);
  if (!c.tieEmbeddings && !ckpt.has("lm_head.weight"))
    throw new MlaError("BAD_CHECKPOINT", `${ckpt.dir}: "lm_head.weight" is missing and tie_word_embeddings is false`, "set tie_word_embeddings: true in config.json if the model shares its embedding");
  const lmHead = c.tieEmbeddings ? embed : t("lm_head.weight", [c.vocabSize, D], true);
  const { before, after } = normAndMlpTables(c);
  // Absent tensors (a bias the config does not have) are null fields.
  const fields = (rows: LayerTensor[], i: number) => Object.fromEntries(rows.map((r) => [r.field, r.on ? t(layerPrefix(i) + r.name, r.shape, r.linear) : null]));
  const layers: LayerWeights[] = [];
  for (let i = 0; i < c.layers; i++) {
    const attn = { kind: c.attention.kind, ...fields(attentionTable(c, i), i) } as LayerWeights["attn"];
    layers.push({ ...fields([...before, ...after], i), attn } as LayerWeights);
  }
  return { embed, finalNorm: t("model.norm.weight", [D]), lmHead, layers };
}

/** Every stored tensor of the model with its checkpoint name, in checkpoint order (a tied head is not listed). */
export function namedTensors(c: ModelConfig, w: LlamaWeights): [string, Tensor][] {
  const byName = new Map<string, Tensor>([["model.embed_tokens.weight", w.embed], ["model.norm.weight", w.finalNorm]]);
  if (!c.tieEmbeddings) byName.set("lm_head.weight", w.lmHead);
  const { before, after } = normAndMlpTables(c);
  w.layers.forEach((l, i) => {
    for (const [rows, holder] of [[[...before, ...after], l], [attentionTable(c, i), l.attn]] as const)
      for (const r of rows) {
        const t = (holder as unknown as Record<string, Tensor | null>)[r.field];
        if (t) byName.set(layerPrefix(i) + r.name, t);
      }
  });
  return expectedTensors(c).map((e) => [e.name, byName.get(e.name)!]);
}
