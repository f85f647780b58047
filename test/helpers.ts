/** Shared test helpers: fixture paths, tolerance checks, temporary folders. */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { packageRoot } from "../src/io/modelDir.js";

export const ROOT = packageRoot();
export const FIXTURES = path.join(ROOT, "fixtures");
export const GOLDEN = path.join(FIXTURES, "golden");
export const MODELS = path.join(FIXTURES, "models");
/** ../shared beside the checkout, where the full data lives (present in CI and on dev machines). */
export const SHARED = path.resolve(ROOT, "..", "shared");

const created: string[] = [];
process.on("exit", () => {
  for (const d of created) fs.rmSync(d, { recursive: true, force: true });
});

/** A fresh temporary folder, removed when the test process exits. */
export function tmpDir(prefix = "mha2mla-test-"): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  created.push(d);
  return d;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

/** A seeded uniform(−scale, scale) generator of typed arrays, for op tests. */
export function seededRand<A extends Float32Array | Float64Array>(seed: number, Ctor: { new (n: number): A }): (n: number, scale?: number) => A {
  let s = seed >>> 0;
  return (n, scale = 1) => {
    const a = new Ctor(n);
    for (let i = 0; i < n; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      a[i] = ((s / 4294967296) * 2 - 1) * scale;
    }
    return a;
  };
}

/**
 * Polls `cond` every `everyMs` until it holds. The limit is generous on purpose: tests wait for an
 * event (a folder, a log line), not for a duration, so a busy machine only makes them slower.
 */
export async function waitFor(cond: () => boolean, what: string, limitMs = 300_000, everyMs = 10): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > limitMs) throw new Error(`timed out after ${limitMs / 1000} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
