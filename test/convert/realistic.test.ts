// Conversion parity at realistic dimensions: ../shared/models/mha26m-debian (head dim 64, hidden 384,
// full-rank K/V) converted by our `convert` and scored by our `eval`, against the NLLs of an
// independent PyTorch implementation (test/golden/make_realistic_golden.py → conversion_mha26m.json):
// every strategy, joint and split SVD, weight and activation-aware SVD, two ranks, BKV, within 0.5%.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { convert } from "../../src/convert/pipeline.js";
import { evaluate } from "../../src/eval/evaluate.js";
import { GOLDEN, SHARED, tmpDir } from "../helpers.js";

interface Golden {
  calib: { samples: number; len: number };
  eval: { tokens: number; ctx: number };
  original_nll: number;
  settings: { strategy: "high" | "uniform" | "2-norm"; rope_pairs: number; rank: number; svd: "joint" | "split"; svd_init: "weights" | "activations"; balance_kv?: boolean; nll: number; selection: number[][][] | null }[];
}

const golden = JSON.parse(fs.readFileSync(path.join(GOLDEN, "conversion_mha26m.json"), "utf8")) as Golden;
const MODEL = path.join(SHARED, "models", "mha26m-debian");
const CALIB = path.join(SHARED, "data", "text", "debian_train.txt");
const EVAL = { text: path.join(SHARED, "data", "text", "debian_dev_val.txt"), tokens: golden.eval.tokens, ctx: golden.eval.ctx, progress: null, device: "cpu" as const };

test("mha26m-debian: the original's NLL equals PyTorch's", async () => {
  const r = await evaluate(MODEL, EVAL);
  assert.ok(Math.abs(r.nll! - golden.original_nll) / golden.original_nll < 1e-3, `ours ${r.nll} vs PyTorch ${golden.original_nll}`);
});

for (const s of golden.settings) {
  const name = `${s.strategy} R ${s.rope_pairs} rank ${s.rank} ${s.svd} ${s.svd_init}${s.balance_kv ? " BKV" : ""}`;
  test(`mha26m-debian ${name}: NLL within 0.5% of PyTorch's`, async (t) => {
    const out = path.join(tmpDir(), "m26");
    // The calibration text only where a setting reads it (a --calib nothing reads is refused), as balanceKv only where the SVD is joint.
    const calib = s.strategy === "2-norm" || s.svd_init === "activations" ? { calib: CALIB, calibSamples: golden.calib.samples, calibLen: golden.calib.len } : {};
    const r = await convert(MODEL, { rank: s.rank, ropePairs: s.rope_pairs, ropeStrategy: s.strategy, svd: s.svd, svdInit: s.svd_init, ...(s.svd === "split" ? {} : { balanceKv: s.balance_kv ?? false }), ...calib, out, progress: null, device: "cpu" });
    if (s.selection) assert.deepEqual(r.selection, s.selection, "2-norm selects the pairs PyTorch selects");
    const e = await evaluate(out, EVAL);
    const rel = Math.abs(e.nll! - s.nll) / s.nll;
    t.diagnostic(`${name}: ours ${e.nll!.toFixed(5)}, PyTorch ${s.nll.toFixed(5)} (${(100 * rel).toFixed(3)}%)`);
    assert.ok(rel < 5e-3, `ours ${e.nll!.toFixed(5)} vs PyTorch ${s.nll.toFixed(5)} (${(100 * rel).toFixed(3)}%)`);
    fs.rmSync(out, { recursive: true, force: true });
  });
}
