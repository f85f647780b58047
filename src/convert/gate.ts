/**
 * EG-MLA's gate at conversion time. Each layer's latent c of a token with id t becomes
 * SiLU(W·e_t + b) ⊙ c, e_t a row of the layer's gate table. Starting with W = 0 and every b at the
 * SiLU's unit point (b·σ(b) = 1) makes the gate 1 for every token: the converted model equals the
 * plain MLA conversion, and fine-tuning starts from MHA2MLA's point. At that point SiLU's slope is
 * also 1, so W's first gradients are those of a plain multiplicative gate. The table is random (it
 * cannot start at zero: W's gradient is the table row times the latent's), seeded per layer.
 */
import { Rng } from "../finetune/rng.js";

/** b with b·σ(b) = 1 (Newton's method in float64): ≈ 1.27846. */
export const SILU_UNIT_POINT = (() => {
  let b = 1.25;
  for (let i = 0; i < 50; i++) {
    const s = 1 / (1 + Math.exp(-b));
    b -= (b * s - 1) / (s + b * s * (1 - s));
  }
  return b;
})();

/** The gate tensors of `layer` as written by `convert --attention eg-mla`: table [V, E], projection [L, E] (zeros), bias [L]. */
export function initialGate(layer: number, vocab: number, gateDim: number, latentDim: number): { embed: Float32Array; proj: Float32Array; bias: Float32Array } {
  const rng = new Rng(0x9e3779b9 ^ (layer * 7919));
  // Unit variance entries: uniform on ±√3.
  const embed = Float32Array.from({ length: vocab * gateDim }, () => (2 * rng.next() - 1) * Math.sqrt(3));
  return { embed, proj: new Float32Array(latentDim * gateDim), bias: new Float32Array(latentDim).fill(SILU_UNIT_POINT) };
}
