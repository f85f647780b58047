/**
 * Known model shapes for `synth` (random weights of a real architecture, for benchmarks). Values are
 * the public config.json fields of each model; `synth` writes them as config.json.
 */
import { MlaError } from "../errors.js";

export type HfConfigJson = Record<string, unknown>;

const llama = (o: HfConfigJson): HfConfigJson => ({
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_act: "silu",
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  attention_bias: false,
  mlp_bias: false,
  tie_word_embeddings: false,
  bos_token_id: 1,
  eos_token_id: 2,
  ...o,
});

export const ARCHS: Record<string, HfConfigJson> = {
  "llama2-7b": llama({ hidden_size: 4096, intermediate_size: 11008, num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: 32, vocab_size: 32000, max_position_embeddings: 4096 }),
  "llama2-13b": llama({ hidden_size: 5120, intermediate_size: 13824, num_hidden_layers: 40, num_attention_heads: 40, num_key_value_heads: 40, vocab_size: 32000, max_position_embeddings: 4096 }),
  "llama3-8b": llama({ hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: 8, vocab_size: 128256, max_position_embeddings: 8192, rope_theta: 500000.0, bos_token_id: 128000, eos_token_id: 128001 }),
  "llama3.1-8b": llama({
    hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: 8, vocab_size: 128256, max_position_embeddings: 131072, rope_theta: 500000.0,
    rope_scaling: { rope_type: "llama3", factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 }, bos_token_id: 128000, eos_token_id: 128001,
  }),
  "llama3.2-1b": llama({
    hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 16, num_attention_heads: 32, num_key_value_heads: 8, head_dim: 64, vocab_size: 128256, max_position_embeddings: 131072,
    rope_theta: 500000.0, tie_word_embeddings: true, rope_scaling: { rope_type: "llama3", factor: 32.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 }, bos_token_id: 128000, eos_token_id: 128001,
  }),
  "mistral-7b": { ...llama({ hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: 8, vocab_size: 32000, max_position_embeddings: 32768, sliding_window: 4096 }), architectures: ["MistralForCausalLM"], model_type: "mistral" },
  "qwen2-0.5b": { ...llama({ hidden_size: 896, intermediate_size: 4864, num_hidden_layers: 24, num_attention_heads: 14, num_key_value_heads: 2, vocab_size: 151936, max_position_embeddings: 32768, rope_theta: 1000000.0, rms_norm_eps: 1e-6, tie_word_embeddings: true, bos_token_id: 151643, eos_token_id: 151643 }), architectures: ["Qwen2ForCausalLM"], model_type: "qwen2" },
  "smollm-135m": llama({ hidden_size: 576, intermediate_size: 1536, num_hidden_layers: 30, num_attention_heads: 9, num_key_value_heads: 3, vocab_size: 49152, max_position_embeddings: 2048, tie_word_embeddings: true, bos_token_id: 0, eos_token_id: 0 }),
  "smollm-360m": llama({ hidden_size: 960, intermediate_size: 2560, num_hidden_layers: 32, num_attention_heads: 15, num_key_value_heads: 5, vocab_size: 49152, max_position_embeddings: 2048, tie_word_embeddings: true, bos_token_id: 0, eos_token_id: 0 }),
  "smollm-1.7b": llama({ hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 24, num_attention_heads: 32, num_key_value_heads: 32, vocab_size: 49152, max_position_embeddings: 2048, tie_word_embeddings: true, bos_token_id: 0, eos_token_id: 0 }),
  "tinyllama-1.1b": llama({ hidden_size: 2048, intermediate_size: 5632, num_hidden_layers: 22, num_attention_heads: 32, num_key_value_heads: 4, vocab_size: 32000, max_position_embeddings: 2048 }),
  stories260k: llama({ hidden_size: 64, intermediate_size: 172, num_hidden_layers: 5, num_attention_heads: 8, num_key_value_heads: 4, head_dim: 8, vocab_size: 512, max_position_embeddings: 512, tie_word_embeddings: true }),
};

export function archConfig(name: string): HfConfigJson {
  // Own keys only: "constructor" or "__proto__" would find Object's members (a clone error, an empty config).
  const key = name.toLowerCase();
  const a = Object.hasOwn(ARCHS, key) ? ARCHS[key] : undefined;
  if (!a) throw new MlaError("BAD_ARGUMENT", `--arch ${name} is not a known architecture`, `known: ${Object.keys(ARCHS).join(", ")}`);
  return structuredClone(a);
}
