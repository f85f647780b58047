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

export function loadLlamaWeights(ckpt: Checkpoint, c: ModelConfig, backend: Backend): LlamaWeights {
  const D = c.hiddenSize;
  const F = c.intermediateSize;
  const qd = c.heads * c.headDim;
  const kvd = c.kvHeads * c.headDim;
  const t = (name: string, shape: number[]) => loadTensor(ckpt, backend, name, shape);
  const opt = (on: boolean, name: string, shape: number[]) => (on ? t(name, shape) : null);
  const embed = t("model.embed_tokens.weight", [c.vocabSize, D]);
  let lmHead = embed;
  if (!c.tieEmbeddings) {
    if (!ckpt.has("lm_head.weight")) throw new MlaError("BAD_CHECKPOINT", `${ckpt.dir}: "lm_head.weight" is missing and tie_word_embeddings is false`, "set tie_word_embeddings: true in config.json if the model shares its embedding");
    lmHead = t("lm_head.weight", [c.vocabSize, D]);
  }
  const layers: LayerWeights[] = [];
  for (let i = 0; i < c.layers; i++) {
    const p = layerPrefix(i);
    const a = p + "self_attn.";
    const m = p + "mlp.";
    layers.push({
      inputNorm: t(p + "input_layernorm.weight", [D]),
      q: t(a + "q_proj.weight", [qd, D]),
      k: t(a + "k_proj.weight", [kvd, D]),
      v: t(a + "v_proj.weight", [kvd, D]),
      o: t(a + "o_proj.weight", [D, qd]),
      qBias: opt(c.qkvBias, a + "q_proj.bias", [qd]),
      kBias: opt(c.qkvBias, a + "k_proj.bias", [kvd]),
      vBias: opt(c.qkvBias, a + "v_proj.bias", [kvd]),
      oBias: opt(c.oBias, a + "o_proj.bias", [D]),
      postNorm: t(p + "post_attention_layernorm.weight", [D]),
      gate: t(m + "gate_proj.weight", [F, D]),
      up: t(m + "up_proj.weight", [F, D]),
      down: t(m + "down_proj.weight", [D, F]),
      gateBias: opt(c.mlpBias, m + "gate_proj.bias", [F]),
      upBias: opt(c.mlpBias, m + "up_proj.bias", [F]),
      downBias: opt(c.mlpBias, m + "down_proj.bias", [D]),
    });
  }
  return { embed, finalNorm: t("model.norm.weight", [D]), lmHead, layers };
}
