/**
 * One layer of an MHA/GQA attention rewritten in the DeepSeek-V3 MLA layout (docs/deepseek.md):
 *
 *   RoRoPE. For each RoPE frequency i the key components of the Hkv KV heads, (x_{h,i}, y_{h,i}), are
 *   rotated across heads by U_i, the eigenvectors of their calibration covariance. One rotation applied
 *   to both halves of a pair commutes with RoPE (every head turns the pair by the same angle), so the
 *   rotated keys are exact. On the frequencies of the rope ladder the top component becomes the one
 *   shared rope key; each head keeps the rest of its key (k_{h,i} − U_i[h,0]·k'_{0,i}) position-free.
 *   Per-head selection is the special case U_i = I with one head.
 *
 *   Joint low-rank KV. The position-free keys of all heads and all values are factored by one
 *   truncated SVD (of the weights, or whitened by the calibration covariance) into kv_a (the latent)
 *   and kv_b; each query head gets its KV group's up-projection rows.
 *
 *   kv_a_layernorm. Stock loaders always RMS-normalize the latent. One extra latent channel carries a
 *   large constant β through the kv_a bias (its kv_b column is zero): the RMS is then ≈ β/√rk for every
 *   token, and the norm weight γ = β/√rk undoes it (the constant channel's own weight is 1/√rk, so it
 *   leaves the norm at ≈ 1 and trains like a bias). The relative error is ‖c‖²/(2β²). vLLM and SGLang
 *   drop that bias; the bias-free form (attentionBias false) has no constant channel and fits the norm's
 *   weight instead (./latentNorm.ts), an approximation.
 *
 *   The softmax scale (dn + dr)^−½ is folded into q_proj; rope rows are interleaved when asked.
 *
 *   Declared attention biases (a source whose q bias is zero in every layer: checkDeclaredBiases in
 *   ./exportable.ts), each where DeepseekV3Attention (q_lora_rank null) can hold it, exactly:
 *   - q: zero, so it needs no tensor (q_proj has no bias in transformers when q_lora_rank is null).
 *   - k, rope part: the shared rope key is k'_{0,i} = Σ_h U_i[h,0]·(W_{h,i}x + b_{h,i}), so its bias
 *     Σ_h U_i[h,0]·b_{h,i} goes in kv_a_proj_with_mqa's bias, on the rope rows of its slot. Llama adds
 *     b_k before RoPE, and transformers adds the kv_a bias before RoPE too, so it turns as the source's.
 *   - k, position-free part (b_h − U_i[h,0]·b'_i on ladder frequencies, b_h elsewhere): it is dropped.
 *     The position-free key is not rotated, so its bias adds q_nope·b to every score of a query alike,
 *     which softmax cancels exactly. (In the source that part turned with position; here it stops
 *     turning along with the weights' part: the approximation RoRoPE already makes, which vanishes
 *     where every KV head's key, bias included, is the same and every frequency is on the ladder.)
 *   - v: a query's softmax weights sum to 1, so each head's output gains its KV group's b_v, and the
 *     layer's output the constant W_o·b_v: it goes in o_proj's bias with the source's own o bias
 *     (foldValueBias).
 *   kv_b_proj has no bias, and none is needed. The frequency PCA and the SVD see the weights only: the
 *   rotation a bias would prefer is not sought (calibrated Σ is uncentred, without the bias's 1).
 */
import { MlaError } from "../errors.js";
import { balanceFactor, squaredNorm } from "../convert/factor.js";
import { CovarianceRoots, energyOf, symmetricEigen, truncatedFactorAsync, whitenedFactor, matmul } from "../svd/truncated.js";

export interface FrequencyPca {
  /** Per frequency i: U_i [Hkv, Hkv] row-major (column j = component j, descending variance). */
  rotations: Float64Array[];
  /** Per frequency i: the variances of the components [Hkv], descending. */
  variances: Float64Array[];
}

/**
 * Key components per frequency, PCA across the KV heads: C_i = W_x Σ W_xᵀ + W_y Σ W_yᵀ with W_x the
 * rows h·Dh + i of W_k (W_y: h·Dh + i + Dh/2) and Σ the attention-input covariance (identity without
 * calibration).
 */
export function frequencyPca(wk: Float32Array, kvHeads: number, headDim: number, hidden: number, cov: Float64Array | null): FrequencyPca {
  const half = headDim / 2;
  const D = hidden;
  const rotations: Float64Array[] = [];
  const variances: Float64Array[] = [];
  for (let i = 0; i < half; i++) {
    const C = new Float64Array(kvHeads * kvHeads);
    for (const off of [i, i + half]) {
      const W = new Float64Array(kvHeads * D);
      for (let h = 0; h < kvHeads; h++) for (let c = 0; c < D; c++) W[h * D + c] = wk[(h * headDim + off) * D + c]!;
      const WS = cov ? matmul(W, cov, kvHeads, D, D) : W;
      for (let a = 0; a < kvHeads; a++)
        for (let b = 0; b < kvHeads; b++) {
          let s = 0;
          for (let c = 0; c < D; c++) s += WS[a * D + c]! * W[b * D + c]!;
          C[a * kvHeads + b] += s;
        }
    }
    const { values, vectors } = symmetricEigen(C, kvHeads);
    const U = new Float64Array(kvHeads * kvHeads);
    for (let j = 0; j < kvHeads; j++) for (let h = 0; h < kvHeads; h++) U[h * kvHeads + j] = vectors[j]![h]!;
    rotations.push(U);
    variances.push(Float64Array.from(values, (v) => Math.max(v, 0)));
  }
  return { rotations, variances };
}

/**
 * How much a shared rope key on frequency i keeps: √(variance of the top key component) times the
 * query energy it meets (Σ over query heads of |U_i[g(q),0]|·mean ‖q_{q,i}‖; ‖W_q pair‖ without
 * calibration). [Dh/2]
 */
export function ladderScores(pca: FrequencyPca, wq: Float32Array, qNorm: Float64Array | null, heads: number, kvHeads: number, headDim: number, hidden: number): Float64Array {
  const half = headDim / 2;
  const group = heads / kvHeads;
  const out = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    let q = 0;
    for (let h = 0; h < heads; h++) {
      let n = qNorm ? qNorm[h * half + i]! : 0;
      if (!qNorm) {
        for (const off of [i, i + half]) for (let c = 0; c < hidden; c++) n += wq[(h * headDim + off) * hidden + c]! ** 2;
        n = Math.sqrt(n);
      }
      q += Math.abs(pca.rotations[i]![Math.floor(h / group) * kvHeads]!) * n;
    }
    out[i] = Math.sqrt(pca.variances[i]![0]!) * q;
  }
  return out;
}

/** The frequencies of a ladder of m slots with spacing s: s·k, k < m. */
export function ladder(m: number, spacing: number): number[] {
  return Array.from({ length: m }, (_, k) => spacing * k);
}

/** Spacings s ≥ 1 whose ladder of m slots stays inside the Dh/2 frequencies. */
export function validSpacings(m: number, half: number): number[] {
  // One slot is frequency 0 whatever the spacing (the loop below would never end).
  if (m <= 1) return [1];
  const out: number[] = [];
  for (let s = 1; s * (m - 1) <= half - 1; s++) out.push(s);
  return out;
}

export interface DeepseekLayerInput {
  /** [H·Dh, D] */
  wq: Float32Array;
  /** [Hkv·Dh, D] */
  wk: Float32Array;
  /** [Hkv·Dh, D] */
  wv: Float32Array;
  heads: number;
  kvHeads: number;
  headDim: number;
  hidden: number;
  pca: FrequencyPca;
  /** The rope ladder: original frequency index of each of the dr/2 shared rope slots. */
  ladder: number[];
  /** kv_lora_rank: latent dims, the constant channel included when attentionBias. */
  kvLoraRank: number;
  /**
   * true: one latent channel is a constant β (the kv_a bias) that makes kv_a_layernorm an identity;
   * false (`--no-attention-bias`): every channel is learned, no bias, and kv_a_layernorm's weight is
   * left at 1 for ./latentNorm.ts to fit on calibration text once the folder is written.
   */
  attentionBias: boolean;
  /** Whitening for activation-aware SVD; null = weight SVD. */
  whiten: CovarianceRoots | null;
  /** Attention-input covariance [D, D] (sizes the constant channel); null = identity. */
  cov: Float64Array | null;
  /** Interleave the rope rows (DeepSeek's rope_interleave). */
  interleave: boolean;
  /** Rounds a value as the output dtype stores it (the norm constants are compensated for it). */
  roundStored: (x: number) => number;
  /** Divide the position-free keys by α (equal mean energy with the values) before the SVD; kv_b's key rows take α back. */
  balance?: boolean;
  /** The source's declared k_proj bias [Hkv·Dh] (its rope part goes in kv_a's bias: top of the file); needs attentionBias. */
  kBias?: Float32Array | null;
}

export interface DeepseekLayer {
  /** [H·(Dh + dr), D] */
  qProj: Float32Array;
  /** [rk + dr, D] */
  kvA: Float32Array;
  /** [rk + dr]; null without attention bias. */
  kvABias: Float32Array | null;
  /** [rk] */
  kvNorm: Float32Array;
  /** [H·2·Dh, rk] */
  kvB: Float32Array;
  /** Retained singular-value energy of the position-free keys and values. */
  energy: number;
  /** The constant channel's β; null without attention bias. */
  beta: number | null;
}

/** What makes kv_a_layernorm an identity on a latent of `latent` learned dims plus one constant channel. */
export interface ConstantChannel {
  /** The constant channel's value, through the kv_a bias. */
  beta: number;
  /** kv_a_layernorm's weight [latent + 1]: γ = β/√rk on the latent, 1/√rk on the constant channel. */
  kvNorm: Float32Array;
  /** After the norm the latent is c/undo: kv_b's latent columns take the factor back. */
  undo: number;
  /** After the norm the constant channel is 1/constScale: a kv_b column meant to add a bias b holds b·constScale. */
  constScale: number;
}

/**
 * β large against every latent's norm (E‖c‖² = tr(Down Σ Downᵀ), Σ = I without calibration), so the
 * RMS is ≈ β/√rk for every token. down [latent, D]. roundStored rounds as kv_a_layernorm is stored, and
 * undo/constScale absorb that rounding.
 */
export function constantChannel(down: ArrayLike<number>, latent: number, D: number, cov: Float64Array | null, roundStored: (x: number) => number): ConstantChannel {
  const rk = latent + 1;
  let meanSq = 0;
  for (let r = 0; r < latent; r++) {
    const row = Float64Array.from({ length: D }, (_, c) => down[r * D + c]!);
    const rs = cov ? matmul(row, cov, 1, D, D) : row;
    for (let c = 0; c < D; c++) meanSq += rs[c]! * row[c]!;
  }
  let beta = 2 ** Math.ceil(Math.log2(4096 * Math.sqrt(Math.max(meanSq, 1e-12))));
  // A dtype of small range stores the largest power of two it holds (f16: 2^15; 2^16 is inf, and the
  // export was all NaN). Each halving quadruples the error ‖c‖²/2β², still far below f16's rounding.
  while (beta > 1 && !Number.isFinite(roundStored(beta))) beta /= 2;
  const gamma = roundStored(beta / Math.sqrt(rk));
  const kvNorm = new Float32Array(rk).fill(gamma);
  // The constant channel leaves the norm at ≈ 1, not β: fine-tuning moves its kv_b column by ~lr per
  // step, and times β that would swamp every key and value.
  kvNorm[latent] = roundStored(1 / Math.sqrt(rk));
  return { beta, kvNorm, undo: beta / (gamma * Math.sqrt(rk)), constScale: 1 / (kvNorm[latent]! * Math.sqrt(rk)) };
}

/** Rotate-half order of the rope dims → DeepSeek's interleaved order: (x_0, y_0, x_1, y_1, …). */
export function ropeRow(slot: number, y: boolean, m: number, interleave: boolean): number {
  return interleave ? 2 * slot + (y ? 1 : 0) : slot + (y ? m : 0);
}

export async function deepseekLayer(p: DeepseekLayerInput): Promise<DeepseekLayer> {
  const { heads: H, kvHeads: G, headDim: Dh, hidden: D, ladder: F, kvLoraRank: rk } = p;
  const half = Dh / 2;
  const m = F.length;
  const dr = 2 * m;
  const group = H / G;
  const latent = p.attentionBias ? rk - 1 : rk;
  const rows = 2 * G * Dh;
  if (latent < 1 || latent > Math.min(rows, D)) throw new MlaError("BAD_ARGUMENT", `kv_lora_rank ${rk} leaves ${latent} latent dims; this layer allows 1…${Math.min(rows, D)}${p.attentionBias ? " (+1 for the constant channel)" : ""}`, "choose another --rank or --kv-lora-rank");
  // The shared rope key rows (rotate-half order: x of slot k at k, y at k + m) and each head's
  // position-free key, which keeps what the top component does not carry.
  const kRope = new Float64Array(dr * D);
  const A = new Float64Array(rows * D);
  for (let r = 0; r < G * Dh; r++) for (let c = 0; c < D; c++) A[r * D + c] = p.wk[r * D + c]!;
  for (let r = 0; r < G * Dh; r++) for (let c = 0; c < D; c++) A[(G * Dh + r) * D + c] = p.wv[r * D + c]!;
  F.forEach((i, k) => {
    const U = p.pca.rotations[i]!;
    for (const [off, slot] of [[i, k], [i + half, k + m]] as const) {
      for (let h = 0; h < G; h++) {
        const u = U[h * G]!;
        for (let c = 0; c < D; c++) kRope[slot * D + c] += u * p.wk[(h * Dh + off) * D + c]!;
      }
      for (let h = 0; h < G; h++) {
        const u = U[h * G]!;
        for (let c = 0; c < D; c++) A[(h * Dh + off) * D + c] -= u * kRope[slot * D + c]!;
      }
    }
  });
  const cov = p.cov;
  const rowEnergy = cov ? (row: Float64Array) => matmul(row, cov, 1, D, D).reduce((e, v, c) => e + v * row[c]!, 0) : squaredNorm;
  const range = (a: number, n: number) => Array.from({ length: n }, (_, i) => a + i);
  const alpha = p.balance ? balanceFactor(A, range(0, G * Dh), A, range(G * Dh, G * Dh), D, rowEnergy) : 1;
  if (alpha !== 1) for (let i = 0; i < G * Dh * D; i++) A[i] = A[i]! / alpha;
  const f = p.whiten ? whitenedFactor(A, rows, D, latent, p.whiten) : await truncatedFactorAsync(A, rows, D, latent);

  // Without the constant channel kv_b keeps the factored scale (undo 1) and γ is fitted later.
  const { beta, kvNorm, undo } = p.attentionBias ? constantChannel(f.down, latent, D, p.cov, p.roundStored) : { beta: null, kvNorm: new Float32Array(rk).fill(1), undo: 1 };

  const kvA = new Float32Array((rk + dr) * D);
  kvA.set(Float32Array.from(f.down));
  for (let s = 0; s < m; s++)
    for (const y of [false, true]) kvA.set(Float32Array.from(kRope.subarray((s + (y ? m : 0)) * D, (s + (y ? m : 0) + 1) * D)), (rk + ropeRow(s, y, m, p.interleave)) * D);
  const kvABias = beta === null ? null : new Float32Array(rk + dr);
  if (kvABias && beta !== null) kvABias[latent] = beta;
  if (p.kBias) {
    if (!kvABias) throw new Error("deepseekLayer: a k bias needs the kv_a bias of attentionBias");
    // The rope key's bias, on the rows its weights take: Σ_h U_i[h,0]·b_{h,i} (x half, then y half).
    F.forEach((i, k) => {
      const U = p.pca.rotations[i]!;
      for (const [off, y] of [[i, false], [i + half, true]] as const) {
        let b = 0;
        for (let h = 0; h < G; h++) b += U[h * G]! * p.kBias![h * Dh + off]!;
        kvABias[rk + ropeRow(k, y, m, p.interleave)] = b;
      }
    });
  }

  // kv_b: per query head, its group's rows of the up-projection: Dh key rows, then Dh value rows.
  const kvB = new Float32Array(H * 2 * Dh * rk);
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / group);
    for (let part = 0; part < 2; part++)
      for (let d = 0; d < Dh; d++) {
        const src = part * G * Dh + g * Dh + d;
        const dst = (h * 2 * Dh + part * Dh + d) * rk;
        const s = undo * (part === 0 ? alpha : 1);
        for (let j = 0; j < latent; j++) kvB[dst + j] = f.up[src * latent + j]! * s;
      }
  }

  // q_proj: per head its Dh original rows (the position-free part), then its rope rows scaled by
  // U_i[g,0]; everything times √((Dh + dr)/Dh) so DeepSeek's (dn + dr)^−½ gives the original 1/√Dh.
  const qk = Dh + dr;
  const scale = Math.sqrt(qk / Dh);
  const qProj = new Float32Array(H * qk * D);
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / group);
    for (let d = 0; d < Dh; d++) for (let c = 0; c < D; c++) qProj[(h * qk + d) * D + c] = p.wq[(h * Dh + d) * D + c]! * scale;
    F.forEach((i, k) => {
      const u = p.pca.rotations[i]![g * G]! * scale;
      for (const [off, y] of [[i, false], [i + half, true]] as const) {
        const dst = (h * qk + Dh + ropeRow(k, y, m, p.interleave)) * D;
        for (let c = 0; c < D; c++) qProj[dst + c] = p.wq[(h * Dh + off) * D + c]! * u;
      }
    });
  }
  return { qProj, kvA, kvABias, kvNorm, kvB, energy: energyOf(f.sigma, latent), beta };
}

/**
 * o_proj's bias with a value bias folded in: b_o + W_o·[b_v of each query head's KV group] (a query's
 * softmax weights sum to 1, so its head's output carries b_v whole). wo [D, H·Dh]; bo [D] or null;
 * bv [Hkv·Dh] or null. Zeros when neither is given.
 */
export function foldValueBias(wo: Float32Array, bo: Float32Array | null, bv: Float32Array | null, heads: number, kvHeads: number, headDim: number, hidden: number): Float32Array {
  const HD = heads * headDim;
  const group = heads / kvHeads;
  const out = new Float32Array(hidden);
  for (let r = 0; r < hidden; r++) {
    let s = bo ? bo[r]! : 0;
    if (bv)
      for (let h = 0; h < heads; h++) {
        const g = Math.floor(h / group);
        for (let d = 0; d < headDim; d++) s += wo[r * HD + h * headDim + d]! * bv[g * headDim + d]!;
      }
    out[r] = s;
  }
  return out;
}
