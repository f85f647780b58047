/**
 * Llama-family decoder forward: RMSNorm → attention (rotate-half RoPE, GQA, optional sliding window)
 * → residual → RMSNorm → SwiGLU MLP → residual; final RMSNorm and LM head. Optionally extends a KV
 * cache so that generation feeds one token at a time.
 */
import path from "node:path";
import { Checkpoint } from "../io/checkpoint.js";
import { readHfConfig } from "../io/hfConfig.js";
import { resolveModel } from "../io/modelDir.js";
import { loadTokenizer, TextTokenizer } from "../io/tokenizer.js";
import { referenceBackend } from "../backends/reference/index.js";
import type { Backend } from "../tensor/backend.js";
import type { Tensor } from "../tensor/tensor.js";
import { ModelConfig, ropeInvFreq } from "./config.js";
import { LayerWeights, LlamaWeights, loadLlamaWeights } from "./weights.js";
import { KvCache } from "./kvCache.js";

export class LlamaModel {
  readonly invFreq: Float64Array;

  constructor(readonly config: ModelConfig, readonly weights: LlamaWeights, readonly backend: Backend) {
    this.invFreq = ropeInvFreq(config.headDim, config.rope);
  }

  /**
   * Logits [T, V] for `ids` [T] placed at positions cache.length … cache.length+T−1. Without a cache
   * the sequence starts at position 0.
   */
  forward(ids: Int32Array, cache?: KvCache): Tensor {
    const b = this.backend;
    const c = this.config;
    const start = cache?.length ?? 0;
    const positions = new Int32Array(ids.length);
    for (let i = 0; i < ids.length; i++) positions[i] = start + i;
    let h = b.embedding(this.weights.embed, ids);
    this.weights.layers.forEach((lw, li) => {
      const a = this.attention(b.rmsnorm(h, lw.inputNorm, c.rmsEps), lw, positions, cache, li);
      h = b.add(h, a);
      const x = b.rmsnorm(h, lw.postNorm, c.rmsEps);
      const m = b.linear(b.swiglu(b.linear(x, lw.gate, lw.gateBias), b.linear(x, lw.up, lw.upBias)), lw.down, lw.downBias);
      h = b.add(h, m);
    });
    if (cache) cache.advance(ids.length);
    return b.linear(b.rmsnorm(h, this.weights.finalNorm, c.rmsEps), this.weights.lmHead);
  }

  /** x [T, D] → attention output [T, D]. */
  private attention(x: Tensor, lw: LayerWeights, positions: Int32Array, cache: KvCache | undefined, layer: number): Tensor {
    const b = this.backend;
    const c = this.config;
    const T = positions.length;
    const q = b.rope(b.linear(x, lw.q, lw.qBias).reshape([T, c.heads, c.headDim]), positions, this.invFreq);
    let k = b.rope(b.linear(x, lw.k, lw.kBias).reshape([T, c.kvHeads, c.headDim]), positions, this.invFreq);
    let v = b.linear(x, lw.v, lw.vBias).reshape([T, c.kvHeads, c.headDim]);
    let offset = 0;
    if (cache) {
      offset = cache.length;
      [k, v] = cache.append(layer, k, v);
    }
    const o = b.attention(q, k, v, { scale: 1 / Math.sqrt(c.headDim), queryOffset: offset, window: c.slidingWindow });
    return b.linear(o.reshape([T, c.heads * c.headDim]), lw.o, lw.oBias);
  }
}

export interface LoadedModel {
  dir: string;
  source: string;
  config: ModelConfig;
  model: LlamaModel;
  tokenizer: TextTokenizer;
}

/** Resolves MODEL (folder, cache id, alias), reads config, weights and tokenizer. */
export function loadModel(spec: string, opts: { backend?: Backend } = {}): LoadedModel {
  const { dir, source } = resolveModel(spec);
  const config = readHfConfig(dir);
  const ckpt = Checkpoint.open(dir);
  try {
    const backend = opts.backend ?? referenceBackend;
    const model = new LlamaModel(config, loadLlamaWeights(ckpt, config, backend), backend);
    return { dir: path.resolve(dir), source, config, model, tokenizer: loadTokenizer(dir) };
  } finally {
    ckpt.close();
  }
}
