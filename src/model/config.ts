/** The normalized model description every other module reads (HF keys are read only in io/hfConfig.ts). */
import { KvCacheDtype, kvRowBytes } from "./kvQuant.js";
import { MlaError } from "../errors.js";
import { checkHeadDimArg, checkObjectArg, shown } from "../util/numericArgs.js";

export type RopeScaling =
  | { type: "linear"; factor: number }
  | { type: "llama3"; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositions: number };

export interface RopeConfig {
  theta: number;
  scaling: RopeScaling | null;
}

/** Standard multi-head / grouped-query attention. */
export interface MhaAttention {
  kind: "mha";
}

/** One layer's share of the KV budget: R rope pairs per KV head and the latent the rest comes from. */
export interface MlaSplit {
  ropePairs: number;
  /** Latent dims per KV head (the paper's d_kv). */
  rank: number;
  /** Latent width per token: rank·Hkv (joint) or 2·rank·Hkv (split). */
  latentDim: number;
}

/**
 * Multi-head latent attention after conversion: per layer and KV head, R frequency pairs keep RoPE
 * (`selection`, sorted pair indices, pair i = dims i and i + Dh/2); the other key dims and all value
 * dims are up-projected from one latent of `latentDim` dims per token and layer. R and the latent
 * width are per layer (`splits`): a uniform conversion repeats one split, `convert --kv-split
 * per-layer` chooses each layer's at equal bytes.
 */
export interface MlaAttention {
  kind: "mla";
  /** [layer] → that layer's rope pairs and latent width. */
  splits: MlaSplit[];
  /** [layer][kvHead] → the layer's R kept pair indices, ascending. */
  selection: number[][][];
  svd: "joint" | "split";
  /**
   * EG-MLA (embedding-gated): width of each layer's gate embedding table, 0 = plain MLA. The latent
   * of a token is multiplied by SiLU(gate_proj · gate_embed[token id] + bias) before it is cached,
   * so the cache is the same size; docs/method.md says why this form.
   */
  gateDim: number;
}

/** The latent width of `rank` dims per KV head: one latent (joint SVD) or one for keys and one for values (split). */
export function latentWidth(rank: number, kvHeads: number, svd: "joint" | "split"): number {
  return rank * kvHeads * (svd === "split" ? 2 : 1);
}

/** The split every layer shares, or null when layers differ (a `--kv-split per-layer` conversion). */
export function uniformSplit(a: MlaAttention): MlaSplit | null {
  // From a script: a config where its attention goes failed as "reading '0'", no splits returned undefined.
  if (!(typeof a === "object" && a !== null && Array.isArray(a.splits) && a.splits.length > 0)) throw new MlaError("BAD_ARGUMENT", `uniformSplit(): the attention is ${a && typeof a === "object" && "attention" in a ? "a model config" : shown(a)}, not an MLA attention with splits`, "pass an MLA model's config.attention (its kind is \"mla\")");
  const first = a.splits[0]!;
  return a.splits.every((s) => s.ropePairs === first.ropePairs && s.rank === first.rank && s.latentDim === first.latentDim) ? first : null;
}

/**
 * DeepSeek-V3 MLA (model_type deepseek_v3, dense, no q compression): per token and layer the cache
 * holds the RMS-normalized latent (kvLoraRank) and one rope key shared by all heads (ropeDim); each
 * head's query is [nope (nopeDim) | rope (ropeDim)], its value vDim. `headDim` of the ModelConfig is
 * nopeDim and `kvHeads` equals `heads`.
 */
export interface DeepseekAttention {
  kind: "deepseek";
  kvLoraRank: number;
  ropeDim: number;
  nopeDim: number;
  vDim: number;
  /** Rope rows stored interleaved (x0, y0, x1, y1, …) rather than rotate-half. */
  interleave: boolean;
  /** Bias on kv_a_proj_with_mqa (attention_bias). */
  kvABias: boolean;
}

export type AttentionConfig = MhaAttention | MlaAttention | DeepseekAttention;

export interface ModelConfig {
  modelType: "llama" | "mistral" | "qwen2" | "deepseek_v3";
  hiddenSize: number;
  intermediateSize: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocabSize: number;
  maxPositions: number;
  rmsEps: number;
  rope: RopeConfig;
  tieEmbeddings: boolean;
  /** Bias on q/k/v projections (qwen2; llama with attention_bias). */
  qkvBias: boolean;
  /** Bias on o_proj (llama with attention_bias). */
  oBias: boolean;
  mlpBias: boolean;
  /** Keys older than this many positions are masked (mistral); null = full causal attention. */
  slidingWindow: number | null;
  bosTokenId: number | null;
  eosTokenId: number | null;
  /**
   * Every token id that ends a generation: config.json's eos_token_id list and generation_config.json's
   * (Llama 3 Instruct ends turns with <|eot_id|>, not its first EOS). Absent: eosTokenId alone.
   */
  stopTokenIds?: readonly number[];
  /** The checkpoint's declared dtype (torch_dtype / dtype), e.g. "bfloat16". */
  declaredDtype: string | null;
  attention: AttentionConfig;
}

/** Inverse frequencies of the Dh/2 rotary pairs, with the model's scaling applied (as HF transformers). */
export function ropeInvFreq(headDim: number, rope: RopeConfig): Float64Array {
  checkRopeArgs(headDim, rope);
  const half = headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(rope.theta, (2 * i) / headDim);
  const s = rope.scaling;
  if (!s) return inv;
  if (s.type === "linear") {
    for (let i = 0; i < half; i++) inv[i] = inv[i]! / s.factor;
    return inv;
  }
  const lowWavelen = s.originalMaxPositions / s.lowFreqFactor;
  const highWavelen = s.originalMaxPositions / s.highFreqFactor;
  for (let i = 0; i < half; i++) {
    const f = inv[i]!;
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highWavelen) continue;
    if (wavelen > lowWavelen) inv[i] = f / s.factor;
    else {
      const smooth = (s.originalMaxPositions / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
      inv[i] = (1 - smooth) * (f / s.factor) + smooth * f;
    }
  }
  return inv;
}

/**
 * ropeInvFreq's arguments, for a script (configs are checked where they are read): a NaN or odd
 * head_dim gave no pairs or a half one, a missing theta or an unknown scaling type NaN frequencies.
 */
function checkRopeArgs(headDim: number, rope: RopeConfig): void {
  const where = "ropeInvFreq()";
  checkHeadDimArg(where, "headDim", headDim, "pass the rotary dims per head (config.headDim), an even number");
  checkObjectArg(where, "the rope", rope, "pass config.rope, e.g. { theta: 10000, scaling: null }");
  if (!(typeof rope.theta === "number" && rope.theta > 0 && rope.theta < Infinity)) throw new MlaError("BAD_ARGUMENT", `${where}: rope.theta is ${shown(rope.theta)}, not a number > 0`, "pass config.rope, e.g. { theta: 10000, scaling: null }");
  const s = rope.scaling as Record<string, unknown> | null | undefined;
  if (s === null || s === undefined) return;
  const keys = s["type"] === "linear" ? ["factor"] : s["type"] === "llama3" ? ["factor", "lowFreqFactor", "highFreqFactor", "originalMaxPositions"] : null;
  if (!keys) throw new MlaError("BAD_ARGUMENT", `${where}: rope.scaling.type is ${shown(s["type"])}, not "linear" or "llama3"`, "pass null for no scaling, or config.rope.scaling as readHfConfig gives it");
  for (const k of keys)
    if (!(typeof s[k] === "number" && (s[k] as number) > 0 && (s[k] as number) < Infinity)) throw new MlaError("BAD_ARGUMENT", `${where}: rope.scaling.${k} is ${shown(s[k])}, not a number > 0`, "pass config.rope.scaling as readHfConfig gives it");
}

/** KV-cache elements per token summed over layers: 2·Hkv·Dh (MHA/GQA), Hkv·2R + latent (MLA), kv_lora_rank + rope dim (DeepSeek) per layer. */
export function kvElemsPerToken(c: ModelConfig): number {
  let n = 0;
  for (let l = 0; l < c.layers; l++) n += kvRowsPerToken(c, l).reduce((x, y) => x + y, 0);
  return n;
}

/** The two rows one token caches at `layer` (MHA: keys, values; MLA: rope keys, latent; deepseek: rope key, latent), in elements. */
export function kvRowsPerToken(c: ModelConfig, layer: number): [number, number] {
  const a = c.attention;
  if (a.kind === "mla") {
    const s = a.splits[layer]!;
    return [c.kvHeads * 2 * s.ropePairs, s.latentDim];
  }
  if (a.kind === "deepseek") return [a.ropeDim, a.kvLoraRank];
  return [c.kvHeads * c.headDim, c.kvHeads * c.headDim];
}

/** The ids that end a generation (stopTokenIds, else eosTokenId). */
export function stopTokenIds(c: Pick<ModelConfig, "eosTokenId" | "stopTokenIds">): ReadonlySet<number> {
  return new Set(c.stopTokenIds ?? (c.eosTokenId === null ? [] : [c.eosTokenId]));
}

/**
 * Bytes per token, all layers, of a decode cache storing `dtype` (quantization scales included): the
 * dtype's size, which a cache may hold wider in memory (kvCache.ts, heldBytesPerToken).
 */
export function kvBytesPerToken(c: ModelConfig, dtype: KvCacheDtype): number {
  let n = 0;
  for (let l = 0; l < c.layers; l++) n += kvRowsPerToken(c, l).reduce((x, r) => x + kvRowBytes(r, dtype), 0);
  return n;
}

/** The dims of one head that keep RoPE, as [x-part…, y-part…] = [sel…, sel+Dh/2…], then the position-free rest ascending. */
export function headDimOrder(headDim: number, pairs: readonly number[]): { rope: number[]; nope: number[] } {
  const half = headDim / 2;
  const rope = [...pairs, ...pairs.map((p) => p + half)];
  const kept = new Set(rope);
  const nope: number[] = [];
  for (let d = 0; d < headDim; d++) if (!kept.has(d)) nope.push(d);
  return { rope, nope };
}

/** The rotary inverse frequencies a model's attention uses: Dh/2 of them, or the DeepSeek rope key's ropeDim/2. */
export function attentionInvFreq(c: ModelConfig): Float64Array {
  return c.attention.kind === "deepseek" ? ropeInvFreq(c.attention.ropeDim, c.rope) : ropeInvFreq(c.headDim, c.rope);
}

/** The warning for a window of n positions (flag n) on a model pretrained for max; null where it fits. `effect`: what goes wrong past them; `whose`: the model named. */
export function pastPositionsWarning(flag: string, n: number, max: number, effect: string, whose = "the model's"): string | null {
  return n > max ? `${flag} ${n} passes ${whose} ${max} positions (max_position_embeddings): ${effect}` : null;
}
