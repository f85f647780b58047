/**
 * The small-model MLA paper's claims (Mehta et al. 2025, arXiv 2506.09342, abstract v2), each checked
 * against a study's rows with a stated rule, so the report says point by point which hold here.
 * The paper trains ~30M GPT models on TinyStories; a study on other data (and our MLA form: partial
 * RoPE on R pairs per KV head, one joint latent) can differ for reasons the verdict cannot tell, so
 * every line shows the measured number beside the claimed one.
 */
import type { StudyRow } from "./study.js";

export interface ClaimCheck {
  claim: string;
  measured: string;
  /** "holds", "does not hold", or "not measured" (the study lacks the rows the claim needs). */
  verdict: "holds" | "does not hold" | "not measured";
  rule: string;
}

const pct = (x: number) => `${x >= 0 ? "+" : ""}${x.toFixed(2)}%`;
const rel = (a: number, b: number) => (100 * (a - b)) / b;

/**
 * rows: the finished variants (MHA and MLA variants at latent widths); hidden: the model's hidden size
 * d, so the rows at r = d/2 and r = d (full rank) can be found.
 */
export function checkClaims(rows: readonly StudyRow[], hidden: number): ClaimCheck[] {
  const mha = rows.find((r) => r.variant === "mha");
  const at = (variant: StudyRow["variant"], L: number) => rows.find((r) => r.variant === variant && r.latentDim === L);
  const half = hidden / 2;
  const ropeHalf = at("mla-rope", half), plainHalf = at("mla", half), ropeFull = at("mla-rope", hidden);
  const none = (claim: string, rule: string, needs: string): ClaimCheck => ({ claim, measured: `needs ${needs}`, verdict: "not measured", rule });
  const out: ClaimCheck[] = [];

  let claim = "MLA + RoPE at r = d/2 cuts the KV cache by 45% against MHA";
  let rule = "holds when the measured reduction is at least 45%";
  if (mha && ropeHalf) {
    const cut = -rel(ropeHalf.kvElemsPerToken, mha.kvElemsPerToken);
    out.push({ claim, measured: `${cut.toFixed(1)}% (${ropeHalf.kvElemsPerToken} vs ${mha.kvElemsPerToken} elements per token)`, verdict: cut >= 45 ? "holds" : "does not hold", rule });
  } else out.push(none(claim, rule, "the mha and mla-rope variants with d/2 in --ranks"));

  claim = "MLA + RoPE at r = d/2 costs +0.3% validation loss against MHA (essentially matching it)";
  rule = "holds when the validation NLL is within ±1% of MHA's";
  if (mha && ropeHalf) {
    const d = rel(ropeHalf.valNll, mha.valNll);
    out.push({ claim, measured: pct(d), verdict: Math.abs(d) <= 1 ? "holds" : "does not hold", rule });
  } else out.push(none(claim, rule, "the mha and mla-rope variants with d/2 in --ranks"));

  claim = "without RoPE, MLA is 3–5% worse than MHA";
  rule = "holds when MLA without RoPE (r = d/2) is 1.5–10% worse than MHA (the sign and the order of magnitude)";
  if (mha && plainHalf) {
    const d = rel(plainHalf.valNll, mha.valNll);
    out.push({ claim, measured: pct(d), verdict: d >= 1.5 && d <= 10 ? "holds" : "does not hold", rule });
  } else out.push(none(claim, rule, "the mha and mla variants with d/2 in --ranks"));

  claim = "with RoPE, MLA surpasses MHA by 2%";
  rule = "holds when some MLA + RoPE row has a lower validation NLL than MHA";
  const ropes = rows.filter((r) => r.variant === "mla-rope");
  if (mha && ropes.length) {
    const best = ropes.reduce((a, b) => (b.valNll < a.valNll ? b : a));
    const d = rel(best.valNll, mha.valNll);
    out.push({ claim, measured: `${pct(d)} (best: ${best.label})`, verdict: d < 0 ? "holds" : "does not hold", rule });
  } else out.push(none(claim, rule, "the mha and mla-rope variants"));

  claim = "RoPE is what makes MLA work (MLA + RoPE beats MLA at the same latent width)";
  rule = "holds when MLA + RoPE has the lower validation NLL at every latent width both ran";
  const pairs = rows.filter((r) => r.variant === "mla").map((p) => [p, at("mla-rope", p.latentDim!)] as const).filter((x): x is readonly [StudyRow, StudyRow] => !!x[1]);
  if (pairs.length) {
    const deltas = pairs.map(([p, r]) => `latent ${p.latentDim}: ${pct(rel(r.valNll, p.valNll))}`);
    out.push({ claim, measured: deltas.join("; "), verdict: pairs.every(([p, r]) => r.valNll < p.valNll) ? "holds" : "does not hold", rule });
  } else out.push(none(claim, rule, "the mla and mla-rope variants at a common latent width"));

  claim = "r = d/2 decodes 1.4× faster than full-rank MLA (r = d)";
  rule = "holds when MLA + RoPE at d/2 decodes at least 1.2× faster than at d";
  if (ropeHalf && ropeFull) {
    const x = ropeHalf.decodeTokensPerS / ropeFull.decodeTokensPerS;
    out.push({ claim, measured: `${x.toFixed(2)}× (${ropeHalf.decodeTokensPerS.toFixed(0)} vs ${ropeFull.decodeTokensPerS.toFixed(0)} tokens/s)`, verdict: x >= 1.2 ? "holds" : "does not hold", rule });
  } else out.push(none(claim, rule, "the mla-rope variant with d and d/2 in --ranks"));
  return out;
}
