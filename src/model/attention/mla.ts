/**
 * MLA attention block. Prefill (empty cache) runs the plain form: keys = [RoPE(k_rope), k_up(c)],
 * values = v_up(c) with c = kv_down(x). Decode runs the absorbed form on the latent cache, so each
 * step reads only the cached rope keys and latents. Two absorbed forms:
 * - run time (DeepSeek's inference): per head, the query's nope part goes through its KV group's key
 *   up-projection (q̃ = W_kupᵀ·q_nope, [L, Dn] per group), attention runs over the latents, and the
 *   head's latent output goes through the group's value up-projection, then o_proj. The weights read
 *   per token stay about those of the MHA model.
 * - pre-multiplied: W_kupᵀ folded into q_proj and W_vup into o_proj, one [L, D] matrix per head each:
 *   fewer products per step, but H·L×D weights, far more than MHA's at large latents.
 * `absorbForm` picks the one that reads fewer weight bytes (MHA2MLA_ABSORB=runtime|premultiplied
 * forces one). The key bias of k_up adds the same q·b to every score of a query and cancels in the
 * softmax; the value bias passes through the softmax weights (they sum to 1) into a constant output bias.
 */
import { MlaError } from "../../errors.js";
import { toBf16Bits } from "../../io/dtype.js";
import { linearMany, PRODUCTS, type Backend } from "../../tensor/backend.js";
import type { Tensor } from "../../tensor/tensor.js";
import type { Node, Ops } from "../../tensor/autograd.js";
import type { AttentionNodes } from "../params.js";
import { headDimOrder, ModelConfig, MlaAttention } from "../config.js";
import { LatentCache } from "../kvCache.js";
import { AttentionMode, asCached } from "./mha.js";
import type { MlaWeights } from "../weights.js";

/** The rope part of the query (q_proj's rope rows, shared by both forms) and the output bias. */
interface AbsorbedCommon {
  qRope: Tensor; // [H·2R, D]
  qRopeBias: Tensor | null; // [H·2R]
  oBias: Tensor | null; // [D]: o_proj's bias plus the value bias through o_proj
}

interface RuntimeAbsorbed extends AbsorbedCommon {
  form: "runtime";
  qNope: Tensor; // [H·Dn, D]: q_proj's nope rows
  qNopeBias: Tensor | null; // [H·Dn]
  /** Each group's key up-projection: as stored, [Hkv, Dn, L], where the backend has headLinearKN; else transposed, [Hkv, L, Dn], a copy. */
  kUp: Tensor;
  kUpKMajor: boolean;
  vUp: Tensor; // [Hkv, Dh, L]
}

interface PremultipliedAbsorbed extends AbsorbedCommon {
  form: "premultiplied";
  qLatent: Tensor; // [H·L, D]
  qLatentBias: Tensor | null; // [H·L]
  oLatent: Tensor; // [D, H·L]
}

type Absorbed = RuntimeAbsorbed | PremultipliedAbsorbed;
export type AbsorbForm = Absorbed["form"];

/**
 * Whether T new queries attending over S cached rows (theirs included) cost less in the absorbed form
 * than in the plain one, in multiply-adds. Plain up-projects all S latents to keys and values, S·L·Hkv·
 * (2·Dh − 2R), then attends in the head dims, T·S·H·2·Dh. Absorbed attends in the latent dims,
 * T·S·H·(2L + 2R), after turning the queries and outputs through the up-projections, T·H·L·(2·Dh − 2R).
 * For one query absorbed always wins (the point of MLA decode); for a long prompt chunk on a short
 * cache plain does. `latentCost` (Backend.latentAttentionCost) weighs the absorbed attention's
 * multiply-adds: on the GPU it is a loop kernel where the plain form runs on tensor cores (Infinity there).
 */
export function absorbedCheaper(c: ModelConfig, L: number, R: number, T: number, S: number, latentCost = 1): boolean {
  if (T === 1) return true;
  const Dh = c.headDim, nope = Dh - 2 * R;
  const plain = S * L * c.kvHeads * (nope + Dh) + T * S * c.heads * 2 * Dh;
  const absorbed = latentCost * T * S * c.heads * (2 * L + 2 * R) + T * c.heads * L * (nope + Dh);
  return absorbed < plain;
}

/**
 * Which absorbed form reads fewer weight elements per decoded token at `layer` (MHA2MLA_ABSORB
 * overrides): the pre-multiplied 2·H·L·D against q_proj's nope rows, the up-projections and o_proj.
 * Per layer, since R and L may differ between layers.
 */
export function absorbForm(c: ModelConfig, layer: number): AbsorbForm {
  const forced = process.env["MHA2MLA_ABSORB"];
  if (forced === "runtime" || forced === "premultiplied") return forced;
  // A misspelt form would silently take the automatic choice, which a benchmark would then mislabel.
  if (forced) throw new MlaError("BAD_ARGUMENT", `MHA2MLA_ABSORB=${forced} is not an absorbed form`, "use runtime or premultiplied, or unset it for the form that reads fewer weight bytes");
  const s = (c.attention as MlaAttention).splits[layer]!;
  const [H, G, D, Dh, L] = [c.heads, c.kvHeads, c.hiddenSize, c.headDim, s.latentDim];
  const Dn = Dh - 2 * s.ropePairs;
  return 2 * H * L * D <= H * Dn * D + G * L * (Dn + Dh) + D * H * Dh ? "premultiplied" : "runtime";
}

/** A matrix derived from weights, stored like the weight `like` it comes from (bf16 weights → bf16). */
export function uploadLike(b: Backend, x: Float32Array | Float64Array, shape: number[], like: Tensor): Tensor {
  return like.dtype === "bf16" && b.uploadBf16 ? b.uploadBf16(toBf16Bits(x), shape) : b.upload(x instanceof Float32Array ? x : Float32Array.from(x), shape);
}

export class MlaBlock {
  /** Per query head: its dims reordered as [rope dims (2R), nope dims], as columns of q_proj's output. */
  private readonly qOrder: Int32Array;
  private readonly qFreq: Float64Array; // [H, R]
  private readonly kFreq: Float64Array; // [Hkv, R]
  private absorbed: Absorbed | null = null;
  private readonly R: number;
  private readonly L: number;

  constructor(private readonly b: Backend, private readonly c: ModelConfig, private readonly w: MlaWeights, invFreq: Float64Array, private readonly layer: number) {
    const a = c.attention as MlaAttention;
    ({ ropePairs: this.R, latentDim: this.L } = a.splits[layer]!);
    const sel = a.selection[layer]!;
    const group = c.heads / c.kvHeads;
    const order: number[] = [];
    this.qFreq = new Float64Array(c.heads * this.R);
    this.kFreq = new Float64Array(c.kvHeads * this.R);
    for (let h = 0; h < c.heads; h++) {
      const g = Math.floor(h / group);
      const { rope, nope } = headDimOrder(c.headDim, sel[g]!);
      for (const d of [...rope, ...nope]) order.push(h * c.headDim + d);
      sel[g]!.forEach((p, i) => (this.qFreq[h * this.R + i] = invFreq[p]!));
    }
    for (let g = 0; g < c.kvHeads; g++) sel[g]!.forEach((p, i) => (this.kFreq[g * this.R + i] = invFreq[p]!));
    this.qOrder = Int32Array.from(order);
  }

  /**
   * x [T, D] at `positions` → [T, D] as graph ops over the weight nodes `w`. `absorb` defaults to the
   * absorbed form when the cache already holds tokens and it costs less there (absorbedCheaper: a
   * decode step, a short chunk on a long cache), else the plain form, which up-projects the cached
   * latents (a prompt's later chunks, the rest of a prompt after a prefix-cache hit). The absorbed
   * path is inference-only.
   */
  forward(ops: Ops, w: AttentionNodes, x: Node, ids: Int32Array, positions: Int32Array, cache?: LatentCache, absorb?: boolean, mode: AttentionMode = { batch: 1, bf16: false }): Node {
    if (w.kind !== "mla") throw new Error("MlaBlock on MHA weights");
    const { c } = this;
    const T = positions.length;
    const Dr = 2 * this.R;
    let kr = ops.rope(ops.reshape(ops.linear(x, w.kRope, w.kRopeBias), [T, c.kvHeads, Dr]), positions, this.kFreq, Dr);
    let lat = ops.linear(x, w.kvDown, null);
    // EG-MLA: the latent times its token's gate, before it is cached.
    if (w.gateEmbed) lat = ops.swiglu(ops.linear(ops.embedding(w.gateEmbed, ids), w.gateProj!, w.gateProjBias), lat);
    [kr, lat] = [asCached(ops, kr, mode, cache), asCached(ops, lat, mode, cache)];
    const offset = cache?.length ?? 0;
    if (cache) {
      const [krAll, latAll] = cache.append(this.layer, kr.value, lat.value);
      [kr, lat] = [ops.constant(krAll), ops.constant(latAll)];
    }
    const opts = { scale: 1 / Math.sqrt(c.headDim), queryOffset: offset, window: c.slidingWindow };
    if (absorb ?? (offset > 0 && absorbedCheaper(c, this.L, this.R, T, offset + T, this.b.latentAttentionCost))) {
      if (mode.batch > 1) throw new Error("MlaBlock: the absorbed path takes one sequence");
      const b = this.b;
      const ab = this.absorb();
      const [qr, qc] = this.absorbedQueries(x.value, positions);
      const ctx = b.latentAttention(qr, kr.value, qc, lat.value, opts);
      return ops.constant(this.absorbedOutput(ctx, ab));
    }
    const S = lat.value.shape[0]!;
    const q = ops.rope(ops.reshape(ops.gatherCols(ops.linear(x, w.q, w.qBias), this.qOrder), [T, c.heads, c.headDim]), positions, this.qFreq, Dr);
    const kn = ops.reshape(ops.linear(lat, w.kUp, w.kUpBias), [S, c.kvHeads, c.headDim - Dr]);
    const v = ops.reshape(ops.linear(lat, w.vUp, w.vUpBias), [S, c.kvHeads, c.headDim]);
    const o = ops.attention(q, ops.concatLast(kr, kn), v, { ...opts, ...mode });
    return ops.linear(ops.reshape(o, [T, c.heads * c.headDim]), w.o, w.oBias);
  }

  /**
   * Batched decode, absorbed: x [B, D] holds one new token of each of B sequences at `positions[b]`,
   * each with its own latent cache. Projections run once for the batch (so the absorbed matrices,
   * H·L×D per layer, are read once per step rather than B times), and so does attention
   * (Backend.latentAttentionDecodeBatch over the B caches).
   */
  decodeBatch(x: Tensor, ids: Int32Array, positions: Int32Array, caches: readonly LatentCache[]): Tensor {
    const { b, c, w } = this;
    const B = positions.length;
    const Dr = 2 * this.R;
    const ab = this.absorb();
    // The four products of x (rope keys, latent, the two query parts) in one launch where the backend can.
    const [q1, q2] = this.queryWeights(ab);
    // Run time: the nope rows feed only the key up-projection and the attention's latent context only the value
    // up-projection, so both may come back in bf16 (no rounding launch, half the bytes its products read).
    const runtimeProducts = ab.form === "runtime" ? PRODUCTS : undefined;
    const [krRaw, latRaw, qRaw1, qRaw2] = linearMany(b, x, [w.kRope, w.kvDown, q1.w, q2.w], [w.kRopeBias, null, q1.bias, q2.bias], [undefined, undefined, undefined, runtimeProducts]);
    const kr = b.rope(krRaw!.reshape([B, c.kvHeads, Dr]), positions, this.kFreq, Dr);
    krRaw!.dispose();
    let lat = latRaw!;
    if (w.gateEmbed) {
      const e = b.embedding(w.gateEmbed, ids);
      const pre = b.linear(e, w.gateProj!, w.gateProjBias);
      const gated = b.swiglu(pre, lat);
      for (const t of [e, pre, lat]) t.dispose();
      lat = gated;
    }
    const [qr, qc] = this.absorbedQueriesOf(qRaw1!, qRaw2!, positions);
    const [krAll, latAll] = LatentCache.appendBatch(caches, this.layer, kr, lat);
    const ctx = b.latentAttentionDecodeBatch(qr, krAll, qc, latAll, { scale: 1 / Math.sqrt(c.headDim), positions, window: c.slidingWindow }, runtimeProducts);
    for (const t of [kr, lat, qr, qc]) t.dispose();
    const y = this.absorbedOutput(ctx, ab);
    ctx.dispose();
    return y;
  }

  /** The attention output [T, D] of the latent context ctx [T, H, L]. */
  private absorbedOutput(ctx: Tensor, ab: Absorbed): Tensor {
    const { b, c, w } = this;
    const T = ctx.shape[0]!;
    if (ab.form === "premultiplied") return b.linear(ctx.reshape([T, c.heads * this.L]), ab.oLatent, ab.oBias);
    const heads = b.headLinear(ctx, ab.vUp, PRODUCTS); // [T, H, Dh], read by o_proj alone
    const y = b.linear(heads.reshape([T, c.heads * c.headDim]), w.o, ab.oBias);
    heads.dispose();
    return y;
  }

  /** The absorbed form's two query products: the rope rows, then the nope rows (run time) or the latent rows (pre-multiplied). */
  private queryWeights(ab: Absorbed): [{ w: Tensor; bias: Tensor | null }, { w: Tensor; bias: Tensor | null }] {
    return [{ w: ab.qRope, bias: ab.qRopeBias }, ab.form === "premultiplied" ? { w: ab.qLatent, bias: ab.qLatentBias } : { w: ab.qNope, bias: ab.qNopeBias }];
  }

  /** The absorbed queries of x [T, D] at `positions`: rope part qr [T, H, 2R] (rotated) and latent part qc [T, H, L]. */
  private absorbedQueries(x: Tensor, positions: Int32Array): [Tensor, Tensor] {
    const [q1, q2] = this.queryWeights(this.absorb());
    return this.absorbedQueriesOf(this.b.linear(x, q1.w, q1.bias), this.b.linear(x, q2.w, q2.bias), positions);
  }

  /** absorbedQueries from the two query products (queryWeights) [T, ·], which it frees. */
  private absorbedQueriesOf(ropeRows: Tensor, second: Tensor, positions: Int32Array): [Tensor, Tensor] {
    const { b, c } = this;
    const ab = this.absorb();
    const T = positions.length;
    const Dr = 2 * this.R;
    const qr = b.rope(ropeRows.reshape([T, c.heads, Dr]), positions, this.qFreq, Dr);
    ropeRows.dispose();
    if (ab.form === "premultiplied") return [qr, second.reshape([T, c.heads, this.L])];
    const nope = second.reshape([T, c.heads, c.headDim - Dr]);
    const qc = ab.kUpKMajor ? b.headLinearKN!(nope, ab.kUp) : b.headLinear(nope, ab.kUp);
    second.dispose();
    return [qr, qc];
  }

  /** Drops the absorbed projections (after the weights change, e.g. in fine-tuning). */
  invalidate(): void {
    const a = this.absorbed;
    this.absorbed = null;
    if (!a) return;
    // Every absorbed tensor is built here except vUp and a k-major kUp, reshapes of the stored
    // weights: freeing them would free the weights.
    const own = a.form === "runtime" ? [a.qNope, a.qNopeBias, a.kUpKMajor ? null : a.kUp] : [a.qLatent, a.qLatentBias, a.oLatent];
    for (const t of [a.qRope, a.qRopeBias, a.oBias, ...own]) t?.dispose();
  }

  /** Builds (once) the absorbed projections of the form `absorbForm` picks. */
  private absorb(): Absorbed {
    if (!this.absorbed) {
      // Built on the first absorbed forward, which may run in an arena; kept until invalidate().
      const build = () => (absorbForm(this.c, this.layer) === "runtime" ? this.runtimeAbsorbed() : this.premultiplied());
      this.absorbed = this.b.persistent ? this.b.persistent(build) : build();
    }
    return this.absorbed;
  }

  /** Stored like the weight `like` they come from; q_proj by default. */
  private matrix(x: Float32Array | Float64Array, shape: number[], like: Tensor = this.w.q): Tensor {
    return uploadLike(this.b, x, shape, like);
  }

  /** The rope rows of q_proj and the output bias with the value bias folded in (float64 on the host). */
  private absorbedCommon(Q: Float64Array, QB: Float64Array | null): AbsorbedCommon {
    const { b, c, w, R } = this;
    const D = c.hiddenSize, Dh = c.headDim, group = c.heads / c.kvHeads;
    const qRope = new Float64Array(c.heads * 2 * R * D);
    const qRopeBias = QB ? new Float64Array(c.heads * 2 * R) : null;
    for (let h = 0; h < c.heads; h++)
      for (let r = 0; r < 2 * R; r++) {
        qRope.set(Q.subarray((h * Dh + r) * D, (h * Dh + r + 1) * D), (h * 2 * R + r) * D);
        if (QB && qRopeBias) qRopeBias[h * 2 * R + r] = QB[h * Dh + r]!;
      }
    const OB = w.oBias?.toArray() ?? null;
    const VB = w.vUpBias?.toArray() ?? null;
    let oBias: Tensor | null = null;
    if (OB || VB) {
      const O = VB ? w.o.toArray() : null; // [D, H·Dh]
      const bias = new Float64Array(D);
      if (OB) OB.forEach((x, i) => (bias[i] = x));
      if (VB && O)
        for (let d = 0; d < D; d++)
          for (let h = 0; h < c.heads; h++) {
            const g = Math.floor(h / group);
            for (let e = 0; e < Dh; e++) bias[d] += O[d * c.heads * Dh + h * Dh + e]! * VB[g * Dh + e]!;
          }
      oBias = b.upload(Float32Array.from(bias), [D]);
    }
    return { qRope: this.matrix(qRope, [c.heads * 2 * R, D]), qRopeBias: qRopeBias ? b.upload(Float32Array.from(qRopeBias), [c.heads * 2 * R]) : null, oBias };
  }

  /** The run-time form: q_proj's rows regrouped, the key up-projection as keyUp gives it, the rest as stored. */
  private runtimeAbsorbed(): RuntimeAbsorbed {
    const { b, c, w, R, L } = this;
    const D = c.hiddenSize, Dh = c.headDim, Dn = Dh - 2 * R, G = c.kvHeads;
    const Q = gatherRows(w.q, this.qOrder);
    const QB = w.qBias ? gatherRows(w.qBias, this.qOrder) : null;
    const qNope = new Float64Array(c.heads * Dn * D);
    const qNopeBias = QB ? new Float64Array(c.heads * Dn) : null;
    for (let h = 0; h < c.heads; h++) {
      qNope.set(Q.subarray((h * Dh + 2 * R) * D, (h + 1) * Dh * D), h * Dn * D);
      if (QB && qNopeBias) qNopeBias.set(QB.subarray(h * Dh + 2 * R, (h + 1) * Dh), h * Dn);
    }
    return {
      form: "runtime",
      ...this.absorbedCommon(Q, QB),
      qNope: this.matrix(qNope, [c.heads * Dn, D]),
      qNopeBias: qNopeBias ? b.upload(Float32Array.from(qNopeBias), [c.heads * Dn]) : null,
      ...this.keyUp(),
      vUp: w.vUp.reshape([G, Dh, L]),
    };
  }

  /** The key up-projection as the run-time form's query product reads it (RuntimeAbsorbed.kUp). */
  private keyUp(): { kUp: Tensor; kUpKMajor: boolean } {
    const { b, c, w, R, L } = this;
    const Dn = c.headDim - 2 * R, G = c.kvHeads;
    // MHA2MLA_HEAD_KN=0: the transposed copy through headLinear even where headLinearKN exists (an A/B switch).
    if (b.headLinearKN && process.env["MHA2MLA_HEAD_KN"] !== "0") return { kUp: w.kUp.reshape([G, Dn, L]), kUpKMajor: true };
    const KU = w.kUp.toArray(); // [G·Dn, L]
    const kUpT = new Float32Array(G * L * Dn);
    for (let g = 0; g < G; g++) for (let n = 0; n < Dn; n++) for (let l = 0; l < L; l++) kUpT[(g * L + l) * Dn + n] = KU[(g * Dn + n) * L + l]!;
    return { kUp: this.matrix(kUpT, [G, L, Dn], w.kUp), kUpKMajor: false };
  }

  /** The pre-multiplied form, its products as backend GEMMs (on the GPU under CUDA). */
  private premultiplied(): PremultipliedAbsorbed {
    const { b, c, w, R, L } = this;
    const D = c.hiddenSize;
    const Dh = c.headDim;
    const Dn = Dh - 2 * R;
    const group = c.heads / c.kvHeads;
    const Q = gatherRows(w.q, this.qOrder);
    const QB = w.qBias ? gatherRows(w.qBias, this.qOrder) : null;
    const KU = w.kUp.toArray(); // [Hkv·Dn, L]
    const VU = w.vUp.toArray(); // [Hkv·Dh, L]
    const O = w.o.toArray(); // [D, H·Dh]
    const qLatent = new Float32Array(c.heads * L * D);
    const qLatentBias = QB ? new Float32Array(c.heads * L) : null;
    const oLatent = new Float32Array(D * c.heads * L);
    // The products run as backend GEMMs (on the GPU under CUDA): at the llama2-7b shape they are
    // ~64 GFLOP per layer, far too slow as host loops.
    const transposeRows = (src: ArrayLike<number>, row0: number, rows: number, cols: number) => {
      const t = new Float32Array(rows * cols); // [cols, rows]
      for (let r = 0; r < rows; r++) for (let k = 0; k < cols; k++) t[k * rows + r] = src[(row0 + r) * cols + k]!;
      return t;
    };
    const kuT = Array.from({ length: c.kvHeads }, (_, g) => b.upload(transposeRows(KU, g * Dn, Dn, L), [L, Dn])); // KU_gᵀ
    const vuT = Array.from({ length: c.kvHeads }, (_, g) => b.upload(transposeRows(VU, g * Dh, Dh, L), [L, Dh])); // VU_gᵀ
    const HL = c.heads * L;
    for (let h = 0; h < c.heads; h++) {
      const g = Math.floor(h / group);
      const qh = h * Dh;
      // qLatent[h·L + l, :] = Σ_n KU[g·Dn + n, l] · Q[qh + 2R + n, :]  =  KU_gᵀ [L,Dn] · Q_nope [Dn,D]
      const qnT = b.upload(transposeRows(Q, qh + 2 * R, Dn, D), [D, Dn]);
      const lat = b.linear(kuT[g]!, qnT);
      qLatent.set(lat.toArray(), h * L * D);
      lat.dispose();
      qnT.dispose();
      if (QB && qLatentBias)
        for (let l = 0; l < L; l++) {
          let bias = 0;
          for (let n = 0; n < Dn; n++) bias += KU[(g * Dn + n) * L + l]! * QB[qh + 2 * R + n]!;
          qLatentBias[h * L + l] = bias;
        }
      // oLatent[:, h·L + l] = Σ_e O[:, h·Dh + e] · VU[g·Dh + e, l]  =  O_h [D,Dh] · VU_g [Dh,L]
      const oh = new Float32Array(D * Dh);
      for (let d = 0; d < D; d++) for (let e = 0; e < Dh; e++) oh[d * Dh + e] = O[d * c.heads * Dh + h * Dh + e]!;
      const ohT = b.upload(oh, [D, Dh]);
      const ol = b.linear(ohT, vuT[g]!).toArray(); // [D, L]
      ohT.dispose();
      for (let d = 0; d < D; d++) oLatent.set(ol.subarray(d * L, (d + 1) * L), d * HL + h * L);
    }
    for (const t of [...kuT, ...vuT]) t.dispose();
    return {
      form: "premultiplied",
      ...this.absorbedCommon(Q, QB),
      qLatent: this.matrix(qLatent, [c.heads * L, D]),
      qLatentBias: qLatentBias ? b.upload(qLatentBias, [c.heads * L]) : null,
      oLatent: this.matrix(oLatent, [D, c.heads * L]),
    };
  }
}

/** Rows of w [N, …] in `order`, as float64 on the host. */
function gatherRows(w: Tensor, order: Int32Array): Float64Array {
  const cols = w.shape.length > 1 ? w.shape[1]! : 1;
  const src = w.toArray();
  const out = new Float64Array(order.length * cols);
  order.forEach((r, i) => out.set(src.subarray(r * cols, (r + 1) * cols), i * cols));
  return out;
}
