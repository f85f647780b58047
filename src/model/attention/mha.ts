/** Standard (MHA/GQA) attention block as graph ops: x [T, D] → [T, D]. */
import type { Node, Ops } from "../../tensor/autograd.js";
import type { ModelConfig } from "../config.js";
import { KvCache, roundTripOn } from "../kvCache.js";
import type { AttentionNodes } from "../params.js";
import type { KvCacheDtype } from "../kvQuant.js";
import { linearMany } from "../../tensor/backend.js";

/** How a graph runs attention: `batch` sequences stacked along the rows, bf16 GEMM inputs or not. */
export interface AttentionMode {
  batch: number;
  bf16: boolean;
  /** Without a cache: use the cached quantities as a cache of this type returns them (kvQuant.ts). */
  kvCache?: KvCacheDtype;
}

/** x as a cache of mode.kvCache would return it, when no cache is there to do it (inference only). */
export function asCached(ops: Ops, x: Node, mode: AttentionMode, cache: unknown): Node {
  return cache || !mode.kvCache || mode.kvCache === "f32" ? x : ops.constant(roundTripOn(ops.b, x.value, mode.kvCache));
}

export function mhaAttention(ops: Ops, c: ModelConfig, w: AttentionNodes, invFreq: Float64Array, x: Node, positions: Int32Array, layer: number, cache?: KvCache, mode: AttentionMode = { batch: 1, bf16: false }): Node {
  if (w.kind !== "mha") throw new Error("mhaAttention on MLA weights");
  const T = positions.length;
  const q = ops.rope(ops.reshape(ops.linear(x, w.q, w.qBias), [T, c.heads, c.headDim]), positions, invFreq);
  let k = ops.rope(ops.reshape(ops.linear(x, w.k, w.kBias), [T, c.kvHeads, c.headDim]), positions, invFreq);
  let v = ops.reshape(ops.linear(x, w.v, w.vBias), [T, c.kvHeads, c.headDim]);
  [k, v] = [asCached(ops, k, mode, cache), asCached(ops, v, mode, cache)];
  const offset = cache?.length ?? 0;
  if (cache) {
    const [kAll, vAll] = cache.append(layer, k.value, v.value);
    [k, v] = [ops.constant(kAll), ops.constant(vAll)];
  }
  const o = ops.attention(q, k, v, { scale: 1 / Math.sqrt(c.headDim), queryOffset: offset, window: c.slidingWindow, ...mode });
  return ops.linear(ops.reshape(o, [T, c.heads * c.headDim]), w.o, w.oBias);
}

/**
 * Batched decode: x [B, D] holds one new token of each of B sequences, at `positions[b]` with its
 * own cache. The projections run once for the whole batch (the weights are read once per step, not
 * B times); attention runs per sequence against that sequence's cache. Inference only.
 */
export function mhaDecodeBatch(ops: Ops, c: ModelConfig, w: AttentionNodes, invFreq: Float64Array, x: Node, positions: Int32Array, layer: number, caches: readonly KvCache[]): Node {
  if (w.kind !== "mha") throw new Error("mhaDecodeBatch on MLA weights");
  const b = ops.b;
  const B = positions.length;
  // The three products of x in one launch where the backend can.
  const [qRaw, kRaw, vRaw] = linearMany(b, x.value, [w.q.value, w.k.value, w.v.value], [w.qBias?.value, w.kBias?.value, w.vBias?.value]);
  const q = b.rope(qRaw!.reshape([B, c.heads, c.headDim]), positions, invFreq);
  const k = b.rope(kRaw!.reshape([B, c.kvHeads, c.headDim]), positions, invFreq);
  for (const t of [qRaw!, kRaw!]) t.dispose();
  const v = vRaw!.reshape([B, c.kvHeads, c.headDim]);
  const [kAll, vAll] = KvCache.appendBatch(caches, layer, k, v);
  const o = b.attentionDecodeBatch(q, kAll, vAll, { scale: 1 / Math.sqrt(c.headDim), positions, window: c.slidingWindow });
  for (const t of [q, k, v]) t.dispose();
  const y = b.linear(o.reshape([B, c.heads * c.headDim]), w.o.value, w.oBias?.value);
  o.dispose();
  return ops.constant(y);
}
