/** The normalized model description every other module reads (HF keys are read only in io/hfConfig.ts). */

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

export type AttentionConfig = MhaAttention;

export interface ModelConfig {
  modelType: "llama" | "mistral" | "qwen2";
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
  /** The checkpoint's declared dtype (torch_dtype / dtype), e.g. "bfloat16". */
  declaredDtype: string | null;
  attention: AttentionConfig;
}

/** Inverse frequencies of the Dh/2 rotary pairs, with the model's scaling applied (as HF transformers). */
export function ropeInvFreq(headDim: number, rope: RopeConfig): Float64Array {
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

/** KV-cache elements per token summed over layers. */
export function kvElemsPerToken(c: ModelConfig): number {
  return 2 * c.kvHeads * c.headDim * c.layers;
}
