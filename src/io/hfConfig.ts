/**
 * The only place Hugging Face `config.json` keys are read: normalizes llama, mistral and qwen2
 * configs (GQA, q/k/v bias, tied embeddings, rope_scaling linear/llama3) into a ModelConfig.
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError } from "../errors.js";
import { DeepseekAttention, ModelConfig, RopeScaling } from "../model/config.js";
import { parseMlaSection } from "./mlaSection.js";
import { readJsonObject } from "./jsonFile.js";
import { shownJson } from "../util/shownJson.js";

const SUPPORTED_TYPES = ["llama", "mistral", "qwen2", "deepseek_v3"] as const;

type Raw = Record<string, unknown>;

export function readHfConfig(dir: string): ModelConfig {
  const file = path.join(dir, "config.json");
  const raw = readJsonObject(file, { code: "BAD_CONFIG", hint: "the config file is corrupt; copy it again" });
  const config = normalizeHfConfig(raw, file);
  const stops = eosList((raw as Raw)["eos_token_id"]);
  // generation_config.json is optional and only adds stop ids: one that does not parse adds none.
  try {
    const gen = JSON.parse(fs.readFileSync(path.join(dir, "generation_config.json"), "utf8")) as Raw;
    for (const id of eosList(gen["eos_token_id"])) if (!stops.includes(id)) stops.push(id);
  } catch {
    // no generation_config.json, or not JSON
  }
  return stops.length > 1 || (stops.length === 1 && stops[0] !== config.eosTokenId) ? { ...config, stopTokenIds: stops } : config;
}

/**
 * The one attention window every layer uses, or null for full attention, as transformers decides it:
 * an explicit `layer_types` list first; else Mistral slides everywhere; Qwen2 with
 * `use_sliding_window` slides only from layer `max_window_layers` (default 28) on (without it, never), so Qwen2-7B's
 * 28 layers under its default never slide. The runtime keeps one window for all layers, so a model
 * whose layers mix the two is refused rather than run with the wrong mask on some of them.
 */
function slidingWindowOf(raw: Raw, modelType: string, layers: number, file: string): number | null {
  // Qwen2Config sets sliding_window to None unless use_sliding_window (default false), before it reads
  // layer_types: its layers then attend fully whatever those say, and the key's value is never read.
  if (modelType === "qwen2" && raw["use_sliding_window"] !== true) return null;
  let sliding: boolean[];
  const types = raw["layer_types"];
  if (Array.isArray(types)) {
    if (types.length !== layers || types.some((t) => t !== "full_attention" && t !== "sliding_attention"))
      throw new MlaError("BAD_CONFIG", `${file}: layer_types must list "full_attention" or "sliding_attention" for each of the ${layers} layers`, "fix layer_types, or remove it to use the model type's default");
    sliding = types.map((t) => t === "sliding_attention");
  } else if (modelType === "mistral") {
    sliding = new Array<boolean>(layers).fill(true);
  } else if (modelType === "qwen2") {
    const from = typeof raw["max_window_layers"] === "number" ? (raw["max_window_layers"] as number) : 28;
    sliding = Array.from({ length: layers }, (_, i) => i >= from);
  } else {
    return null;
  }
  const count = sliding.filter(Boolean).length;
  // Read only where a layer slides: transformers ignores the key elsewhere (Qwen2 configs carry
  // sliding_window 131072 or 4096 beside use_sliding_window false and mean full attention).
  const size = count === 0 ? null : windowSize(raw["sliding_window"], file);
  if (size === null) return null;
  if (count < layers)
    throw new MlaError(
      "UNSUPPORTED",
      `${file}: ${count} of ${layers} layers use a sliding window of ${size} and the others full attention`,
      "mha2mla runs one attention window for every layer; a model that mixes them is not supported",
    );
  return size;
}

/**
 * `sliding_window`: null or absent is no window (full attention, as transformers reads it); else how
 * many of the latest positions a query sees, its own included, a whole number ≥ 1. A window of 0
 * masked every key on the reference backend (NaN) and none on the native ones, so the backends
 * disagreed about the same model; a fraction or a negative one means nothing.
 */
function windowSize(v: unknown, file: string): number | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1)
    throw new MlaError("BAD_CONFIG", `${file}: "sliding_window" is ${typeof v === "number" ? String(v) : JSON.stringify(v)}, not a whole number ≥ 1`, "it is how many of the latest positions each token attends to; set it to null (or remove it) for full attention");
  return v;
}

/** The ids of an eos_token_id field: a number or a list of numbers. */
function eosList(v: unknown): number[] {
  return (Array.isArray(v) ? v : [v]).filter((x): x is number => Number.isInteger(x) && (x as number) >= 0);
}

function num(raw: Raw, key: string, file: string, fallback?: number): number {
  const v = raw[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new MlaError("BAD_CONFIG", `${file}: "${key}" is missing`, "a Llama-family config.json names it; is this a decoder LM folder?");
  }
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) throw new MlaError("BAD_CONFIG", `${file}: "${key}" is ${JSON.stringify(v)}, not a non-negative number`, "fix config.json");
  return v;
}

function posInt(raw: Raw, key: string, file: string, fallback?: number): number {
  const v = num(raw, key, file, fallback);
  if (!Number.isInteger(v) || v <= 0) throw new MlaError("BAD_CONFIG", `${file}: "${key}" is ${v}, not a positive integer`, "fix config.json");
  return v;
}

/** `key`: where the scaling was read (rope_scaling, or transformers 5's rope_parameters), for the messages. */
function parseScaling(s: unknown, file: string, key = "rope_scaling"): RopeScaling | null {
  if (s === undefined || s === null) return null;
  if (typeof s !== "object" || Array.isArray(s)) throw new MlaError("BAD_CONFIG", `${file}: ${key} is ${shownJson(s)}`, `${key} is an object or null`);
  const r = s as Raw;
  const type = (r["rope_type"] ?? r["type"]) as unknown;
  // A factor without a type would stretch positions in a way nothing says: transformers 4.x refuses such a
  // config (no init function for a type of None), 5.x reads it as the default and drops the factor.
  // Either reading here would run the model at positions other than those it was trained or tuned for.
  if (type === undefined && r["factor"] !== undefined && r["factor"] !== 1)
    throw new MlaError("BAD_CONFIG", `${file}: ${key} gives a factor (${shownJson(r["factor"])}) but no "rope_type"`, 'name the scaling: "rope_type": "linear" or "llama3" (or remove the factor)');
  if (type === "default" || type === undefined) return null;
  // A factor below 1 compresses positions the other way (0: an infinite inverse frequency); HF requires ≥ 1.
  const factor = (): number => {
    const f = num(r, "factor", file);
    if (!(f >= 1)) throw new MlaError("BAD_CONFIG", `${file}: rope_scaling factor ${f} is below 1`, "the factor stretches positions by that much: use 1 or more (or no rope_scaling)");
    return f;
  };
  if (type === "linear") return { type: "linear", factor: factor() };
  if (type === "llama3")
    return {
      type: "llama3",
      factor: factor(),
      lowFreqFactor: num(r, "low_freq_factor", file, 1),
      highFreqFactor: num(r, "high_freq_factor", file, 4),
      originalMaxPositions: posInt(r, "original_max_position_embeddings", file, 8192),
    };
  throw new MlaError("UNSUPPORTED", `${file}: rope_scaling type ${JSON.stringify(type)} is not supported`, "supported: none/default, linear, llama3 (dynamic, yarn and longrope are not)");
}

export function normalizeHfConfig(raw: Raw, file = "config.json"): ModelConfig {
  const modelType = raw["model_type"];
  if (!(SUPPORTED_TYPES as readonly unknown[]).includes(modelType))
    throw new MlaError("UNSUPPORTED", modelType === undefined ? `${file} has no "model_type"` : `${file}: model_type ${JSON.stringify(modelType)} is not supported`, `supported: ${SUPPORTED_TYPES.join(", ")} (Llama-family decoders with RoPE)${modelType === undefined ? "; a Llama checkpoint's config.json says \"model_type\": \"llama\"" : ""}`);
  const act = raw["hidden_act"] ?? "silu";
  if (act !== "silu" && act !== "swish") throw new MlaError("UNSUPPORTED", `${file}: hidden_act ${JSON.stringify(act)} is not supported`, "only SwiGLU MLPs (hidden_act silu) are supported");
  const hiddenSize = posInt(raw, "hidden_size", file);
  const heads = posInt(raw, "num_attention_heads", file);
  const deepseek = modelType === "deepseek_v3" ? parseDeepseek(raw, file, heads) : null;
  const kvHeads = posInt(raw, "num_key_value_heads", file, heads);
  if (heads % kvHeads !== 0) throw new MlaError("BAD_CONFIG", `${file}: num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`, "grouped-query attention needs whole groups");
  if (!deepseek && raw["head_dim"] === undefined && hiddenSize % heads !== 0)
    throw new MlaError("BAD_CONFIG", `${file}: hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${heads}, and there is no head_dim`, "set head_dim, or fix hidden_size / num_attention_heads");
  const headDim = deepseek ? deepseek.nopeDim : posInt(raw, "head_dim", file, hiddenSize / heads);
  if (headDim % 2 !== 0) throw new MlaError("BAD_CONFIG", `${file}: head_dim ${headDim} is odd`, "rotary embeddings need an even head dimension");
  const ropeParams = (raw["rope_parameters"] as Raw | undefined) ?? undefined;
  const theta = ropeParams && ropeParams["rope_theta"] !== undefined && ropeParams["rope_theta"] !== null ? num(ropeParams, "rope_theta", file) : num(raw, "rope_theta", file, 10000);
  // 0 turns every inverse frequency into 1/0: the model would score NaN with no word of why.
  if (!(theta > 0)) throw new MlaError("BAD_CONFIG", `${file}: rope_theta is ${theta}, not a positive number`, "RoPE's base is positive (10000 for Llama 2, 500000 for Llama 3); fix config.json");
  const scalingKey = raw["rope_scaling"] !== undefined && raw["rope_scaling"] !== null ? "rope_scaling" : "rope_parameters";
  const scaling = parseScaling(raw["rope_scaling"] ?? ropeParams, file, scalingKey);
  const isQwen = modelType === "qwen2";
  const attnBias = raw["attention_bias"] === true;
  const window = slidingWindowOf(raw, modelType as string, posInt(raw, "num_hidden_layers", file), file);
  const eos = raw["eos_token_id"];
  const vocabSize = posInt(raw, "vocab_size", file);
  // A bad BOS surfaced later as "token id … outside the vocabulary", blaming the tokenizer (1.5 read as 1).
  // An EOS past the embedding is only never sampled (configs list ids of the whole tokenizer): a whole number is enough.
  const tokenId = (key: string, v: unknown, inVocab: boolean): number | null => {
    if (typeof v !== "number") return null;
    if (!Number.isInteger(v) || v < 0 || (inVocab && v >= vocabSize)) throw new MlaError("BAD_CONFIG", `${file}: "${key}" is ${v}, not a token id${inVocab ? ` of the ${vocabSize}-token vocabulary` : ""}`, inVocab ? `set it to the tokenizer's id (0 to ${vocabSize - 1}), or null` : "set it to the tokenizer's id, or null");
    return v;
  };
  const dtype = raw["torch_dtype"] ?? raw["dtype"];
  return {
    modelType: modelType as ModelConfig["modelType"],
    hiddenSize,
    intermediateSize: posInt(raw, "intermediate_size", file),
    layers: posInt(raw, "num_hidden_layers", file),
    heads,
    kvHeads,
    headDim,
    vocabSize,
    maxPositions: posInt(raw, "max_position_embeddings", file, 2048),
    rmsEps: num(raw, "rms_norm_eps", file, 1e-6),
    rope: { theta, scaling },
    tieEmbeddings: raw["tie_word_embeddings"] === true,
    qkvBias: !deepseek && (isQwen || attnBias),
    oBias: attnBias,
    mlpBias: raw["mlp_bias"] === true,
    slidingWindow: window,
    bosTokenId: tokenId("bos_token_id", raw["bos_token_id"], true),
    eosTokenId: tokenId("eos_token_id", typeof eos === "number" ? eos : Array.isArray(eos) ? eos[0] : null, false),
    declaredDtype: typeof dtype === "string" ? dtype : null,
    attention: deepseek ?? parseMlaSection(raw["mha2mla"], file, { layers: posInt(raw, "num_hidden_layers", file), kvHeads, headDim }) ?? { kind: "mha" },
  };
}

/** A dense deepseek_v3 config without q compression (what `convert --format deepseek` writes). */
function parseDeepseek(raw: Raw, file: string, heads: number): DeepseekAttention {
  const unsupported = (what: string, hint: string) => new MlaError("UNSUPPORTED", `${file}: deepseek_v3 with ${what} is not supported`, hint);
  if (raw["q_lora_rank"] !== null && raw["q_lora_rank"] !== undefined) throw unsupported(`q_lora_rank ${JSON.stringify(raw["q_lora_rank"])}`, "this runtime reads dense DeepSeek-V3 attention without q compression (q_lora_rank: null), as `convert --format deepseek` writes it");
  const layers = posInt(raw, "num_hidden_layers", file);
  const dense = raw["first_k_dense_replace"];
  if (typeof dense !== "number" || dense < layers) throw unsupported("mixture-of-experts layers", "set first_k_dense_replace to num_hidden_layers for a dense model; MoE is not implemented");
  const kvHeads = posInt(raw, "num_key_value_heads", file, heads);
  if (kvHeads !== heads) throw new MlaError("BAD_CONFIG", `${file}: deepseek_v3 needs num_key_value_heads = num_attention_heads (${kvHeads} ≠ ${heads})`, "DeepSeek's kv_b_proj has rows per query head");
  const ropeDim = posInt(raw, "qk_rope_head_dim", file);
  if (ropeDim % 2 !== 0) throw new MlaError("BAD_CONFIG", `${file}: qk_rope_head_dim ${ropeDim} is odd`, "rotary embeddings need an even dimension");
  return {
    kind: "deepseek",
    kvLoraRank: posInt(raw, "kv_lora_rank", file),
    ropeDim,
    nopeDim: posInt(raw, "qk_nope_head_dim", file),
    vDim: posInt(raw, "v_head_dim", file),
    interleave: raw["rope_interleave"] !== false,
    kvABias: raw["attention_bias"] === true,
  };
}
