/** Standard (MHA/GQA) attention block: x [T, D] → [T, D]. */
import type { Backend } from "../../tensor/backend.js";
import type { Tensor } from "../../tensor/tensor.js";
import type { ModelConfig } from "../config.js";
import type { KvCache } from "../kvCache.js";
import type { MhaWeights } from "../weights.js";

export function mhaAttention(b: Backend, c: ModelConfig, w: MhaWeights, invFreq: Float64Array, x: Tensor, positions: Int32Array, layer: number, cache?: KvCache): Tensor {
  const T = positions.length;
  const q = b.rope(b.linear(x, w.q, w.qBias).reshape([T, c.heads, c.headDim]), positions, invFreq);
  let k = b.rope(b.linear(x, w.k, w.kBias).reshape([T, c.kvHeads, c.headDim]), positions, invFreq);
  let v = b.linear(x, w.v, w.vBias).reshape([T, c.kvHeads, c.headDim]);
  const offset = cache?.length ?? 0;
  if (cache) [k, v] = cache.append(layer, k, v);
  const o = b.attention(q, k, v, { scale: 1 / Math.sqrt(c.headDim), queryOffset: offset, window: c.slidingWindow });
  return b.linear(o.reshape([T, c.heads * c.headDim]), w.o, w.oBias);
}
