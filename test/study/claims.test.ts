/**
 * The paper's claims in the study report: each verdict follows its stated rule from the rows, and a
 * claim whose rows the study lacks says what it needs instead of a verdict. A verdict on validation
 * NLL that the last quarter of training does not settle (or a run too short to tell) is "too few
 * tokens to judge"; the 20M-token study of docs/benchmarks.md keeps its verdicts.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { checkClaims } from "../../src/study/claims.js";
import { studyMarkdown } from "../../src/study/report.js";
import type { StudyRow } from "../../src/study/study.js";

/** A settled curve: 20 points of 10 steps, each row's NLL the same multiple of its final one, so every point gives the final verdict. */
const settled = (valNll: number): [number, number][] => Array.from({ length: 21 }, (_, k) => [10 * k, valNll * (1 + 0.01 * (20 - k))]);

const row = (variant: StudyRow["variant"], latentDim: number | null, valNll: number, kvElemsPerToken: number, decodeTokensPerS = 100, curve = settled(valNll)): StudyRow => ({
  variant,
  label: latentDim === null ? "MHA" : `${variant}, latent ${latentDim}`,
  latentDim,
  ropePairs: latentDim === null ? null : variant === "mla" ? 0 : 4,
  params: 1e6,
  kvElemsPerToken,
  kvBytesPerTokenBf16: 2 * kvElemsPerToken,
  valNll,
  curve,
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
  assert.deepEqual(c.map((x) => x.lastQuarter), [undefined, ...Array(4).fill("holds at all 6 points (steps 150–200)"), undefined], "the KV and speed claims do not depend on training");

  const worse = checkClaims([row("mha", null, 3.0, 128), row("mla", 32, 3.01, 32), row("mla-rope", 32, 3.1, 40)], 64);
  assert.deepEqual(worse.map((x) => x.verdict), ["holds", "does not hold", "does not hold", "does not hold", "does not hold", "not measured"]);
  assert.match(worse[5]!.measured, /needs the mla-rope variant with d and d\/2/);

  assert.ok(checkClaims([row("mha", null, 3, 128)], 64).every((x) => x.verdict === "not measured"));
  // A GQA model: MLA + RoPE cannot be full rank, so the claim against r = d is not asked for but named unmeasurable.
  const gqa = checkClaims([row("mha", null, 3.0, 64), row("mla-rope", 32, 3.006, 40)], 64, 48);
  assert.equal(gqa[5]!.verdict, "not measured");
  assert.match(gqa[5]!.measured, /^not measurable on this model: MLA \+ RoPE cannot have r = d \(64\) here, at most 48 beside its rope keys/);
});

test("claims: the Markdown report carries the claims table", () => {
  const meta = { like: "m", hidden: 64, data: "d.txt", tokens: 100, seq: 8, batch: 2, lr: 1e-3, seed: 0, device: "cpu", date: "2026-12-03T00:00:00Z" };
  const md = studyMarkdown(meta, [row("mha", null, 3.0, 128), row("mla-rope", 32, 3.006, 40)]);
  assert.match(md, /## The claims of Mehta et al\. \(2025\), point by point/);
  assert.match(md, /\| MLA \+ RoPE at r = d\/2 costs \+0\.3% validation loss against MHA \(essentially matching it\) \| \+0\.20% \| holds \| .* \| holds at all 6 points \(steps 150–200\) \|/);
  assert.match(md, /too few tokens to judge/, "the note says when a verdict is withheld");
  // The rows' changes against MHA carry their sign; the header says what each run trained.
  assert.match(md, /\| mla-rope, latent 32 \| 4 \| 1\.00M \| 40 \| -68\.8% \| 3\.0060 \| \+0\.20% \|/);
  assert.match(md, /\| MHA \| all \| 1\.00M \| 128 \| 0\.0% \| 3\.0000 \| 0\.00% \|/);
  assert.match(md, /: 100 tokens, seq 8, batch 2, peak lr 0\.001, device cpu;/);
  const auto = studyMarkdown({ ...meta, tokens: 100, trainedTokens: 112, device: "auto (cuda)" }, [row("mha", null, 3.0, 128), row("mla-rope", 32, 3.00001, 40)]);
  assert.match(auto, /: 112 tokens a run \(--tokens 100 rounded up to whole steps\), seq 8, batch 2, peak lr 0\.001, device auto \(cuda\);/);
  assert.match(auto, /\| 3\.0000 \| 0\.00% \|/, "a change that rounds to zero has no sign");
});

test("claims: a verdict the last quarter of training does not settle, or a run too short to tell, is 'too few tokens to judge'", () => {
  // MLA + RoPE crosses MHA's NLL at step 160 of 200: better at the end, worse before.
  const mha = row("mha", null, 3.0, 128, 100, settled(3.0));
  const crossing = settled(2.99).map(([s, v]): [number, number] => [s, s < 160 ? v * 1.01 : (v * 3.0) / 2.99 - 0.01]);
  const c = checkClaims([mha, row("mla-rope", 32, crossing[20]![1], 40, 100, crossing)], 64);
  assert.equal(c[0]!.verdict, "holds", "the KV cut needs no training");
  assert.equal(c[3]!.verdict, "too few tokens to judge");
  assert.match(c[3]!.measured, /^-0\.33%/, "the measured number is still shown");
  assert.equal(c[3]!.lastQuarter, "does not hold at step 150 of the 6 points (steps 150–200): not settled");
  assert.equal(c[1]!.verdict, "holds", "within ±1% at every late point: settled");

  // A 4-step run (--eval-every 1): two points in its last quarter.
  const short = (v: number) => [0, 1, 2, 3, 4].map((s): [number, number] => [s, v + 0.5 * (4 - s)]);
  const few = checkClaims([row("mha", null, 5.0, 128, 100, short(5.0)), row("mla", 32, 5.2, 32, 100, short(5.2)), row("mla-rope", 32, 4.99, 40, 100, short(4.99))], 64);
  assert.deepEqual(few.map((x) => x.verdict), ["holds", "too few tokens to judge", "too few tokens to judge", "too few tokens to judge", "too few tokens to judge", "not measured"]);
  assert.match(few[1]!.lastQuarter!, /^2 validation points there: 3 are needed/);
});

/** "- Label: 0: 10.400, 244: 5.560, …" (the curve lines of a study report) as a curve. */
const curveOf = (line: string) => line.split(": ").slice(1).join(": ").split(", ").map((p) => p.split(": ").map(Number) as [number, number]);

test("claims: the 20M-token study (docs/benchmarks.md, docs/device-logs/study-20M-report-h200.md) keeps its verdicts, each settled over its last quarter", () => {
  const lines = {
    mha: "- MHA: 0: 10.400, 244: 5.560, 488: 5.120, 732: 4.841, 976: 4.670, 1220: 4.529, 1464: 4.409, 1708: 4.315, 1952: 4.218, 2196: 4.130, 2440: 4.058, 2684: 3.992, 2928: 3.932, 3172: 3.904, 3416: 3.858, 3660: 3.838, 3904: 3.796, 4148: 3.670, 4392: 3.597, 4636: 3.553, 4880: 3.531, 4883: 3.531",
    mla: "- MLA, latent 192: 0: 10.373, 244: 5.740, 488: 5.367, 732: 5.083, 976: 4.875, 1220: 4.749, 1464: 4.632, 1708: 4.545, 1952: 4.475, 2196: 4.406, 2440: 4.363, 2684: 4.303, 2928: 4.266, 3172: 4.242, 3416: 4.186, 3660: 4.172, 3904: 4.132, 4148: 3.978, 4392: 3.892, 4636: 3.840, 4880: 3.812, 4883: 3.812",
    rope: "- MLA + RoPE, latent 192: 0: 10.385, 244: 5.623, 488: 5.134, 732: 4.855, 976: 4.687, 1220: 4.559, 1464: 4.454, 1708: 4.375, 1952: 4.306, 2196: 4.237, 2440: 4.177, 2684: 4.105, 2928: 4.046, 3172: 3.998, 3416: 3.944, 3660: 3.926, 3904: 3.871, 4148: 3.740, 4392: 3.662, 4636: 3.612, 4880: 3.588, 4883: 3.588",
    rope96: "- MLA + RoPE, latent 96: 0: 10.394, 244: 5.604, 488: 5.101, 732: 4.827, 976: 4.663, 1220: 4.526, 1464: 4.427, 1708: 4.349, 1952: 4.288, 2196: 4.229, 2440: 4.179, 2684: 4.125, 2928: 4.085, 3172: 4.045, 3416: 3.991, 3660: 3.965, 3904: 3.916, 4148: 3.779, 4392: 3.700, 4636: 3.652, 4880: 3.629, 4883: 3.629",
  };
  const rows = [row("mha", null, 3.5307, 6144, 1774, curveOf(lines.mha)), row("mla", 192, 3.8118, 1536, 1285, curveOf(lines.mla)), row("mla-rope", 192, 3.5878, 1920, 1056, curveOf(lines.rope)), row("mla-rope", 96, 3.6288, 1152, 1196, curveOf(lines.rope96))];
  const c = checkClaims(rows, 384);
  assert.deepEqual(c.map((x) => x.verdict), ["holds", "does not hold", "holds", "does not hold", "holds", "not measured"], "the report's verdicts");
  for (const x of c.slice(1, 5)) assert.match(x.lastQuarter!, /at all 6 points \(steps 3904–4883\)$/, x.claim);
});
