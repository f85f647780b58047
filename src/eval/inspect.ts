/** `inspect`: architecture, parameter count and KV-cache size per token, from headers only (no weights are read), checked against config.json. */
import path from "node:path";
import { Checkpoint } from "../io/checkpoint.js";
import { readHfConfig } from "../io/hfConfig.js";
import { resolveModel } from "../io/modelDir.js";
import { DTYPE_BYTES } from "../io/dtype.js";
import { numel } from "../io/safetensors.js";
import { loadChatTemplate } from "../serve/chatTemplate.js";
import { kvBytesPerToken, kvElemsPerToken, MlaAttention, ModelConfig } from "../model/config.js";
import { MlaError } from "../errors.js";
import { checkExportSettings, exportLadder, exportSplit } from "../deepseek/exportable.js";
import { splitFields } from "../io/mlaSection.js";
import { SERVING_BIAS_NOTE, servingWarnings } from "../deepseek/serving.js";
import { KV_CACHE_DTYPES, KvCacheDtype } from "../model/kvQuant.js";
import { expectedTensors } from "../model/weights.js";
import { requireSourceTensors } from "../convert/sourceTensors.js";

export interface InspectResult {
  model: string;
  dir: string;
  model_type: string;
  attention: "mha" | "gqa" | "mqa" | "mla" | "deepseek-mla";
  deepseek?: { kv_lora_rank: number; qk_rope_head_dim: number; qk_nope_head_dim: number; v_head_dim: number; rope_interleave: boolean; serving: string };
  params: number;
  layers: number;
  hidden_size: number;
  intermediate_size: number;
  heads: number;
  kv_heads: number;
  /** Query·key width of a head (a deepseek folder: qk_nope_head_dim + qk_rope_head_dim). */
  head_dim: number;
  vocab_size: number;
  tied_embeddings: boolean;
  /** Storage dtype of the attention weights (the KV cache is assumed to use it). */
  dtype: string;
  weight_bytes: number;
  kv_elems_per_token: number;
  kv_bytes_per_token: number;
  /** A decode cache's bytes per token (all layers) for each cache type, quantization scales included. */
  kv_cache_bytes_per_token: Record<KvCacheDtype, number>;
  rope: ModelConfig["rope"];
  sliding_window: number | null;
  /** Where the chat template `serve`'s /v1/chat/completions and `generate --chat` use comes from (null: none; or why it cannot be used). */
  chat_template: string | null;
  /** rope_pairs, rank and latent_dim: one number, or one per layer for a `--kv-split per-layer` conversion. */
  mla?: ReturnType<typeof splitFields> & { svd: string; gate_dim?: number; deepseek_export: string };
}

/**
 * What the MLA serving stacks make of a deepseek_v3 folder's sizes (docs/formats.md), and of its
 * attention biases: vLLM and SGLang drop them, which only matters where the folder has them.
 */
function servingOf(rk: number, dr: number, heads: number, attentionBias: boolean): string {
  const w = servingWarnings(rk, dr, heads, "", attentionBias);
  const sizes = w.filter((x) => x !== SERVING_BIAS_NOTE).map((x) => x.replace(/\.? Stock transformers loads any size\. ?$/, ""));
  if (!attentionBias) return `stock transformers loads it; ${sizes.length ? `${sizes.join("; ")}; ` : "the fused MLA kernels take its sizes; "}it has no attention biases, so vLLM and SGLang compute the model transformers does`;
  return `stock transformers loads it; ${sizes.length ? `${sizes.join("; ")}; ` : "the fused MLA kernels take its sizes, but "}vLLM and SGLang drop its kv_a_proj_with_mqa and o_proj biases, which it needs (docs/deepseek.md)`;
}

/** Whether `export --format deepseek` can write this MLA model exactly, and if not, why (the first line of the refusal). */
function deepseekExport(c: ModelConfig): string {
  const a = c.attention as MlaAttention;
  try {
    checkExportSettings(c, exportSplit(a).ropePairs, a.gateDim > 0);
    const { slots, spacing } = exportLadder(a.selection);
    return `exact (shared rope key of ${2 * slots} dims, spacing ${spacing})`;
  } catch (e) {
    if (!(e instanceof MlaError)) throw e;
    return `no: ${e.message.split("\n")[0]!.replace(/^export --format deepseek: /, "")}`;
  }
}

function chatTemplateOf(dir: string): string | null {
  try {
    const t = loadChatTemplate(dir);
    return t ? path.basename(t.source) : null;
  } catch (e) {
    return `unusable: ${(e as Error).message.split("\n")[0]}`;
  }
}

export function inspectModel(spec: string): InspectResult {
  const { dir } = resolveModel(spec);
  const c = readHfConfig(dir);
  const ck = Checkpoint.open(dir);
  try {
    // The numbers below come from config.json: refused where the weights do not match it (a missing
    // num_key_value_heads reads as MHA), as loading the model would be.
    requireSourceTensors(ck, c);
    // The model's parameters (what its config declares; a tied head once), the file's bytes (all of them).
    const params = expectedTensors(c).reduce((n, t) => n + numel(t.shape), 0);
    let bytes = 0;
    for (const name of ck.names()) {
      const e = ck.entry(name);
      bytes += e.end - e.begin;
    }
    const kvTensor = ["model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.kv_down_proj.weight", "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"].find((n) => ck.has(n));
    const kDtype = kvTensor ? ck.entry(kvTensor).dtype : "F32";
    const kv = kvElemsPerToken(c);
    return {
      model: spec,
      dir,
      model_type: c.modelType,
      attention: c.attention.kind === "mla" ? "mla" : c.attention.kind === "deepseek" ? "deepseek-mla" : c.kvHeads === c.heads ? "mha" : c.kvHeads === 1 ? "mqa" : "gqa",
      ...(c.attention.kind === "mla" ? { mla: { ...splitFields(c.attention), svd: c.attention.svd, ...(c.attention.gateDim > 0 ? { gate_dim: c.attention.gateDim } : {}), deepseek_export: deepseekExport(c) } } : {}),
      ...(c.attention.kind === "deepseek" ? { deepseek: { kv_lora_rank: c.attention.kvLoraRank, qk_rope_head_dim: c.attention.ropeDim, qk_nope_head_dim: c.attention.nopeDim, v_head_dim: c.attention.vDim, rope_interleave: c.attention.interleave, serving: servingOf(c.attention.kvLoraRank, c.attention.ropeDim, c.heads, c.attention.kvABias || c.oBias) } } : {}),
      params,
      layers: c.layers,
      hidden_size: c.hiddenSize,
      intermediate_size: c.intermediateSize,
      heads: c.heads,
      kv_heads: c.kvHeads,
      // A deepseek folder's config holds the no-rope part as headDim; a query·key head spans both parts.
      head_dim: c.attention.kind === "deepseek" ? c.attention.nopeDim + c.attention.ropeDim : c.headDim,
      vocab_size: c.vocabSize,
      tied_embeddings: c.tieEmbeddings,
      dtype: kDtype.toLowerCase(),
      weight_bytes: bytes,
      kv_elems_per_token: kv,
      kv_bytes_per_token: kv * DTYPE_BYTES[kDtype],
      kv_cache_bytes_per_token: Object.fromEntries(KV_CACHE_DTYPES.map((d) => [d, kvBytesPerToken(c, d)])) as Record<KvCacheDtype, number>,
      rope: c.rope,
      sliding_window: c.slidingWindow,
      chat_template: chatTemplateOf(dir),
    };
  } finally {
    ck.close();
  }
}
