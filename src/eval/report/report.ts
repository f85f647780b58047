/**
 * `report`: eval JSONs (before/after conversion, after fine-tuning …) side by side, as one
 * self-contained HTML file (inline SVG charts, no scripts, no network) and a Markdown twin holding
 * the same numbers, formatted by the same function.
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError, ioError } from "../../errors.js";
import { specialFileKind, writeFileAtomic } from "../../io/atomicDir.js";
import type { EvalResult } from "../evaluate.js";
import { barChart, color, esc, lineChart } from "./charts.js";
import { checkEvalResult, readEvalJson } from "./evalJson.js";
import { bitsPerByteVsFirst, itemsVsFirst, measuredOnText, perplexityBasis, perplexityGroups, perplexityVsFirst, type VsFirst } from "./comparable.js";
import { checkOptionTypes } from "../../util/optionTypes.js";
import { makeDirs } from "../../io/makeDirs.js";
import { decodeText } from "../../io/text.js";
import { percentChange } from "../../util/percent.js";
import { countOf } from "../../util/counts.js";

export { readEvalJson };

/** The reports' title: the Markdown's first line and the HTML's <title>, by which an earlier report is known (isEarlierReport). */
const REPORT_TITLE = "mha2mla evaluation report";

export interface TrainLog {
  label: string;
  rows: { step: number; loss?: number; val_nll?: number | null }[];
}

interface Row {
  metric: string;
  values: (number | null)[];
  errors?: (number | null)[];
  digits: number;
  /** Show the change from the first run, in absolute units or percent. */
  delta: "abs" | "pct" | null;
  /** Per run, how its number compares with the first run's (comparable.ts): no change is shown from a first run measured on other data or tokens. */
  vsFirst?: VsFirst[];
}

function isJsonDocument(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

export function readTrainLog(file: string, label: string): TrainLog {
  const logBeside = path.join(path.dirname(file), "train_log.jsonl");
  const hint = `pass the train_log.jsonl written by \`mha2mla finetune\`${fs.existsSync(logBeside) && path.resolve(logBeside) !== path.resolve(file) ? `: ${logBeside}` : ""}`;
  let text: string;
  try {
    // Binary data is refused by its first bytes (its lines' parse errors said only "not valid JSON").
    text = decodeText(fs.readFileSync(file), file, hint);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EISDIR") throw new MlaError("BAD_ARGUMENT", `--train-log ${file} is a folder, not a training log`, `pass the log file itself, e.g. --train-log ${path.join(file, "train_log.jsonl")}`);
    throw ioError("cannot read", file, e);
  }
  const lines = text.split("\n");
  // A whole JSON document over several lines (the run's finetune.json, an eval result) is not a log of rows.
  if (lines.filter((l) => l.trim()).length > 1 && isJsonDocument(text)) throw new MlaError("BAD_ARGUMENT", `${file} is one JSON document, not a training log (one JSON row per line)`, hint);
  const rows = lines
    .map((l, i) => [l, i] as const)
    .filter(([l]) => l.trim())
    .map(([l, i]) => {
      let row: unknown;
      try {
        row = JSON.parse(l);
      } catch {
        throw new MlaError("BAD_ARGUMENT", `${file}:${i + 1}: not valid JSON`, hint);
      }
      if (typeof row !== "object" || row === null || Array.isArray(row) || typeof (row as { step?: unknown }).step !== "number")
        throw new MlaError("BAD_ARGUMENT", `${file}:${i + 1}: not a training-log row (an object with a "step")`, hint);
      return row as TrainLog["rows"][number];
    });
  if (!rows.length) throw new MlaError("BAD_ARGUMENT", `${file}: holds no training-log rows`, "pass the train_log.jsonl of a fine-tune that ran at least one step");
  return { label, rows };
}

function rows(runs: EvalResult[]): Row[] {
  const out: Row[] = [];
  const v = (f: (r: EvalResult) => number | undefined | null) => runs.map((r) => f(r) ?? null);
  if (runs.some((r) => r.ppl !== undefined)) {
    const vsFirst = perplexityVsFirst(runs);
    out.push({ metric: "perplexity", values: v((r) => r.ppl), digits: 3, delta: "pct", vsFirst });
    out.push({ metric: "NLL (nats/token)", values: v((r) => r.nll), digits: 4, delta: "abs", vsFirst });
  }
  // Older JSONs have no bits per byte: the row is shown where a run has it.
  if (runs.some((r) => r.bits_per_byte !== undefined)) out.push({ metric: "bits / byte", values: v((r) => r.bits_per_byte), digits: 4, delta: "abs", vsFirst: bitsPerByteVsFirst(runs) });
  const tasks = [...new Set(runs.flatMap((r) => Object.keys(r.tasks ?? {})))];
  for (const t of tasks) {
    const vsFirst = itemsVsFirst(runs, t);
    out.push({ metric: `${t} acc`, values: v((r) => r.tasks?.[t]?.acc), errors: v((r) => r.tasks?.[t]?.acc_stderr), digits: 4, delta: "abs", vsFirst });
    if (runs.some((r) => r.tasks?.[t]?.acc_norm !== undefined)) out.push({ metric: `${t} acc_norm`, values: v((r) => r.tasks?.[t]?.acc_norm), errors: v((r) => r.tasks?.[t]?.acc_norm_stderr), digits: 4, delta: "abs", vsFirst });
    if (runs.some((r) => r.tasks?.[t]?.ppl !== undefined)) out.push({ metric: `${t} ppl`, values: v((r) => r.tasks?.[t]?.ppl), digits: 2, delta: "pct", vsFirst });
    out.push({ metric: `${t} items scored`, values: v((r) => r.tasks?.[t]?.n), digits: 0, delta: null });
  }
  out.push({ metric: "KV elements / token", values: v((r) => r.kv_elems_per_token), digits: 0, delta: "pct" });
  // In the cache the run used (eval --kv-cache), where it chose one.
  out.push({ metric: "KV bytes / token", values: v((r) => r.kv_cache?.bytes_per_token ?? r.kv_bytes_per_token), digits: 0, delta: "pct" });
  out.push({ metric: "parameters", values: v((r) => r.params), digits: 0, delta: "pct" });
  return out;
}

/** "value ± err (Δ)" — the one formatter both the HTML and the Markdown use. */
function cell(row: Row, i: number): string {
  const x = row.values[i];
  if (x === null || x === undefined) return "–";
  let s = x.toFixed(row.digits);
  const e = row.errors?.[i];
  // A stderr of 0 (every item right, or every one wrong) is shown as one, not left out.
  if (e !== null && e !== undefined) s += ` ± ${e.toFixed(row.digits)}`;
  const base = row.values[0];
  if (i === 0 || base === null || base === undefined) return s;
  // Runs measured on other data (another text or ctx, fewer items) or tokens are not a change of the model.
  const vs = row.vsFirst?.[i];
  if (vs?.notComparable) return `${s} (${vs.notComparable}; not comparable)`;
  const caveat = vs?.unknown ? `; ${vs.unknown}` : "";
  if (row.delta === "abs") s += ` (${x - base >= 0 ? "+" : "−"}${Math.abs(x - base).toFixed(row.digits)}${caveat})`;
  else if (row.delta === "pct" && base !== 0) s += ` (${x >= base ? "+" : "−"}${Math.abs(percentChange(base, x)).toFixed(2)}%${caveat})`;
  return s;
}

function settings(r: EvalResult): string {
  const cache = r.kv_cache?.dtype ? `; KV cache ${r.kv_cache.dtype}` : "";
  const c = r.conversion as Record<string, unknown> | null | undefined;
  if (!c) return `${r.attention.toUpperCase()} (original)${cache}`;
  // Each part only where the record has it (an older version's, or a hand-written one, lacks some).
  const has = (k: string) => c[k] !== undefined && c[k] !== null;
  const parts = (list: [string, string][]) => list.filter(([k]) => has(k)).map(([, text]) => text).join(", ");
  if (c["format"] === "deepseek_v3") return `DeepSeek-V3 MLA: ${parts([["kv_lora_rank", `kv_lora_rank ${c["kv_lora_rank"]}`], ["qk_rope_head_dim", `shared rope key ${c["qk_rope_head_dim"]} dims`]]) || "no settings recorded"}${cache}`;
  // A per-layer conversion (--kv-split per-layer) lists one value per layer.
  const perLayer = (v: unknown) => (Array.isArray(v) ? `[${v.join(", ")}] per layer` : String(v));
  const kind = c["gate_dim"] ? `EG-MLA (gate ${c["gate_dim"]} dims per token)` : "MLA";
  const strategy = [has("rope_strategy") ? String(c["rope_strategy"]) : "", c["rope_disjoint"] ? "disjoint across KV heads" : ""].filter(Boolean).join(", ");
  const recorded = parts([
    ["rank", `rank ${perLayer(c["rank"])}`],
    ["rope_pairs", `${Array.isArray(c["rope_pairs"]) ? `${perLayer(c["rope_pairs"])} RoPE pairs` : countOf(Number(c["rope_pairs"]), "RoPE pair")}${strategy ? ` (${strategy})` : ""}`],
    ["svd", `SVD ${c["svd"]}${has("svd_init") ? ` (${c["svd_init"]})` : ""}`],
    ["latent_dim", `latent ${perLayer(c["latent_dim"])}`],
  ]);
  return `${kind}: ${recorded || "no settings recorded"}${cache}`;
}

/** The model's config hash, where the run recorded it. */
const configOf = (r: EvalResult) => (r.config_hash ? `; config ${r.config_hash}` : "");

/** What a run read (the Models list of both formats). */
function measuredOn(r: EvalResult): string {
  return `; ${r.backend}, ${r.seconds.toFixed(1)} s${measuredOnText(r)}`;
}

/** What the report compares, under the table. */
const COMPARED = "Perplexity and NLL are compared only between runs on the same text, token count, ctx and tokenizer (NLL per token of another vocabulary is another quantity); bits per byte between runs on the same bytes of the same text and ctx, whatever their tokenizers.";

/** Text on one Markdown line: a line break (a --label may hold one) would end a list item, heading or table row. */
const mdLine = (s: string) => s.replace(/\r\n?|\n/g, " ");
/** A Markdown table cell: also a "|" would end it. */
const mdCell = (s: string) => mdLine(s).replace(/\|/g, "\\|");

/** The steps of a training log that logged a loss, and those that logged a validation NLL (null where the run kept no validation text). */
function curves(l: TrainLog): { loss: [number, number][]; val: [number, number][] } {
  const at = (key: "loss" | "val_nll") => l.rows.flatMap((x) => (typeof x[key] === "number" ? [[x.step, x[key]] as [number, number]] : []));
  return { loss: at("loss"), val: at("val_nll") };
}

/** The runs as given, each checked (a script's objects too; checkEvalResult), `label` defaulted to `model`. */
const checkedRuns = (runs: readonly unknown[]): EvalResult[] => {
  if (!Array.isArray(runs) || runs.length === 0) throw new MlaError("BAD_ARGUMENT", "no eval results given", "pass the results of evaluate() (or eval JSON files to writeReport)");
  return runs.map((r, i) => checkEvalResult(r, `runs[${i}]`));
};

export function reportMarkdown(given: EvalResult[], logs: TrainLog[] = []): string {
  const runs = checkedRuns(given);
  const rs = rows(runs);
  const lines = [
    `# ${REPORT_TITLE}`,
    "",
    `| metric | ${runs.map((r) => mdCell(r.label)).join(" | ")} |`,
    `| --- | ${runs.map(() => "---").join(" | ")} |`,
    ...rs.map((row) => `| ${mdCell(row.metric)} | ${runs.map((_, i) => mdCell(cell(row, i))).join(" | ")} |`),
    "",
    `Changes in parentheses are relative to the first column. ${COMPARED}`,
    "",
    "## Models",
    "",
    ...runs.map((r) => `- **${mdLine(r.label)}**: ${r.dir ? `\`${r.dir}\`` : "–"} — ${settings(r)}${configOf(r)}${measuredOn(r)}`),
  ];
  for (const l of logs) {
    const { loss, val } = curves(l);
    lines.push("", `## Fine-tuning: ${mdLine(l.label)}`, "", `${loss.length} steps; loss ${loss[0]?.[1].toFixed(4) ?? "–"} → ${loss[loss.length - 1]?.[1].toFixed(4) ?? "–"}; validation NLL ${val.map(([step, nll]) => `${nll.toFixed(4)} (step ${step})`).join(", ") || "–"}`);
  }
  return lines.join("\n") + "\n";
}

/**
 * The perplexity bars: one chart when every run is comparable with the first, else one chart per
 * group of comparable runs, each on its own scale and titled by what it was measured on, with a note
 * under them. Bars of another tokenizer or text side by side on one scale read as a change of the
 * model, which the table says they are not.
 */
function perplexityCharts(runs: EvalResult[], ppl: Row): string[] {
  const has = (i: number) => ppl.values[i] !== null && ppl.values[i] !== undefined;
  const groups = perplexityGroups(runs)
    .map((g) => g.filter(has))
    .filter((g) => g.length);
  if (groups.length <= 1) return [barChart("Perplexity (lower is better)", ["perplexity"], runs.map((r) => r.label), runs.map((_, s) => [ppl.values[s] ?? null]), { yLabel: "ppl", width: 480 })];
  const titles = groups.map((g) => perplexityBasis(runs[g[0]!]!));
  // Two texts of one name (other content) have one basis: told apart by their group's number.
  const shown = titles.map((t, k) => (titles.indexOf(t) !== k || titles.lastIndexOf(t) !== k ? `${t} (group ${k + 1})` : t));
  const charts = groups.map((g, k) => barChart(`Perplexity (lower is better): ${shown[k]}`, ["perplexity"], g.map((i) => runs[i]!.label), g.map((i) => [ppl.values[i]!]), { yLabel: "ppl", width: 720, colorOf: (s) => color(g[s]!) }));
  const note = `<p class="note">Perplexity is charted in ${groups.length} groups, each on its own scale: runs in different charts were measured on another text, token count, ctx or tokenizer, so their perplexities are not comparable (the table marks them). Bits / byte compares runs on the same bytes of a text whatever their tokenizers.</p>`;
  return [...charts, note];
}

/**
 * The note under the accuracy chart where some run scored another number of a task's items than the
 * first run (--limit, another data folder): its bars stand beside the others but are not a change of
 * the model (the table marks those cells); null when every task's runs scored the same items.
 */
function accuracyNote(runs: EvalResult[]): string | null {
  const tasks = [...new Set(runs.flatMap((r) => Object.keys(r.tasks ?? {})))];
  const differing = tasks.flatMap((task) => {
    const vs = itemsVsFirst(runs, task);
    const items = (n: number | undefined) => (n === undefined ? "no items" : countOf(n, "item"));
    const others = runs.filter((_, i) => vs[i]!.notComparable !== null).map((r) => `${r.label} (${items(r.tasks?.[task]?.n)})`);
    return others.length ? [`${task}: ${others.join(", ")} against ${runs[0]!.tasks?.[task]?.n ?? "no"} for ${runs[0]!.label}`] : [];
  });
  if (!differing.length) return null;
  return `<p class="note">Not comparable with the first run's bars, scored on other items: ${esc(differing.join("; "))}.</p>`;
}

export function reportHtml(given: EvalResult[], logs: TrainLog[] = []): string {
  const runs = checkedRuns(given);
  const rs = rows(runs);
  const labels = runs.map((r) => r.label);
  const charts: string[] = [];
  const taskRows = rs.filter((r) => / acc(_norm)?$/.test(r.metric));
  if (taskRows.length) charts.push(barChart("Benchmark accuracy", taskRows.map((r) => r.metric), labels, labels.map((_, s) => taskRows.map((r) => r.values[s] ?? null)), { errors: labels.map((_, s) => taskRows.map((r) => r.errors?.[s] ?? null)), yLabel: "accuracy", width: Math.min(1060, Math.max(720, 36 * taskRows.length * labels.length)) }));
  const accNote = taskRows.length ? accuracyNote(runs) : null;
  if (accNote) charts.push(accNote);
  const ppl = rs.find((r) => r.metric === "perplexity");
  if (ppl) charts.push(...perplexityCharts(runs, ppl));
  const kv = rs.find((r) => r.metric === "KV bytes / token")!;
  charts.push(barChart("KV cache per token (bytes)", ["KV bytes / token"], labels, labels.map((_, s) => [kv.values[s] ?? null]), { yLabel: "bytes", width: 480 }));
  for (const l of logs) {
    const { loss, val } = curves(l);
    if (!loss.length && !val.length) continue; // nothing to draw (the Markdown says so)
    charts.push(lineChart(`Fine-tuning: ${l.label}`, [{ name: "training loss", points: loss }, { name: "validation NLL", points: val, dots: true }], { xLabel: "step", yLabel: "nats/token" }));
  }
  const table = `<table><thead><tr><th>metric</th>${labels.map((l) => `<th>${esc(l)}</th>`).join("")}</tr></thead><tbody>${rs.map((row) => `<tr><td>${esc(row.metric)}</td>${runs.map((_, i) => `<td>${esc(cell(row, i))}</td>`).join("")}</tr>`).join("")}</tbody></table>`;
  const models = `<ul>${runs.map((r) => `<li><b>${esc(r.label)}</b>: ${r.dir ? `<code>${esc(r.dir)}</code>` : "–"} — ${esc(settings(r))}${esc(configOf(r))}${esc(measuredOn(r))}</li>`).join("")}</ul>`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${REPORT_TITLE}</title>
<style>
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}.charts svg{display:block;margin:18px 0;border:1px solid #eee}.charts .note{max-width:720px;font-size:13px;color:#555}
code{font-size:12px}
</style></head><body>
<h1>${REPORT_TITLE}</h1>
<p>Changes in parentheses are relative to the first column (${esc(labels[0] ?? "")}). ${esc(COMPARED)}</p>
${table}
<div class="charts">${charts.join("\n")}</div>
<h2>Models</h2>${models}
</body></html>
`;
}

/**
 * The title of each training log: its run folder's name, with as many folders above it as tell two
 * logs apart (two pipelines' logs are both finetune/train_log.jsonl: "a/finetune", "b/finetune").
 */
export function logLabels(files: readonly string[]): string[] {
  const dirs = files.map((f) => path.dirname(path.resolve(f)).split(path.sep).filter(Boolean));
  const label = (d: string[], depth: number) => d.slice(-depth).join("/") || "/";
  const labels = dirs.map((d) => label(d, 1));
  for (let depth = 2; new Set(labels).size < labels.length && depth <= Math.max(...dirs.map((d) => d.length)); depth++) {
    const shared = labels.map((l) => labels.filter((x) => x === l).length > 1);
    labels.forEach((_, i) => shared[i] && (labels[i] = label(dirs[i]!, depth)));
  }
  return labels;
}

/**
 * Refuses a report --out whose extension says another format (y.json got HTML, its twin y.json.md),
 * or where it or its twin is a device or a pipe (--out /dev/null): a report is two files, and one
 * beside a device is no file to keep (--force wrote the HTML into /dev/null, then made /dev/null.md
 * in /dev as root, or failed there with the HTML written).
 */
export function checkReportOut(out: string): void {
  const ext = /\.([A-Za-z0-9]+)$/.exec(path.basename(out))?.[1];
  if (ext !== undefined && !/^(html?|md)$/i.test(ext)) throw new MlaError("BAD_ARGUMENT", `--out ${out}: a report is HTML with a Markdown twin, not .${ext}`, `name it .html (the Markdown beside it as .md) or .md (the HTML beside it), e.g. --out ${out.slice(0, -ext.length - 1)}.html`);
  const { html, md } = reportFiles(out);
  for (const f of [out, out === html ? md : html]) {
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(f, { throwIfNoEntry: false });
    } catch {
      continue; // under a file, a link loop: the write names it
    }
    const kind = st && specialFileKind(st);
    if (!kind) continue;
    if (f === out) throw new MlaError("BAD_ARGUMENT", `--out ${out} is ${kind}, not a file: a report is two files, the ${out === md ? "Markdown and its HTML" : "HTML and its Markdown"} twin beside it (${f === html ? md : html})`, 'pass a file path, e.g. --out report.html; to build a report without keeping it, write it into a temporary folder (--out "$(mktemp -d)/report.html")');
    throw new MlaError("BAD_ARGUMENT", `--out ${out}: its ${f === md ? "Markdown" : "HTML"} twin ${f} is ${kind}, not a file`, `choose another --out, whose twin (the same name, .${f === md ? "md" : "html"}) is a file or nothing yet`);
  }
}

/** The two files a report to `out` writes: `out` (HTML, or the Markdown when it ends in .md) and its twin. */
export function reportFiles(out: string): { html: string; md: string } {
  const base = out.replace(/\.(html?|md)$/i, "");
  return { html: /\.md$/i.test(out) ? base + ".html" : out, md: base + ".md" };
}

/** writeReport's options: training logs to plot (each titled by its run folder's name), and a label per JSON file. */
export interface ReportOptions {
  trainLogs?: string[];
  labels?: string[];
  /** Replace files at the targets that are not earlier reports (an earlier report is replaced always). */
  force?: boolean;
}

/** Whether `file` (an existing file) is a report this function wrote: its title line, in either form. */
function isEarlierReport(file: string): boolean {
  try {
    const fd = fs.openSync(file, "r");
    try {
      const head = Buffer.alloc(512);
      const n = fs.readSync(fd, head, 0, head.length, 0);
      const text = head.subarray(0, n).toString("utf8");
      return text.startsWith(`# ${REPORT_TITLE}`) || text.includes(`<title>${REPORT_TITLE}</title>`);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return false;
  }
}

/**
 * Default labels (each run's --label, else its model) made distinct: runs of one model under other
 * settings (eval --kv-cache f32 and int4) had one header for both columns. A shared label gains the
 * run's cache type where that tells them apart, else its position (#2, #3).
 */
function distinctLabels(runs: EvalResult[]): void {
  // Counted before any is renamed: renaming the first of two left the last one looking unique.
  const shared = new Set(runs.map((r) => r.label).filter((l, i, all) => all.indexOf(l) !== i));
  for (const r of runs) if (shared.has(r.label) && r.kv_cache) r.label = `${r.label} (${r.kv_cache.dtype} cache)`;
  const seen = new Map<string, number>();
  for (const r of runs) {
    const k = (seen.get(r.label) ?? 0) + 1;
    seen.set(r.label, k);
    if (k > 1) r.label = `${r.label} #${k}`;
  }
}

/** Writes OUT (HTML) and its Markdown twin (same name, .md; an OUT ending in .md is the Markdown, its twin .html), each atomically, once both are made. */
export function writeReport(jsonFiles: string[], out: string, opts: ReportOptions = {}): { html: string; md: string } {
  // From JavaScript: a lone file name (not in an array) or a missing --out failed as a TypeError deep inside.
  const strings = (v: unknown) => Array.isArray(v) && v.every((x) => typeof x === "string");
  if (!strings(jsonFiles)) throw new MlaError("BAD_ARGUMENT", `writeReport(): the eval JSON files are ${JSON.stringify(jsonFiles)}, not an array of file names`, 'pass e.g. writeReport(["before.json", "after.json"], "report.html")');
  if (typeof out !== "string" || out === "") throw new MlaError("BAD_ARGUMENT", `writeReport(): out is ${JSON.stringify(out)}, not a file name`, 'pass e.g. writeReport(["before.json", "after.json"], "report.html")');
  checkOptionTypes<ReportOptions>("writeReport()", opts, { trainLogs: "string[]", labels: "string[]", force: "boolean" });
  if (jsonFiles.length === 0) throw new MlaError("BAD_ARGUMENT", "no eval JSON files given", "pass e.g. `mha2mla report before.json after.json --out report.html`");
  checkReportOut(out);
  const runs = jsonFiles.map(readEvalJson);
  if (opts.labels) {
    if (opts.labels.length !== runs.length) throw new MlaError("BAD_ARGUMENT", `--labels has ${opts.labels.length} names for ${runs.length} results`, "give one label per JSON file");
    const blank = opts.labels.findIndex((l) => !l.trim());
    if (blank >= 0) throw new MlaError("BAD_ARGUMENT", `--labels ${opts.labels.join(",")} leaves column ${blank + 1} without a name`, "give every column a name, comma-separated, e.g. --labels orig,mla");
    const twice = opts.labels.find((l, i) => opts.labels!.indexOf(l) !== i);
    if (twice !== undefined) throw new MlaError("BAD_ARGUMENT", `--labels names two columns ${JSON.stringify(twice)}`, "give each column a name of its own");
    runs.forEach((r, i) => (r.label = opts.labels![i]!));
  } else distinctLabels(runs);
  const trainLogs = opts.trainLogs ?? [];
  const logTitles = logLabels(trainLogs);
  const logs = trainLogs.map((f, i) => readTrainLog(f, logTitles[i]!));
  const { html, md } = reportFiles(out);
  for (const f of [html, md]) if (fs.existsSync(f) && fs.statSync(f).isDirectory()) throw new MlaError("BAD_ARGUMENT", `--out: ${f} is a folder`, "pass a file name, e.g. --out report.html (its Markdown twin is written beside it)");
  // An earlier report is replaced (re-running the command refreshes it); any other file only with force:
  // the Markdown twin's name is derived, so a user's notes.md beside --out notes.html were lost unseen.
  for (const f of [html, md])
    if (!opts.force && fs.existsSync(f) && !isEarlierReport(f))
      throw new MlaError("EXISTS", `${f} exists and is not an earlier mha2mla report${f === md ? ` (the Markdown twin of --out ${out})` : ""}`, "choose another --out, or pass --force to replace it");
  const texts = [reportHtml(runs, logs), reportMarkdown(runs, logs)] as const;
  makeDirs(path.dirname(path.resolve(out)), "the report's folder");
  writeFileAtomic(html, texts[0]);
  writeFileAtomic(md, texts[1]);
  return { html, md };
}
