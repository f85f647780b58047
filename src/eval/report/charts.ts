/** Inline SVG charts for the report: grouped bars and line series. No scripts, no network. */

const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1"];

export function color(i: number): string {
  return PALETTE[i % PALETTE.length]!;
}

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

function niceMax(x: number): number {
  if (!(x > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

function fmt(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e6 || a < 1e-3) return v.toExponential(2);
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  return v.toFixed(3);
}

interface Frame {
  parts: string[];
  left: number;
  top: number;
  plotW: number;
  plotH: number;
  W: number;
  H: number;
}

const LEGEND_SLOT = 170, LEGEND_ROW = 18;
/** Legend entries per row in a chart `W` wide (a 480-px chart holds two: a third was cut off). */
const legendPerRow = (W: number) => Math.max(1, Math.floor((W - 64 - 16) / LEGEND_SLOT));

/** The SVG header, title and plot area shared by both chart kinds; `entries` legend entries below the plot, in rows that fit. */
function frame(title: string, W: number, entries: number): Frame {
  const rows = Math.max(1, Math.ceil(entries / legendPerRow(W)));
  const H = 300 + LEGEND_ROW * (rows - 1);
  const left = 64;
  const top = 36;
  return {
    parts: [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">`, `<text x="${W / 2}" y="20" text-anchor="middle" font-size="15" font-weight="600">${esc(title)}</text>`],
    left,
    top,
    plotW: W - left - 16,
    plotH: 300 - top - 56,
    W,
    H,
  };
}

/** The legend: a color swatch and name per entry, rows of as many as fit below the plot. */
function legend(f: Frame, names: readonly string[], colorAt: (i: number) => string): void {
  const perRow = legendPerRow(f.W);
  names.forEach((name, i) => {
    const x = f.left + (i % perRow) * LEGEND_SLOT, y = f.top + f.plotH + 34 + Math.floor(i / perRow) * LEGEND_ROW;
    f.parts.push(`<rect x="${x}" y="${y}" width="12" height="12" fill="${colorAt(i)}"/><text x="${x + 18}" y="${y + 10}" font-size="12">${esc(name)}</text>`);
  });
}

/** Horizontal grid lines with y labels at 5 levels from lo to hi, and the y-axis label. */
function yGrid(f: Frame, lo: number, hi: number, y: (v: number) => number, label?: string): void {
  for (let t = 0; t <= 4; t++) {
    const v = lo + ((hi - lo) * t) / 4;
    f.parts.push(`<line x1="${f.left}" x2="${f.W - 16}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/><text x="${f.left - 6}" y="${y(v) + 4}" text-anchor="end" font-size="11">${fmt(v)}</text>`);
  }
  if (label) f.parts.push(`<text transform="translate(14 ${f.top + f.plotH / 2}) rotate(-90)" text-anchor="middle" font-size="12">${esc(label)}</text>`);
}

/**
 * Grouped bar chart: one group per category, one bar per series (runs). `values[s][c]` may be null
 * (missing). `errors` (same layout) draws ± whiskers.
 */
export function barChart(title: string, categories: string[], series: string[], values: (number | null)[][], opts: { errors?: (number | null)[][]; yLabel?: string; width?: number; colorOf?: (s: number) => string } = {}): string {
  // A chart of some of the runs colors each as the report's other charts do (colorOf), not by its place here.
  const colorAt = opts.colorOf ?? color;
  const f = frame(title, opts.width ?? 720, series.length);
  const { parts, left, top, plotW, plotH, W } = f;
  const all = values.flat().filter((v): v is number => v !== null && Number.isFinite(v));
  // Each value with its own whisker (values and errors share the [series][category] layout; missing values drop out of both).
  const tops = values.flatMap((row, s) => row.map((v, c) => (v === null || !Number.isFinite(v) ? 0 : v + (opts.errors?.[s]?.[c] ?? 0))));
  const ymax = niceMax(maxOf([...all, ...tops], 0));
  const groupW = plotW / Math.max(categories.length, 1);
  const barW = Math.min(40, (groupW * 0.8) / Math.max(series.length, 1));
  const y = (v: number) => top + plotH - (v / ymax) * plotH;
  yGrid(f, 0, ymax, y, opts.yLabel);
  categories.forEach((cat, c) => {
    const gx = left + c * groupW + (groupW - barW * series.length) / 2;
    series.forEach((_, s) => {
      const v = values[s]?.[c];
      if (v === null || v === undefined || !Number.isFinite(v)) return;
      const x = gx + s * barW;
      parts.push(`<rect x="${x.toFixed(1)}" y="${y(v).toFixed(1)}" width="${(barW - 2).toFixed(1)}" height="${(top + plotH - y(v)).toFixed(1)}" fill="${colorAt(s)}"><title>${esc(series[s]!)} · ${esc(cat)}: ${fmt(v)}</title></rect>`);
      const e = opts.errors?.[s]?.[c];
      if (e) parts.push(`<line x1="${x + barW / 2 - 1}" x2="${x + barW / 2 - 1}" y1="${y(v + e)}" y2="${y(Math.max(0, v - e))}" stroke="#333"/>`);
      parts.push(`<text x="${(x + barW / 2 - 1).toFixed(1)}" y="${(y(v) - 4).toFixed(1)}" text-anchor="middle" font-size="10">${fmt(v)}</text>`);
    });
    parts.push(`<text x="${left + c * groupW + groupW / 2}" y="${top + plotH + 18}" text-anchor="middle" font-size="10">${esc(cat)}</text>`);
  });
  parts.push(`<line x1="${left}" x2="${W - 16}" y1="${top + plotH}" y2="${top + plotH}" stroke="#333"/>`);
  legend(f, series, colorAt);
  parts.push("</svg>");
  return parts.join("");
}

/** The largest (smallest) of xs and `start`, by a loop: spreading a long training log's points into Math.max overflows the stack. */
function maxOf(xs: Iterable<number>, start: number): number {
  let m = start;
  for (const x of xs) if (x > m) m = x;
  return m;
}
function minOf(xs: Iterable<number>, start: number): number {
  let m = start;
  for (const x of xs) if (x < m) m = x;
  return m;
}

/**
 * At most `max` of a series' points (a polyline of 200k points draws no better than of 2k): the first and
 * last, and between them runs of consecutive points each kept by its lowest and its highest, in order, so a
 * loss spike or dip stays on the chart and in its axis (an even stride skipped it).
 */
export function thinned(points: [number, number][], max = 2000): [number, number][] {
  if (points.length <= max || max < 4) return points;
  const runs = Math.floor((max - 2) / 2), inner = points.length - 2;
  const kept: [number, number][] = [points[0]!];
  for (let r = 0; r < runs; r++) {
    // Integer bounds: the last run ends exactly before the last point (a float step could stop one short).
    const lo = 1 + Math.floor((r * inner) / runs), hi = 1 + Math.floor(((r + 1) * inner) / runs);
    if (lo >= hi) continue;
    let low = lo, high = lo;
    for (let i = lo + 1; i < hi; i++) {
      if (points[i]![1] < points[low]![1]) low = i;
      if (points[i]![1] > points[high]![1]) high = i;
    }
    if (low === high) kept.push(points[low]!);
    else kept.push(points[Math.min(low, high)]!, points[Math.max(low, high)]!);
  }
  kept.push(points[points.length - 1]!);
  return kept;
}

/** Line chart of one or more series of (x, y) points; points whose x or y is not finite are left out. */
export function lineChart(title: string, seriesIn: { name: string; points: [number, number][]; dots?: boolean }[], opts: { xLabel?: string; yLabel?: string; width?: number } = {}): string {
  const series = seriesIn.map((s) => ({ ...s, points: thinned(s.points.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]))) }));
  const f = frame(title, opts.width ?? 720, series.length);
  const { parts, left, top, plotW, plotH, W } = f;
  const pts = series.flatMap((s) => s.points);
  const xmax = maxOf(pts.map((p) => p[0]), 1);
  const ymin = pts.length ? minOf(pts.map((p) => p[1]), Infinity) : 0;
  const ymaxRaw = pts.length ? maxOf(pts.map((p) => p[1]), -Infinity) : 1;
  const ylo = Math.floor(Math.min(ymin, ymaxRaw) * 10) / 10;
  const yhi = Math.max(ylo + 0.1, Math.ceil(ymaxRaw * 10) / 10);
  const x = (v: number) => left + (v / xmax) * plotW;
  const y = (v: number) => top + plotH - ((v - ylo) / (yhi - ylo)) * plotH;
  yGrid(f, ylo, yhi, y, opts.yLabel);
  for (let t = 0; t <= 4; t++) parts.push(`<text x="${x((xmax * t) / 4)}" y="${top + plotH + 16}" text-anchor="middle" font-size="11">${Math.round((xmax * t) / 4)}</text>`);
  if (opts.xLabel) parts.push(`<text x="${left + plotW / 2}" y="${top + plotH + 32}" text-anchor="middle" font-size="12">${esc(opts.xLabel)}</text>`);
  series.forEach((s, i) => {
    if (s.points.length > 1 && !s.dots) parts.push(`<polyline fill="none" stroke="${color(i)}" stroke-width="2" points="${s.points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ")}"/>`);
    if (s.dots || s.points.length === 1) for (const p of s.points) parts.push(`<circle cx="${x(p[0]).toFixed(1)}" cy="${y(p[1]).toFixed(1)}" r="4" fill="${color(i)}"><title>${esc(s.name)} @ ${p[0]}: ${fmt(p[1])}</title></circle>`);
  });
  legend(f, series.map((s) => s.name), color);
  parts.push(`<line x1="${left}" x2="${W - 16}" y1="${top + plotH}" y2="${top + plotH}" stroke="#333"/></svg>`);
  return parts.join("");
}

export { esc };
