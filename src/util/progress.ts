/**
 * Progress for long work: a redrawn bar on a terminal, otherwise a line every few seconds, both with
 * rate and ETA. Written to the injected sink (stderr in the CLI), never to stdout; without one (the
 * library's default) nothing is written, as a library called from a script should stay quiet unless asked.
 */
export interface ProgressSink {
  write(s: string): void;
  isTTY?: boolean;
}

export class Progress {
  private done = 0;
  private readonly t0 = Date.now();
  private lastPrint = 0;

  constructor(
    private readonly label: string,
    private readonly total: number,
    private readonly unit: string,
    private readonly sink: ProgressSink | null = null,
    private readonly everyMs = 5000,
  ) {}

  tick(n = 1): void {
    this.done += n;
    const now = Date.now();
    if (!this.sink) return;
    const interval = this.sink.isTTY ? 200 : this.everyMs;
    if (now - this.lastPrint >= interval || this.done >= this.total) {
      this.lastPrint = now;
      this.print(now);
    }
  }

  private print(now: number): void {
    const s = (now - this.t0) / 1000;
    const rate = this.done / Math.max(s, 1e-9);
    const eta = rate > 0 ? (this.total - this.done) / rate : Infinity;
    const pct = this.total > 0 ? (100 * this.done) / this.total : 100;
    const line = `${this.label} ${fmtCount(this.done)}/${fmtCount(this.total)} ${this.unit} (${pct.toFixed(1)}%) ${fmtCount(rate)} ${this.unit}/s, ${fmtTime(s)} elapsed, ETA ${fmtTime(eta)}`;
    if (this.sink!.isTTY) {
      const width = 24;
      const fill = Math.round((width * pct) / 100);
      this.sink!.write(`\r[${"#".repeat(fill)}${"-".repeat(width - fill)}] ${line}\x1b[K${this.done >= this.total ? "\n" : ""}`);
    } else this.sink!.write(line + "\n");
  }
}

export function fmtCount(n: number): string {
  if (!Number.isFinite(n)) return "?";
  if (n >= 1e9) return (n / 1e9).toFixed(2) + "G";
  if (n >= 1e6) return (n / 1e6).toFixed(2) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

export function fmtTime(s: number): string {
  if (!Number.isFinite(s)) return "?";
  // Rounded once, before the split: rounding the seconds alone read 1199.6 s as "19m60s" (and 59.97 s as "60.0s").
  if (s < 59.95) return s.toFixed(1) + "s";
  const m = Math.floor(Math.round(s) / 60);
  return m < 60 ? `${m}m${Math.round(s) % 60}s` : `${Math.floor(m / 60)}h${m % 60}m`;
}
