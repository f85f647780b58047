/** Loads a Llama-family checkpoint's tensors onto a backend, checking every shape against the config. */
import { MlaError } from "../errors.js";
import type { Checkpoint } from "../io/checkpoint.js";
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

/**
 * A checkpoint tensor on `backend`, checked against `shape`. With `keepBf16` a bf16 tensor stays bf16
 * when the backend can store it (GPU inference: half the memory, and decode is bandwidth-bound).
 */
export function loadTensor(ckpt: Checkpoint, backend: Backend, name: string, shape: readonly number[], keepBf16 = false): Tensor {
  const e = ckpt.entry(name);
  if (e.shape.length !== shape.length || e.shape.some((d, i) => d !== shape[i]))
    throw new MlaError("BAD_CHECKPOINT", `${ckpt.dir}: tensor "${name}" has shape [${e.shape}], config.json implies [${shape}]`, "the weights and config.json belong to different models");
  if (!["F32", "F16", "BF16", "F64"].includes(e.dtype)) throw new MlaError("BAD_CHECKPOINT", `${ckpt.dir}: tensor "${name}" is ${e.dtype}`, "weights must be floating point (quantized checkpoints are not read)");
  if (keepBf16 && e.dtype === "BF16" && backend.uploadBf16) {
    const bytes = ckpt.readBytes(name); // a fresh array: offset 0, so the uint16 view is aligned
    return backend.uploadBf16(new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.length / 2), shape);
  }
  return backend.upload(ckpt.readF32(name), shape);
}

/** Matrices that are only ever the `w` of a linear (so bf16 storage is allowed), by field name. */
const LINEAR_WEIGHTS = new Set(["q", "k", "v", "o", "kRope", "kvDown", "kUp", "vUp", "kvA", "kvB", "gate", "up", "down"]);

/** The attention tensors of one layer (names after `model.layers.N.`), in file order; `on` = present. */
export function attentionTensors(c: ModelConfig): { name: string; shape: number[]; on: boolean }[] {
  const D = c.hiddenSize;
  const qd = c.heads * c.headDim;
  const kvd = c.kvHeads * c.headDim;
  const a = "self_attn.";
  const q = [
    { name: a + "q_proj.weight", shape: [qd, D], on: true },
    { name: a + "q_proj.bias", shape: [qd], on: c.qkvBias },
  ];
  const o = [
    { name: a + "o_proj.weight", shape: [D, qd], on: true },
    { name: a + "o_proj.bias", shape: [D], on: c.oBias },
  ];
  if (c.attention.kind === "mha")
    return [
      ...q,
      { name: a + "k_proj.weight", shape: [kvd, D], on: true },
      { name: a + "k_proj.bias", shape: [kvd], on: c.qkvBias },
      { name: a + "v_proj.weight", shape: [kvd, D], on: true },
      { name: a + "v_proj.bias", shape: [kvd], on: c.qkvBias },
      ...o,
    ];
  if (c.attention.kind === "deepseek") {
    const { kvLoraRank: rk, ropeDim: dr, nopeDim: dn, vDim: dv } = c.attention;
    return [
      { name: a + "q_proj.weight", shape: [c.heads * (dn + dr), D], on: true },
      { name: a + "kv_a_proj_with_mqa.weight", shape: [rk + dr, D], on: true },
      { name: a + "kv_a_proj_with_mqa.bias", shape: [rk + dr], on: c.attention.kvABias },
      { name: a + "kv_a_layernorm.weight", shape: [rk], on: true },
      { name: a + "kv_b_proj.weight", shape: [c.heads * (dn + dv), rk], on: true },
      { name: a + "o_proj.weight", shape: [D, c.heads * dv], on: true },
      { name: a + "o_proj.bias", shape: [D], on: c.oBias },
    ];
  }
  const R = c.attention.ropePairs;
  const L = c.attention.latentDim;
  const kn = c.kvHeads * (c.headDim - 2 * R);
  return [
    ...q,
    { name: a + "k_rope_proj.weight", shape: [c.kvHeads * 2 * R, D], on: true },
    { name: a + "k_rope_proj.bias", shape: [c.kvHeads * 2 * R], on: c.qkvBias },
    { name: a + "kv_down_proj.weight", shape: [L, D], on: true },
    { name: a + "k_up_proj.weight", shape: [kn, L], on: true },
    { name: a + "k_up_proj.bias", shape: [kn], on: c.qkvBias },
    { name: a + "v_up_proj.weight", shape: [kvd, L], on: true },
    { name: a + "v_up_proj.bias", shape: [kvd], on: c.qkvBias },
    ...o,
    { name: a + "kv_gate_embed.weight", shape: [c.vocabSize, c.attention.gateDim], on: c.attention.gateDim > 0 },
    { name: a + "kv_gate_proj.weight", shape: [L, c.attention.gateDim], on: c.attention.gateDim > 0 },
    { name: a + "kv_gate_proj.bias", shape: [L], on: c.attention.gateDim > 0 },
  ];
}

/** Every tensor a checkpoint of this config holds, in Hugging Face order, with its shape. */
export function expectedTensors(c: ModelConfig): { name: string; shape: number[] }[] {
  const D = c.hiddenSize;
  const F = c.intermediateSize;
  const out: { name: string; shape: number[] }[] = [{ name: "model.embed_tokens.weight", shape: [c.vocabSize, D] }];
  const add = (name: string, shape: number[], on = true) => on && out.push({ name, shape });
  for (let i = 0; i < c.layers; i++) {
    const p = layerPrefix(i);
    add(p + "input_layernorm.weight", [D]);
    for (const t of attentionTensors(c)) add(p + t.name, t.shape, t.on);
    add(p + "post_attention_layernorm.weight", [D]);
    for (const [proj, shape] of [["gate", [F, D]], ["up", [F, D]], ["down", [D, F]]] as const) {
      add(`${p}mlp.${proj}_proj.weight`, [...shape]);
      add(`${p}mlp.${proj}_proj.bias`, [shape[0]], c.mlpBias);
    }
  }
  add("model.norm.weight", [D]);
  add("lm_head.weight", [c.vocabSize, D], !c.tieEmbeddings);
  return out;
}

/** Checkpoint name (after `model.layers.N.`) of each layer field, and of each attention field. */
const LAYER_FIELDS: Record<string, string> = {
  inputNorm: "input_layernorm.weight",
  postNorm: "post_attention_layernorm.weight",
  gate: "mlp.gate_proj.weight",
  up: "mlp.up_proj.weight",
  down: "mlp.down_proj.weight",
  gateBias: "mlp.gate_proj.bias",
  upBias: "mlp.up_proj.bias",
  downBias: "mlp.down_proj.bias",
};
const ATTENTION_FIELDS: Record<string, string> = {
  q: "q_proj.weight",
  qBias: "q_proj.bias",
  k: "k_proj.weight",
  kBias: "k_proj.bias",
  v: "v_proj.weight",
  vBias: "v_proj.bias",
  kRope: "k_rope_proj.weight",
  kRopeBias: "k_rope_proj.bias",
  kvDown: "kv_down_proj.weight",
  kUp: "k_up_proj.weight",
  kUpBias: "k_up_proj.bias",
  vUp: "v_up_proj.weight",
  vUpBias: "v_up_proj.bias",
  kvA: "kv_a_proj_with_mqa.weight",
  kvABias: "kv_a_proj_with_mqa.bias",
  kvNorm: "kv_a_layernorm.weight",
  kvB: "kv_b_proj.weight",
  o: "o_proj.weight",
  oBias: "o_proj.bias",
  gateEmbed: "kv_gate_embed.weight",
  gateProj: "kv_gate_proj.weight",
  gateProjBias: "kv_gate_proj.bias",
};
/** How weights are stored on the backend: "auto" keeps bf16 checkpoints bf16 where supported. */
export type WeightStorage = "auto" | "f32";

const MHA_KEYS = ["q", "qBias", "k", "kBias", "v", "vBias", "o", "oBias"];
const MLA_KEYS = ["q", "qBias", "kRope", "kRopeBias", "kvDown", "kUp", "kUpBias", "vUp", "vUpBias", "o", "oBias", "gateEmbed", "gateProj", "gateProjBias"];
const DEEPSEEK_KEYS = ["q", "kvA", "kvABias", "kvNorm", "kvB", "o", "oBias"];

/**
 * Every weight of the model on `backend`. `weights: "auto"` keeps bf16 linear weights (and an untied
 * LM head) in bf16 where the backend can; "f32" decodes everything (training needs float32 leaves).
 */
export function loadLlamaWeights(ckpt: Checkpoint, c: ModelConfig, backend: Backend, weights: WeightStorage = "f32"): LlamaWeights {
  const shapes = new Map(expectedTensors(c).map((e) => [e.name, e.shape]));
  const t = (name: string, linear = false) => loadTensor(ckpt, backend, name, shapes.get(name)!, linear && weights === "auto");
  const opt = (name: string, field: string) => (shapes.has(name) ? t(name, LINEAR_WEIGHTS.has(field)) : null);
  const embed = t("model.embed_tokens.weight");
  if (!c.tieEmbeddings && !ckpt.has("lm_head.weight"))
    throw new MlaError("BAD_CHECKPOINT", `${ckpt.dir}: "lm_head.weight" is missing and tie_word_embeddings is false`, "set tie_word_embeddings: true in config.json if the model shares its embedding");
  const lmHead = c.tieEmbeddings ? embed : t("lm_head.weight", true);
  const fields = (keys: string[], table: Record<string, string>, prefix: string) => Object.fromEntries(keys.map((k) => [k, opt(prefix + table[k], k)]));
  const layers: LayerWeights[] = [];
  for (let i = 0; i < c.layers; i++) {
    const kind = c.attention.kind;
    const keys = kind === "mha" ? MHA_KEYS : kind === "mla" ? MLA_KEYS : DEEPSEEK_KEYS;
    const attn = { kind, ...fields(keys, ATTENTION_FIELDS, layerPrefix(i) + "self_attn.") } as LayerWeights["attn"];
    layers.push({ ...fields(Object.keys(LAYER_FIELDS), LAYER_FIELDS, layerPrefix(i)), attn } as LayerWeights);
  }
  return { embed, finalNorm: t("model.norm.weight"), lmHead, layers };
}

/** Every stored tensor of the model with its checkpoint name, in checkpoint order (a tied head is not listed). */
export function namedTensors(c: ModelConfig, w: LlamaWeights): [string, Tensor][] {
  const byName = new Map<string, Tensor>([["model.embed_tokens.weight", w.embed], ["model.norm.weight", w.finalNorm]]);
  if (!c.tieEmbeddings) byName.set("lm_head.weight", w.lmHead);
  w.layers.forEach((l, i) => {
    for (const [k, name] of Object.entries(LAYER_FIELDS)) {
      const t = (l as unknown as Record<string, Tensor | null>)[k];
      if (t) byName.set(layerPrefix(i) + name, t);
    }
    for (const [k, name] of Object.entries(ATTENTION_FIELDS)) {
      const t = (l.attn as unknown as Record<string, Tensor | null>)[k];
      if (t) byName.set(layerPrefix(i) + "self_attn." + name, t);
    }
  });
  return expectedTensors(c).map((e) => [e.name, byName.get(e.name)!]);
}
