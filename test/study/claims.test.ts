/**
 * The paper's claims in the study report: each verdict follows its stated rule from the rows, and a
 * claim whose rows the study lacks says what it needs instead of a verdict.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { checkClaims } from "../../src/study/claims.js";
import { studyMarkdown } from "../../src/study/report.js";
import type { StudyRow } from "../../src/study/study.js";

const row = (variant: StudyRow["variant"], latentDim: number | null, valNll: number, kvElemsPerToken: number, decodeTokensPerS = 100): StudyRow => ({
  variant,
  label: latentDim === null ? "MHA" : `${variant}, latent ${latentDim}`,
  latentDim,
  ropePairs: latentDim === null ? null : variant === "mla" ? 0 : 4,
  params: 1e6,
  kvElemsPerToken,
  kvBytesPerTokenBf16: 2 * kvElemsPerToken,
  valNll,
  curve: [[1, valNll]],
  trainTokensPerS: 1000,
  decodeTokensPerS,
});

test("claims: each verdict follows its rule; missing rows are 'not measured'", () => {
  // d = 64: MHA 2·Hkv·Dh = 128 per layer; MLA + RoPE at d/2: 32 + 8 rope = 40 (−68.75%).
  const rows = [row("mha", null, 3.0, 128), row("mla", 32, 3.12, 32), row("mla-rope", 32, 3.006, 40, 150), row("mla-rope", 64, 2.97, 72, 100)];
  const c = checkClaims(rows, 64);
  assert.deepEqual(c.map((x) => x.verdict), ["holds", "holds", "holds", "holds", "holds", "holds"]);
  assert.match(c[0]!.measured, /^68\.8% \(40 vs 128/);
  assert.equal(c[1]!.measured, "+0.20%");
  assert.equal(c[2]!.measured, "+4.00%");
  assert.match(c[3]!.measured, /^-1\.00% \(best: mla-rope, latent 64\)/);
  assert.match(c[5]!.measured, /^1\.50×/);

  const worse = checkClaims([row("mha", null, 3.0, 128), row("mla", 32, 3.01, 32), row("mla-rope", 32, 3.1, 40)], 64);
  assert.deepEqual(worse.map((x) => x.verdict), ["holds", "does not hold", "does not hold", "does not hold", "does not hold", "not measured"]);
  assert.match(worse[5]!.measured, /needs the mla-rope variant with d and d\/2/);

  assert.ok(checkClaims([row("mha", null, 3, 128)], 64).every((x) => x.verdict === "not measured"));
});

test("claims: the Markdown report carries the claims table", () => {
  const meta = { like: "m", hidden: 64, data: "d.txt", tokens: 100, seq: 8, batch: 2, lr: 1e-3, seed: 0, device: "cpu", date: "2026-12-03T00:00:00Z" };
  const md = studyMarkdown(meta, [row("mha", null, 3.0, 128), row("mla-rope", 32, 3.006, 40)]);
  assert.match(md, /## The claims of Mehta et al\. \(2025\), point by point/);
  assert.match(md, /\| MLA \+ RoPE at r = d\/2 costs \+0\.3% validation loss against MHA \(essentially matching it\) \| \+0\.20% \| holds \|/);
});
