/**
 * The small-model MLA paper's claims (Mehta et al. 2025, arXiv 2506.09342, abstract v2), each checked
 * against a study's rows with a stated rule, so the report says point by point which hold here.
 * The paper trains ~30M GPT models on TinyStories; a study on other data (and our MLA form: partial
 * RoPE on R pairs per KV head, one joint latent) can differ for reasons the verdict cannot tell, so
 * every line shows the measured number beside the claimed one.
 */
import type { StudyRow } from "./study.js";
import { percentChange } from "../util/percent.js";

export type Verdict = "holds" | "does not hold" | "too few tokens to judge" | "not measured";

export interface ClaimCheck {
  claim: string;
  measured: string;
  /**
   * "holds", "does not hold", "too few tokens to judge" (a claim on validation NLL whose verdict the
   * run's last quarter does not settle: see judged), or "not measured" (the study lacks the rows
   * the claim needs).
   */
  verdict: Verdict;
  rule: string;
  /** For a claim on validation NLL: what the last quarter of training says of the verdict (absent: a claim on KV size or speed). */
  lastQuarter?: string;
}

/**
 * When a verdict on validation NLL is given. Every variant is trained on the same tokens in the same
 * order with the same schedule and is validated on the same held-out tokens at the same steps, so its
 * curve points differ from each other only by training. A difference between variants means something
 * once more training no longer changes which side of the rule it is on: the rule must give the final
 * verdict at every curve point of the last quarter of the run (LATE: the study's default --eval-every
 * puts about 5 of its 20 points there, and the schedule's decay phase, the last 20% of steps, lies
 * inside it). Where the verdict changes there, a budget up to a quarter smaller would have said
 * otherwise: the run saw too few tokens for the difference to be settled. At least MIN_POINTS points
 * are needed to see that (the default --eval-every gives them from 8 steps on: a run of fewer, under
 * 8·seq·batch tokens, 32k at the defaults, is too short to judge any loss claim). On the study of docs/benchmarks.md
 * (20M tokens, 26M parameters) every verdict is settled this way; on a few-step run near the
 * initialization the verdicts are not.
 * Not covered: the sampling noise of the validation tokens (the same at every point; perplexity
 * reports a mean NLL, no per-window values to form a standard error from) and of the seed (one run
 * per variant), which the report says.
 */
const LATE = 0.75;
const MIN_POINTS = 3;

/** A claim's rule on validation NLL: whether it holds when each row's NLL is `nll(row)`. */
type NllRule = (nll: (r: StudyRow) => number) => boolean;

/** The verdict `rule` gives `rows` at the end, kept only when their last quarter of training settles it. */
function judged(rows: readonly StudyRow[], rule: NllRule): { verdict: Verdict; lastQuarter: string } {
  const final = rule((r) => r.valNll);
  const verdict = final ? "holds" : "does not hold";
  const curves = new Map(rows.map((r) => [r, new Map(r.curve)]));
  const end = Math.max(...rows.map((r) => r.curve[r.curve.length - 1]?.[0] ?? 0));
  // The steps every row was validated at, in the last quarter (the rows share --eval-every).
  const steps = [...new Map(rows[0]!.curve).keys()].filter((s) => s >= LATE * end && rows.every((r) => curves.get(r)!.has(s))).sort((a, b) => a - b);
  if (steps.length < MIN_POINTS)
    return { verdict: "too few tokens to judge", lastQuarter: `${steps.length} validation point${steps.length === 1 ? "" : "s"} there: ${MIN_POINTS} are needed to tell whether more training changes the verdict (more steps, or a smaller --eval-every)` };
  const span = `steps ${steps[0]}–${steps[steps.length - 1]}`;
  const other = steps.filter((s) => rule((r) => curves.get(r)!.get(s)!) !== final);
  if (other.length) return { verdict: "too few tokens to judge", lastQuarter: `${final ? "does not hold" : "holds"} at step${other.length === 1 ? "" : "s"} ${other.join(", ")} of the ${steps.length} points (${span}): not settled` };
  return { verdict, lastQuarter: `${verdict} at all ${steps.length} points (${span})` };
}

const pct = (x: number) => `${x >= 0 ? "+" : ""}${x.toFixed(2)}%`;
const rel = (a: number, b: number) => percentChange(b, a);

/**
 * rows: the finished variants (MHA and MLA variants at latent widths); hidden: the model's hidden size
 * d, so the rows at r = d/2 and r = d (full rank) can be found; mlaRopeWidest: the widest latent the
 * mla-rope variant can have on the model (default d), below d on a GQA model, where the claim against
 * r = d is not measurable.
 */
export function checkClaims(rows: readonly StudyRow[], hidden: number, mlaRopeWidest = hidden): ClaimCheck[] {
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
    out.push({ claim, measured: pct(d), rule, ...judged([ropeHalf, mha], (nll) => Math.abs(rel(nll(ropeHalf), nll(mha))) <= 1) });
  } else out.push(none(claim, rule, "the mha and mla-rope variants with d/2 in --ranks"));

  claim = "without RoPE, MLA is 3–5% worse than MHA";
  rule = "holds when MLA without RoPE (r = d/2) is 1.5–10% worse than MHA (the sign and the order of magnitude)";
  if (mha && plainHalf) {
    const d = rel(plainHalf.valNll, mha.valNll);
    const worse = (x: number) => x >= 1.5 && x <= 10;
    out.push({ claim, measured: pct(d), rule, ...judged([plainHalf, mha], (nll) => worse(rel(nll(plainHalf), nll(mha)))) });
  } else out.push(none(claim, rule, "the mha and mla variants with d/2 in --ranks"));

  claim = "with RoPE, MLA surpasses MHA by 2%";
  rule = "holds when some MLA + RoPE row has a lower validation NLL than MHA";
  const ropes = rows.filter((r) => r.variant === "mla-rope");
  if (mha && ropes.length) {
    const best = ropes.reduce((a, b) => (b.valNll < a.valNll ? b : a));
    const d = rel(best.valNll, mha.valNll);
    out.push({ claim, measured: `${pct(d)} (best: ${best.label})`, rule, ...judged([...ropes, mha], (nll) => ropes.some((r) => nll(r) < nll(mha))) });
  } else out.push(none(claim, rule, "the mha and mla-rope variants"));

  claim = "RoPE is what makes MLA work (MLA + RoPE beats MLA at the same latent width)";
  rule = "holds when MLA + RoPE has the lower validation NLL at every latent width both ran";
  const pairs = rows.filter((r) => r.variant === "mla").map((p) => [p, at("mla-rope", p.latentDim!)] as const).filter((x): x is readonly [StudyRow, StudyRow] => !!x[1]);
  if (pairs.length) {
    const deltas = pairs.map(([p, r]) => `latent ${p.latentDim}: ${pct(rel(r.valNll, p.valNll))}`);
    out.push({ claim, measured: deltas.join("; "), rule, ...judged(pairs.flat(), (nll) => pairs.every(([p, r]) => nll(r) < nll(p))) });
  } else out.push(none(claim, rule, "the mla and mla-rope variants at a common latent width"));

  claim = "r = d/2 decodes 1.4× faster than full-rank MLA (r = d)";
  rule = "holds when MLA + RoPE at d/2 decodes at least 1.2× faster than at d";
  if (ropeHalf && ropeFull) {
    const x = ropeHalf.decodeTokensPerS / ropeFull.decodeTokensPerS;
    out.push({ claim, measured: `${x.toFixed(2)}× (${ropeHalf.decodeTokensPerS.toFixed(0)} vs ${ropeFull.decodeTokensPerS.toFixed(0)} tokens/s)`, verdict: x >= 1.2 ? "holds" : "does not hold", rule });
  } else if (mlaRopeWidest < hidden) {
    out.push({ claim, measured: `not measurable on this model: MLA + RoPE cannot have r = d (${hidden}) here, at most ${mlaRopeWidest} beside its rope keys (a GQA model's keys and values do not fit one full-rank latent)`, verdict: "not measured", rule });
  } else out.push(none(claim, rule, "the mla-rope variant with d and d/2 in --ranks"));
  return out;
}
