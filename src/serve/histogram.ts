/**
 * Latency histograms of a server's sequences, in Prometheus's shape (cumulative counts per upper bound,
 * the sum and the count), as vLLM exports time to first token, per-output-token time, end-to-end and
 * queue time: dashboards read percentiles from them.
 */

/** Upper bounds in seconds: from a fast CPU decode step to a long generation. */
export const LATENCY_BUCKETS: readonly number[] = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60, 120];

export interface HistogramSnapshot {
  /** Upper bounds, ascending (+Inf implied). */
  buckets: readonly number[];
  /** Observations ≤ each bound (cumulative), one per bound. */
  counts: number[];
  sum: number;
  count: number;
}

export class Histogram {
  private readonly perBucket: number[];
  private sum = 0;
  private count = 0;

  constructor(private readonly buckets: readonly number[] = LATENCY_BUCKETS) {
    this.perBucket = new Array<number>(buckets.length).fill(0);
  }

  observe(v: number): void {
    if (!Number.isFinite(v)) return;
    const i = this.buckets.findIndex((b) => v <= b);
    if (i >= 0) this.perBucket[i]!++;
    this.sum += v;
    this.count++;
  }

  snapshot(): HistogramSnapshot {
    let running = 0;
    return { buckets: this.buckets, counts: this.perBucket.map((n) => (running += n)), sum: this.sum, count: this.count };
  }
}
