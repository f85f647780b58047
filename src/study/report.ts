/**
 * The study's report: a Markdown table, the paper's claims checked point by point, and an HTML page
 * with both and the validation curves (inline SVG, no scripts).
 */
import { checkClaims, type ClaimCheck } from "./claims.js";
import { DECODE_BATCH, DECODE_CONTEXT, DECODE_STEPS } from "./decodeSpeed.js";
import type { StudyRow } from "./study.js";
import { percentChange } from "../util/percent.js";

export interface StudyMeta {
  like: string;
  /** Hidden size d of the shape (finds the r = d/2 and r = d rows for the claims). */
  hidden: number;
  /** The widest latent the mla-rope variant can have on the model (below `hidden` on a GQA model; absent in older study.json files). */
  mlaRopeWidest?: number;
  data: string;
  /** --tokens, the budget asked for each run. */
  tokens: number;
  /** What each run trained: --tokens rounded up to whole steps of batch × seq, as the trainer does (absent in older study.json files). */
  trainedTokens?: number;
  seq: number;
  batch: number;
  lr: number;
  seed: number;
  /** --device as given; for auto, the backend it picked after it, e.g. "auto (cuda)". */
  device: string;
  date: string;
}

/** A change in percent with its sign (+0.25%, -1.50%), as a reader compares it with zero. */
const signedPercent = (x: number, digits: number) => {
  const s = x.toFixed(digits);
  // A change that rounds to zero has no sign (not "+0.00%" or "-0.00%").
  return Number(s) === 0 ? `${(0).toFixed(digits)}%` : `${x > 0 ? "+" : ""}${s}%`;
};

function header(m: StudyMeta): string {
  const tokens = m.trainedTokens === undefined || m.trainedTokens === m.tokens ? `${m.tokens} tokens` : `${m.trainedTokens} tokens a run (--tokens ${m.tokens} rounded up to whole steps)`;
  return `Shape and tokenizer of \`${m.like}\`, trained from one seeded initialization (seed ${m.seed}) on \`${m.data}\`: ${tokens}, seq ${m.seq}, batch ${m.batch}, peak lr ${m.lr}, device ${m.device}; ${m.date.slice(0, 10)}. Decode tokens/s: ${DECODE_BATCH} sequences decoded together, each at a context of up to ${DECODE_CONTEXT} tokens (${DECODE_STEPS} steps), so the KV cache is what a step reads.`;
}

function tableRows(rows: readonly StudyRow[]): string[][] {
  const mha = rows.find((r) => r.variant === "mha");
  return rows.map((r) => [
    r.label,
    r.ropePairs === null ? "all" : String(r.ropePairs),
    (r.params / 1e6).toFixed(2) + "M",
    String(r.kvElemsPerToken),
    mha ? signedPercent(percentChange(mha.kvElemsPerToken, r.kvElemsPerToken), 1) : "",
    r.valNll.toFixed(4),
    mha ? signedPercent(percentChange(mha.valNll, r.valNll), 2) : "",
    r.trainTokensPerS.toFixed(0),
    r.decodeTokensPerS.toFixed(1),
  ]);
}

const CLAIM_COLUMNS = ["claim (arXiv 2506.09342)", "measured here", "verdict", "rule", "last quarter of training"];
const CLAIMS_NOTE = "The paper trains ~30M GPT models on TinyStories; its MLA + RoPE is its own form (ours: partial RoPE on R pairs per KV head and one joint latent), so a verdict says whether the effect shows on this data and shape, not whether the paper is right. A verdict on validation NLL is given only when the rule gives it at every validation point of the last quarter of training (at least 3): where it changes there, the run saw too few tokens for the difference to be settled (\"too few tokens to judge\"). Not measured: the noise of the seed (one run per variant) and of the validation sample (the same held-out tokens for every point and variant).";
const claimCells = (c: ClaimCheck) => [c.claim, c.measured, c.verdict, c.rule, c.lastQuarter ?? "—"];

const COLUMNS = ["variant", "RoPE pairs per KV head", "parameters", "KV elements per token", "KV vs MHA", "validation NLL", "NLL vs MHA", "train tokens/s", "decode tokens/s"];

export function studyMarkdown(m: StudyMeta, rows: readonly StudyRow[]): string {
  const lines = [`# Attention variants trained from scratch`, "", header(m), "", `| ${COLUMNS.join(" | ")} |`, `| ${COLUMNS.map(() => "---").join(" | ")} |`];
  for (const r of tableRows(rows)) lines.push(`| ${r.join(" | ")} |`);
  lines.push("", "## The claims of Mehta et al. (2025), point by point", "", CLAIMS_NOTE, "", `| ${CLAIM_COLUMNS.join(" | ")} |`, `| ${CLAIM_COLUMNS.map(() => "---").join(" | ")} |`);
  for (const c of checkClaims(rows, m.hidden, m.mlaRopeWidest)) lines.push(`| ${claimCells(c).join(" | ")} |`);
  lines.push("", "Validation NLL through training (step: NLL):", "");
  for (const r of rows) lines.push(`- ${r.label}: ${r.curve.map(([s, v]) => `${s}: ${v.toFixed(3)}`).join(", ")}`);
  return lines.join("\n") + "\n";
}

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];
const escape = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** Validation curves of every run on shared axes. */
function curvesSvg(rows: readonly StudyRow[]): string {
  const [W, H, pad] = [720, 360, 48];
  const pts = rows.flatMap((r) => r.curve);
  if (!pts.length) return "";
  const xMax = Math.max(...pts.map((p) => p[0]), 1);
  const ys = pts.map((p) => p[1]);
  const [yMin, yMax] = [Math.min(...ys), Math.max(...ys)];
  const x = (s: number) => pad + ((W - 2 * pad) * s) / xMax;
  const y = (v: number) => H - pad - ((H - 2 * pad) * (v - yMin)) / Math.max(yMax - yMin, 1e-9);
  const paths = rows.map((r, i) => `<polyline fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="2" points="${r.curve.map(([s, v]) => `${x(s).toFixed(1)},${y(v).toFixed(1)}`).join(" ")}"/>`);
  const legend = rows.map((r, i) => `<text x="${W - pad - 200}" y="${pad + 16 * i}" fill="${COLORS[i % COLORS.length]}" font-size="12">${escape(r.label)}</text>`);
  const axes = `<line x1="${pad}" y1="${H - pad}" x2="${W - pad}" y2="${H - pad}" stroke="#444"/><line x1="${pad}" y1="${pad}" x2="${pad}" y2="${H - pad}" stroke="#444"/>` + `<text x="${W / 2}" y="${H - 12}" font-size="12" text-anchor="middle">step</text><text x="12" y="${H / 2}" font-size="12" transform="rotate(-90 12 ${H / 2})" text-anchor="middle">validation NLL</text>` + `<text x="${pad - 4}" y="${y(yMax) + 4}" font-size="11" text-anchor="end">${yMax.toFixed(2)}</text><text x="${pad - 4}" y="${y(yMin) + 4}" font-size="11" text-anchor="end">${yMin.toFixed(2)}</text><text x="${x(xMax)}" y="${H - pad + 16}" font-size="11" text-anchor="middle">${xMax}</text>`;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" role="img" aria-label="validation curves">${axes}${paths.join("")}${legend.join("")}</svg>`;
}

export function studyHtml(m: StudyMeta, rows: readonly StudyRow[]): string {
  const htmlTable = (cols: string[], cells: string[][]) => `<table><thead><tr>${cols.map((c) => `<th>${escape(c)}</th>`).join("")}</tr></thead><tbody>${cells.map((r) => `<tr>${r.map((c) => `<td>${escape(c)}</td>`).join("")}</tr>`).join("")}</tbody></table>`;
  const table = htmlTable(COLUMNS, tableRows(rows));
  const claimsTable = htmlTable(CLAIM_COLUMNS, checkClaims(rows, m.hidden, m.mlaRopeWidest).map(claimCells));
  return `<!doctype html><html><head><meta charset="utf-8"><title>mha2mla study</title><style>body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}</style></head><body><h1>Attention variants trained from scratch</h1><p>${escape(header(m))}</p>${table}<h2>The claims of Mehta et al. (2025), point by point</h2><p>${escape(CLAIMS_NOTE)}</p>${claimsTable}<h2>Validation NLL</h2>${curvesSvg(rows)}</body></html>\n`;
}
