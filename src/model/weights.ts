/** Loads a Llama-family checkpoint's tensors onto a backend, checking every shape against the config. */
import { MlaError } from "../errors.js";
import type { Checkpoint } from "../io/checkpoint.js";
import type { Backend } from "../tensor/backend.js";
import type { Tensor } from "../tensor/tensor.js";
import type { ModelConfig } from "./config.js";

export interface LayerWeights {
  inputNorm: Tensor; // [D]
  q: Tensor; // [H·Dh, D]
  k: Tensor; // [Hkv·Dh, D]
  v: Tensor; // [Hkv·Dh, D]
  o: Tensor; // [D, H·Dh]
  qBias: Tensor | null;
  kBias: Tensor | null;
  vBias: Tensor | null;
  oBias: Tensor | null;
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

export function loadTensor(ckpt: Checkpoint, backend: Backend, name: string, shape: readonly number[]): Tensor {
  const e = ckpt.entry(name);
  if (e.shape.length !== shape.length || e.shape.some((d, i) => d !== shape[i]))
    throw new MlaError("BAD_CHECKPOINT", `${ckpt.dir}: tensor "${name}" has shape [${e.shape}], config.json implies [${shape}]`, "the weights and config.json belong to different models");
  if (!["F32", "F16", "BF16", "F64"].includes(e.dtype)) throw new MlaError("BAD_CHECKPOINT", `${ckpt.dir}: tensor "${name}" is ${e.dtype}`, "weights must be floating point (quantized checkpoints are not read)");
  return backend.upload(ckpt.readF32(name), shape);
}

/** Every tensor a checkpoint of this config holds, in Hugging Face order, with its shape. */
export function expectedTensors(c: ModelConfig): { name: string; shape: number[] }[] {
  const D = c.hiddenSize;
  const F = c.intermediateSize;
  const qd = c.heads * c.headDim;
  const kvd = c.kvHeads * c.headDim;
  const out: { name: string; shape: number[] }[] = [{ name: "model.embed_tokens.weight", shape: [c.vocabSize, D] }];
  const add = (name: string, shape: number[], on = true) => on && out.push({ name, shape });
  for (let i = 0; i < c.layers; i++) {
    const p = layerPrefix(i);
    add(p + "input_layernorm.weight", [D]);
    for (const [proj, rows] of [["q", qd], ["k", kvd], ["v", kvd]] as const) {
      add(`${p}self_attn.${proj}_proj.weight`, [rows, D]);
      add(`${p}self_attn.${proj}_proj.bias`, [rows], c.qkvBias);
    }
    add(p + "self_attn.o_proj.weight", [D, qd]);
    add(p + "self_attn.o_proj.bias", [D], c.oBias);
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

export function loadLlamaWeights(ckpt: Checkpoint, c: ModelConfig, backend: Backend): LlamaWeights {
  const shapes = new Map(expectedTensors(c).map((e) => [e.name, e.shape]));
  const t = (name: string) => loadTensor(ckpt, backend, name, shapes.get(name)!);
  const opt = (name: string) => (shapes.has(name) ? t(name) : null);
  const embed = t("model.embed_tokens.weight");
  if (!c.tieEmbeddings && !ckpt.has("lm_head.weight"))
    throw new MlaError("BAD_CHECKPOINT", `${ckpt.dir}: "lm_head.weight" is missing and tie_word_embeddings is false`, "set tie_word_embeddings: true in config.json if the model shares its embedding");
  const lmHead = c.tieEmbeddings ? embed : t("lm_head.weight");
  const layers: LayerWeights[] = [];
  for (let i = 0; i < c.layers; i++) {
    const a = layerPrefix(i) + "self_attn.";
    const m = layerPrefix(i) + "mlp.";
    layers.push({
      inputNorm: t(layerPrefix(i) + "input_layernorm.weight"),
      q: t(a + "q_proj.weight"),
      k: t(a + "k_proj.weight"),
      v: t(a + "v_proj.weight"),
      o: t(a + "o_proj.weight"),
      qBias: opt(a + "q_proj.bias"),
      kBias: opt(a + "k_proj.bias"),
      vBias: opt(a + "v_proj.bias"),
      oBias: opt(a + "o_proj.bias"),
      postNorm: t(layerPrefix(i) + "post_attention_layernorm.weight"),
      gate: t(m + "gate_proj.weight"),
      up: t(m + "up_proj.weight"),
      down: t(m + "down_proj.weight"),
      gateBias: opt(m + "gate_proj.bias"),
      upBias: opt(m + "up_proj.bias"),
      downBias: opt(m + "down_proj.bias"),
    });
  }
  return { embed, finalNorm: t("model.norm.weight"), lmHead, layers };
}
