/** Standard (MHA/GQA) attention block as graph ops: x [T, D] → [T, D]. */
import type { Node, Ops } from "../../tensor/autograd.js";
import type { ModelConfig } from "../config.js";
import type { KvCache } from "../kvCache.js";
import type { AttentionNodes } from "../params.js";

export function mhaAttention(ops: Ops, c: ModelConfig, w: AttentionNodes, invFreq: Float64Array, x: Node, positions: Int32Array, layer: number, cache?: KvCache): Node {
  if (w.kind !== "mha") throw new Error("mhaAttention on MLA weights");
  const T = positions.length;
  const q = ops.rope(ops.reshape(ops.linear(x, w.q, w.qBias), [T, c.heads, c.headDim]), positions, invFreq);
  let k = ops.rope(ops.reshape(ops.linear(x, w.k, w.kBias), [T, c.kvHeads, c.headDim]), positions, invFreq);
  let v = ops.reshape(ops.linear(x, w.v, w.vBias), [T, c.kvHeads, c.headDim]);
  const offset = cache?.length ?? 0;
  if (cache) {
    const [kAll, vAll] = cache.append(layer, k.value, v.value);
    [k, v] = [ops.constant(kAll), ops.constant(vAll)];
  }
  const o = ops.attention(q, k, v, { scale: 1 / Math.sqrt(c.headDim), queryOffset: offset, window: c.slidingWindow });
  return ops.linear(ops.reshape(o, [T, c.heads * c.headDim]), w.o, w.oBias);
}
