/**
 * DeepSeek-V3 MLA as graph ops (HF transformers' DeepseekV3Attention, q_lora_rank null):
 *   q = q_proj(x) → per head [q_nope (dn) | q_pe (dr)];  [c | k_pe] = kv_a_proj_with_mqa(x);
 *   c = RMSNorm(c)·kv_a_layernorm (eps 1e-6, as HF builds it);  [k_nope | v] = kv_b_proj(c) per head;
 *   RoPE on q_pe and on k_pe (one key shared by all heads); keys [k_nope | k_pe], scale (dn + dr)^−½.
 * The cache holds the normalized latent and the rotated k_pe (kv_lora_rank + dr per token and layer).
 * Prefill runs the plain form; decode (DeepseekDecoder) absorbs kv_b as DeepSeek's own inference does,
 * so a step reads only the cache. Interleaved rope rows are gathered into rotate-half order on the
 * fly, so the weights stay as stored.
 */
import type { Node, Ops } from "../../tensor/autograd.js";
import { linearMany, PRODUCTS, type Backend } from "../../tensor/backend.js";
import type { Tensor } from "../../tensor/tensor.js";
import type { DeepseekAttention, ModelConfig } from "../config.js";
import { LatentCache } from "../kvCache.js";
import type { AttentionNodes } from "../params.js";
import type { DeepseekWeights } from "../weights.js";
import { AttentionMode, asCached } from "./mha.js";
import { uploadLike } from "./mla.js";

/** HF builds kv_a_layernorm without passing rms_norm_eps. */
export const LATENT_NORM_EPS = 1e-6;

/** Column indices, cached per shape: the rope columns in rotate-half order, per head blocks, repeats. */
class Columns {
  private static cache = new Map<string, Columns>();
  readonly qNope: Int32Array;
  readonly qPe: Int32Array;
  readonly latent: Int32Array;
  readonly kPe: Int32Array;
  readonly kNope: Int32Array;
  readonly v: Int32Array;
  readonly kPeHeads: Int32Array;

  private constructor(H: number, a: DeepseekAttention) {
    const { nopeDim: dn, ropeDim: dr, vDim: dv, kvLoraRank: rk } = a;
    const m = dr / 2;
    // Position j of the rotate-half layout reads stored dim rope(j).
    const rope = (j: number) => (a.interleave ? (j < m ? 2 * j : 2 * (j - m) + 1) : j);
    const range = (n: number, f: (i: number) => number) => Int32Array.from({ length: n }, (_, i) => f(i));
    this.qNope = range(H * dn, (i) => Math.floor(i / dn) * (dn + dr) + (i % dn));
    this.qPe = range(H * dr, (i) => Math.floor(i / dr) * (dn + dr) + dn + rope(i % dr));
    this.latent = range(rk, (i) => i);
    this.kPe = range(dr, (i) => rk + rope(i));
    this.kNope = range(H * dn, (i) => Math.floor(i / dn) * (dn + dv) + (i % dn));
    this.v = range(H * dv, (i) => Math.floor(i / dv) * (dn + dv) + dn + (i % dv));
    this.kPeHeads = range(H * dr, (i) => i % dr);
  }

  static of(H: number, a: DeepseekAttention): Columns {
    const key = `${H}/${a.nopeDim}/${a.ropeDim}/${a.vDim}/${a.kvLoraRank}/${a.interleave}`;
    let c = Columns.cache.get(key);
    if (!c) Columns.cache.set(key, (c = new Columns(H, a)));
    return c;
  }
}

/** x [T, D] at `positions` → [T, D]; with a cache the new tokens are appended and attend to all of it. */
export function deepseekAttention(ops: Ops, c: ModelConfig, w: AttentionNodes, invFreq: Float64Array, x: Node, positions: Int32Array, layer: number, cache?: LatentCache, mode: AttentionMode = { batch: 1, bf16: false }): Node {
  if (w.kind !== "deepseek" || c.attention.kind !== "deepseek") throw new Error("deepseekAttention on other weights");
  const a = c.attention;
  const { nopeDim: dn, ropeDim: dr, vDim: dv } = a;
  const H = c.heads;
  const T = positions.length;
  const cols = Columns.of(H, a);
  const q = ops.linear(x, w.q, null);
  const qNope = ops.gatherCols(q, cols.qNope);
  const qPe = ops.rope(ops.reshape(ops.gatherCols(q, cols.qPe), [T, H, dr]), positions, invFreq, dr);
  const kv = ops.linear(x, w.kvA, w.kvABias);
  let latent = ops.rmsnorm(ops.gatherCols(kv, cols.latent), w.kvNorm, LATENT_NORM_EPS);
  let kPe = ops.rope(ops.reshape(ops.gatherCols(kv, cols.kPe), [T, 1, dr]), positions, invFreq, dr);
  [kPe, latent] = [asCached(ops, kPe, mode, cache), asCached(ops, latent, mode, cache)];
  const offset = cache?.length ?? 0;
  if (cache) {
    const [kAll, cAll] = cache.append(layer, kPe.value, latent.value);
    [kPe, latent] = [ops.constant(kAll), ops.constant(cAll)];
  }
  const S = latent.value.shape[0]!;
  const kvb = ops.linear(latent, w.kvB, null);
  const kNope = ops.gatherCols(kvb, cols.kNope);
  const v = ops.reshape(ops.gatherCols(kvb, cols.v), [S, H, dv]);
  const kPeHeads = ops.gatherCols(ops.reshape(kPe, [S, dr]), cols.kPeHeads);
  const qAll = ops.reshape(ops.concatLast(ops.reshape(qNope, [T * H, dn]), ops.reshape(qPe, [T * H, dr])), [T, H, dn + dr]);
  const kAll = ops.reshape(ops.concatLast(ops.reshape(kNope, [S * H, dn]), ops.reshape(kPeHeads, [S * H, dr])), [S, H, dn + dr]);
  const o = ops.attention(qAll, kAll, v, { scale: 1 / Math.sqrt(dn + dr), queryOffset: offset, window: null, ...mode });
  return ops.linear(ops.reshape(o, [T, H * dv]), w.o, w.oBias);
}

/**
 * Decode on the latent cache with kv_b absorbed, per head h: q̃_h = W_kb,hᵀ·q_nope,h (the query in
 * latent space), scores q̃_h·c_s + q_pe,h·k_pe,s over the cached latents and the shared rope key
 * (Backend.latentAttentionDecodeBatch with one KV head), the latent output through W_vb,h, then
 * o_proj. One layer; the absorbed matrices are built once from the weights (invalidate() after they
 * change). Inference only.
 */
export class DeepseekDecoder {
  private absorbed: { kbT: Tensor; vb: Tensor } | null = null;

  constructor(private readonly b: Backend, private readonly c: ModelConfig, private readonly w: DeepseekWeights, private readonly invFreq: Float64Array, private readonly layer: number) {}

  /** x [B, D]: one new token of each of B sequences at `positions[b]`, each with its own cache → [B, D]. */
  decodeBatch(x: Tensor, positions: Int32Array, caches: readonly LatentCache[]): Tensor {
    const { b, c, w } = this;
    const a = c.attention as DeepseekAttention;
    const { nopeDim: dn, ropeDim: dr, vDim: dv } = a;
    const H = c.heads;
    const B = positions.length;
    const cols = Columns.of(H, a);
    const { kbT, vb } = this.absorb();
    // Both products of x in one launch where the backend can.
    const [q, kv] = linearMany(b, x, [w.q, w.kvA], [null, w.kvABias]) as [Tensor, Tensor];
    const qNope = b.gatherCols(q, cols.qNope);
    const qPeRows = b.gatherCols(q, cols.qPe);
    const qPe = b.rope(qPeRows.reshape([B, H, dr]), positions, this.invFreq, dr);
    const qc = b.headLinear(qNope.reshape([B, H, dn]), kbT);
    const c0 = b.gatherCols(kv, cols.latent);
    const lat = b.rmsnorm(c0, w.kvNorm, LATENT_NORM_EPS);
    const kPeRows = b.gatherCols(kv, cols.kPe);
    const kPe = b.rope(kPeRows.reshape([B, 1, dr]), positions, this.invFreq, dr);
    const [krAll, latAll] = LatentCache.appendBatch(caches, this.layer, kPe, lat);
    // The context feeds only the value up-projection: it may come back in bf16.
    const ctx = b.latentAttentionDecodeBatch(qPe, krAll, qc, latAll, { scale: 1 / Math.sqrt(dn + dr), positions, window: null }, PRODUCTS);
    const heads = b.headLinear(ctx, vb, PRODUCTS);
    const y = b.linear(heads.reshape([B, H * dv]), w.o, w.oBias);
    for (const t of [q, qNope, qPeRows, qPe, qc, kv, c0, lat, kPeRows, kPe, ctx, heads]) t.dispose();
    return y;
  }

  /** Drops the absorbed matrices (after the weights change). */
  invalidate(): void {
    this.absorbed?.kbT.dispose();
    this.absorbed?.vb.dispose();
    this.absorbed = null;
  }

  /** W_kb transposed per head [H, rk, dn] and W_vb per head [H, dv, rk], from kv_b's rows. */
  private absorb(): { kbT: Tensor; vb: Tensor } {
    if (this.absorbed) return this.absorbed;
    const a = this.c.attention as DeepseekAttention;
    const { nopeDim: dn, vDim: dv, kvLoraRank: rk } = a;
    const H = this.c.heads;
    const KB = this.w.kvB.toArray(); // [H·(dn+dv), rk]
    const kbT = new Float32Array(H * rk * dn);
    const vb = new Float32Array(H * dv * rk);
    for (let h = 0; h < H; h++) {
      const row = (r: number) => (h * (dn + dv) + r) * rk;
      for (let n = 0; n < dn; n++) for (let l = 0; l < rk; l++) kbT[(h * rk + l) * dn + n] = KB[row(n) + l]!;
      vb.set(KB.subarray(row(dn), row(dn + dv)), h * dv * rk);
    }
    // Built on the first absorbed forward, which may run in an arena; kept until invalidate().
    const upload = () => ({ kbT: uploadLike(this.b, kbT, [H, rk, dn], this.w.kvB), vb: uploadLike(this.b, vb, [H, dv, rk], this.w.kvB) });
    this.absorbed = this.b.persistent ? this.b.persistent(upload) : upload();
    return this.absorbed;
  }
}
