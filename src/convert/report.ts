/** The before/after conversion report (report.json + report.md in the output folder). */
import type { DType } from "../io/dtype.js";
import type { EvalResult } from "../eval/evaluate.js";
import type { ConversionPlan, RecordedSettings } from "./plan.js";
import type { MlaSplit } from "../model/config.js";
import { percentChange } from "../util/percent.js";
import { countOf } from "../util/counts.js";

export interface ConversionReport {
  source: string;
  output: string;
  /** What the conversion used: no calibration text or windows where none was read (RecordedSettings). */
  settings: RecordedSettings;
  text: string;
  ctx: number;
  tokens: number;
  before: { nll: number; ppl: number; kv_elems_per_token: number; kv_bytes_per_token: number; params: number };
  after: { nll: number; ppl: number; kv_elems_per_token: number; kv_bytes_per_token: number; params: number };
  nll_delta: number;
  ppl_change_percent: number;
  kv_change_percent: number;
  kv_dtype: string;
  retained_energy_mean: number;
  /** --kv-split per-layer: each layer's chosen rope pairs and rank (absent for a uniform conversion). */
  kv_split?: { rope_pairs: number; rank: number }[];
  timings: Record<string, number>;
}

export function buildReport(source: string, output: string, plan: ConversionPlan, energy: number[], before: EvalResult, after: EvalResult, timings: Record<string, number>, kvDtype: DType, params: { before: number; after: number }, splits: MlaSplit[]): ConversionReport {
  return {
    source,
    output,
    settings: plan.settings,
    text: before.text!,
    ctx: before.ctx!,
    tokens: before.tokens!,
    before: { nll: before.nll!, ppl: before.ppl!, kv_elems_per_token: plan.before.elems_per_token, kv_bytes_per_token: plan.before.bytes_per_token, params: params.before },
    after: { nll: after.nll!, ppl: after.ppl!, kv_elems_per_token: plan.after.elems_per_token, kv_bytes_per_token: plan.after.bytes_per_token, params: params.after },
    nll_delta: after.nll! - before.nll!,
    ppl_change_percent: percentChange(before.ppl!, after.ppl!),
    kv_change_percent: plan.kvChangePercent,
    kv_dtype: kvDtype.toLowerCase(),
    retained_energy_mean: energy.reduce((a, x) => a + x, 0) / Math.max(energy.length, 1),
    ...(plan.settings.kvSplit === "per-layer" ? { kv_split: splits.map((x) => ({ rope_pairs: x.ropePairs, rank: x.rank })) } : {}),
    timings,
  };
}

const pct = (x: number) => `${x >= 0 ? "+" : "−"}${Math.abs(x).toFixed(2)}%`;

/** Every setting that changes the converted model, so reports of different conversions read differently. */
function settingsLine(s: ConversionReport["settings"]): string {
  const parts = [
    ...(s.gateDim > 0 ? [`EG-MLA gate of ${s.gateDim} dims per token`] : []),
    `rank ${s.rank} per KV head`,
    `${countOf(s.ropePairs, "RoPE pair")} (${s.ropeStrategy}${s.ropeDisjoint ? ", disjoint across KV heads" : ""})`,
    `SVD ${s.svd} (${s.svdInit}${s.svd === "joint" && !s.balanceKv ? ", K/V not balanced" : ""})`,
    ...(s.refitOutput ? ["o_proj refit on the calibration text"] : []),
    ...(s.calib ? [`calibration ${s.calib}`] : []),
  ];
  return parts.join(", ");
}

export function reportMarkdown(r: ConversionReport): string {
  const s = r.settings;
  return `# MHA → MLA conversion report

Source: \`${r.source}\` → \`${r.output}\`

Settings: ${settingsLine(s)}${r.kv_split ? `

Split of that budget chosen per layer (R, rank): ${r.kv_split.map((x) => `${x.rope_pairs}, ${x.rank}`).join(" | ")}` : ""}

Perplexity on \`${r.text}\` (first ${r.tokens} tokens, ctx ${r.ctx}, no fine-tuning yet):

| | before | after | change |
| --- | --- | --- | --- |
| NLL (nats/token) | ${r.before.nll.toFixed(4)} | ${r.after.nll.toFixed(4)} | ${r.nll_delta >= 0 ? "+" : "−"}${Math.abs(r.nll_delta).toFixed(4)} |
| perplexity | ${r.before.ppl.toFixed(3)} | ${r.after.ppl.toFixed(3)} | ${pct(r.ppl_change_percent)} |
| KV elements / token | ${r.before.kv_elems_per_token} | ${r.after.kv_elems_per_token} | ${pct(r.kv_change_percent)} |
| KV bytes / token (${r.kv_dtype}) | ${r.before.kv_bytes_per_token} | ${r.after.kv_bytes_per_token} | ${pct(r.kv_change_percent)} |
| parameters | ${r.before.params} | ${r.after.params} | ${pct(percentChange(r.before.params, r.after.params))} |

Retained singular-value energy (mean over layers): ${(100 * r.retained_energy_mean).toFixed(2)}%

Timings: ${Object.entries(r.timings).map(([k, v]) => `${k.replace(/_s$/, "")} ${v.toFixed(2)} s`).join(", ")}
`;
}
