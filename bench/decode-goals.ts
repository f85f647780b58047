/**
 * Issue 13's decode goals, judged from the rows `bench/decode.sh` prints (ours: MHA and MLA, each in
 * the cache types and forms it ran; HF transformers beside them): per context × batch the best MHA row,
 * the best MLA row and HF's, their ratios, and whether each goal holds —
 *   MLA ≥ 1.0× MHA at batch 1 from 4k context; MLA ≥ 2× MHA at batch ≥ 8 with ≥ 16k context;
 *   our MHA ≥ HF; batch-1 rows (ours) at ≥ 50% of the HBM bound.
 * "Best" is the fastest of a model's rows at that shape (e.g. bf16 against f32 cache, recorded or not),
 * what a user would pick; int8/int4 cache rows are left out (a different storage, not the comparison). A model that does not fit loses to one that does. The same row run in several
 * rounds (decode.sh's ROUNDS: separate processes, whose rates spread by a few percent on one GPU) counts
 * as its median over them, so one fast or slow process does not decide a goal.
 * Run: node dist/bench/decode-goals.js ROWS.txt     (decode.sh writes ROWS.txt beside its models)
 */
import fs from "node:fs";
import { fileURLToPath } from "node:url";

export interface DecodeRow {
  model: string;
  /** "mha" (ours), "mla" (ours) or "hf" (the peer). */
  kind: "mha" | "mla" | "hf";
  attention: string;
  ctx: number;
  batch: number;
  /** Decode tokens/s (the median window), null where the row says it does not fit. */
  tokensPerS: number | null;
  /** Share of the HBM bound in percent, null where not given. */
  hbmPercent: number | null;
  /** How many rounds' rows this one is the median of (mergeRounds); 1 for a row as printed. */
  rounds?: number;
}

/** The table rows of decode.sh's output (header, separator and other lines skipped). */
export function parseDecodeRows(text: string): DecodeRow[] {
  const rows: DecodeRow[] = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith("|")) continue;
    const cells = line.split("|").slice(1, -1).map((c) => c.trim());
    if (cells.length < 9) continue;
    const [model, attention, ctxCell, batchCell] = cells as [string, string, string, string];
    const ctx = Number(ctxCell), batch = Number(batchCell);
    if (!Number.isInteger(ctx) || !Number.isInteger(batch)) continue; // the header and its separator
    // Quantized caches are not part of the goals, which compare MLA and MHA (and HF) at one storage.
    if (/int[48] cache/.test(attention)) continue;
    const rate = /^([\d.]+)/.exec(cells[7]!);
    const hbm = /^([\d.]+)%/.exec(cells[8]!);
    const kind = attention.includes("HF transformers") ? "hf" : attention.startsWith("mla") ? "mla" : "mha";
    rows.push({ model, kind, attention, ctx, batch, tokensPerS: rate ? Number(rate[1]) : null, hbmPercent: hbm ? Number(hbm[1]) : null });
  }
  return rows;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/**
 * Rows with the same model, attention, context and batch (one per round) as one row: the median rate and
 * the median share of the bound. A row that does not fit in any round does not fit.
 */
export function mergeRounds(rows: DecodeRow[]): DecodeRow[] {
  const groups = new Map<string, DecodeRow[]>();
  for (const r of rows) {
    const key = [r.model, r.attention, r.ctx, r.batch].join("|");
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  return [...groups.values()].map((g) => {
    if (g.length === 1) return g[0]!;
    const rates = g.map((r) => r.tokensPerS);
    const shares = g.map((r) => r.hbmPercent).filter((x): x is number => x !== null);
    return {
      ...g[0]!,
      tokensPerS: rates.some((x) => x === null) ? null : median(rates as number[]),
      hbmPercent: shares.length === g.length ? median(shares) : null,
      rounds: g.length,
    };
  });
}

export interface ShapeVerdict {
  ctx: number;
  batch: number;
  mha: DecodeRow | null;
  mla: DecodeRow | null;
  hf: DecodeRow | null;
  /** MLA / MHA tokens/s; Infinity where only MLA fits; null where either is missing or neither fits. */
  mlaOverMha: number | null;
  /** Our MHA / HF; Infinity where only ours fits; null where either is missing or neither fits. */
  mhaOverHf: number | null;
}

export interface Goal {
  goal: string;
  /** The shapes it applies to that were run, with each one's value. */
  rows: { ctx: number; batch: number; value: number | null; met: boolean }[];
  met: boolean;
}

const best = (rows: DecodeRow[]): DecodeRow | null =>
  rows.reduce<DecodeRow | null>((a, r) => (a === null || (r.tokensPerS ?? -1) > (a.tokensPerS ?? -1) ? r : a), null);

function ratio(a: DecodeRow | null, b: DecodeRow | null): number | null {
  if (!a || !b) return null;
  if (a.tokensPerS === null) return null;
  if (b.tokensPerS === null) return Infinity;
  return a.tokensPerS / b.tokensPerS;
}

/** Per context × batch (ascending): the best row of each kind (rounds merged) and the two ratios. */
export function verdicts(printed: DecodeRow[]): ShapeVerdict[] {
  const rows = mergeRounds(printed);
  const shapes = [...new Set(rows.map((r) => `${r.ctx}:${r.batch}`))].map((k) => k.split(":").map(Number) as [number, number]);
  shapes.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  return shapes.map(([ctx, batch]) => {
    const at = (kind: DecodeRow["kind"]) => best(rows.filter((r) => r.kind === kind && r.ctx === ctx && r.batch === batch));
    const mha = at("mha"), mla = at("mla"), hf = at("hf");
    return { ctx, batch, mha, mla, hf, mlaOverMha: ratio(mla, mha), mhaOverHf: ratio(mha, hf) };
  });
}

/** Issue 13's four decode goals over the shapes that were run. */
export function goals(v: ShapeVerdict[]): Goal[] {
  const goal = (name: string, applies: (s: ShapeVerdict) => boolean, value: (s: ShapeVerdict) => number | null, bound: number): Goal => {
    const rows = v.filter(applies).map((s) => {
      const x = value(s);
      return { ctx: s.ctx, batch: s.batch, value: x, met: x !== null && x >= bound };
    });
    return { goal: name, rows, met: rows.length > 0 && rows.every((r) => r.met) };
  };
  const batchOneHbm = (s: ShapeVerdict) => {
    const ours = [s.mha, s.mla].map((r) => r?.hbmPercent).filter((x): x is number => typeof x === "number");
    return ours.length ? Math.min(...ours) : null;
  };
  return [
    goal("MLA ≥ 1.0× MHA at batch 1 from 4k context", (s) => s.batch === 1 && s.ctx >= 4096 && s.mla !== null && s.mha !== null, (s) => s.mlaOverMha, 1),
    goal("MLA ≥ 2× MHA at batch ≥ 8 with ≥ 16k context", (s) => s.batch >= 8 && s.ctx >= 16384 && s.mla !== null && s.mha !== null, (s) => s.mlaOverMha, 2),
    goal("our MHA ≥ HF", (s) => s.mha !== null && s.hf !== null && (s.mha.tokensPerS !== null || s.hf.tokensPerS !== null), (s) => s.mhaOverHf, 1),
    goal("batch-1 rows (ours, MHA and MLA) ≥ 50% of the HBM bound", (s) => s.batch === 1 && (s.mha !== null || s.mla !== null), batchOneHbm, 50),
  ];
}

const fmt = (x: number | null, digits = 2) => (x === null ? "—" : x === Infinity ? "∞" : x.toFixed(digits));
const rate = (r: DecodeRow | null) =>
  r === null ? "—" : r.tokensPerS === null ? "does not fit" : `${r.tokensPerS.toFixed(1)}${r.hbmPercent !== null ? ` (${+r.hbmPercent.toFixed(1)}%)` : ""}`;

/** The verdicts as a Markdown table, then one line per goal. */
export function report(text: string): string {
  const v = verdicts(parseDecodeRows(text));
  if (v.length === 0) return "no decode rows found (expected the table rows bench/decode.sh prints)";
  const lines = ["| context × batch | best MHA (ours) | best MLA | HF | MLA / MHA | our MHA / HF |", "| --- | --- | --- | --- | --- | --- |"];
  for (const s of v) lines.push(`| ${s.ctx} × ${s.batch} | ${rate(s.mha)} | ${rate(s.mla)} | ${rate(s.hf)} | ${fmt(s.mlaOverMha)} | ${fmt(s.mhaOverHf)} |`);
  const rounds = Math.max(...v.flatMap((s) => [s.mha, s.mla].map((r) => r?.rounds ?? 1)));
  if (rounds > 1) lines.push("", `Our rows are each the median of ${rounds} rounds (separate processes).`);
  lines.push("");
  for (const g of goals(v)) {
    const misses = g.rows.filter((r) => !r.met).map((r) => `${r.ctx} × ${r.batch}: ${fmt(r.value)}`);
    // A ratio met because one side does not fit says so: it is a memory result, not a rate.
    const unfit = g.rows.filter((r) => r.met && r.value === Infinity).map((r) => `${r.ctx} × ${r.batch}`);
    const met = unfit.length ? `met (${unfit.join(", ")}: only the first fits, no rate to compare)` : "met";
    lines.push(`- ${g.goal}: ${g.rows.length === 0 ? "no such rows run" : g.met ? met : `not met (${misses.join("; ")})`}`);
  }
  return lines.join("\n");
}

if (process.argv[1] && fileURLToPath(import.meta.url) === fs.realpathSync(process.argv[1])) {
  const file = process.argv[2];
  if (!file) {
    console.error("usage: node dist/bench/decode-goals.js ROWS.txt   (the output of bench/decode.sh)");
    process.exit(2);
  }
  console.log(report(fs.readFileSync(file, "utf8")));
}
