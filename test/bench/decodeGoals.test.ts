import assert from "node:assert/strict";
import { test } from "node:test";
import { goals, parseDecodeRows, report, verdicts } from "../../bench/decode-goals.js";

// Rows as bench/decode.sh prints them (from docs/device-logs/decode-graphs-h200.txt, trimmed; one MHA
// row at 4k × 1 added in another cache type, slower, which "best" must pass over).
const ROWS = `wrote /tmp/dec/llama2-7b-L4-mla in 15.6 s; KV cache per token 32768 → 10240 elements (-68.75%)
| model | attention | context | batch | KV elements/token (all layers) | KV cache, f32 storage | KV cache, bf16 | decode tokens/s | % of HBM bound |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
| llama2-7b-L4 | mha, bf16 cache, CUDA graph | 4096 | 1 | 32768 | 512.0 MiB | 256.0 MiB | 943.5 (936–961) | 42% |
| llama2-7b-L4 | mha, f32 cache | 4096 | 1 | 32768 | 512.0 MiB | 256.0 MiB | 640.0 (600–650) | 30% |
| llama2-7b-L4 | mha, bf16 cache, CUDA graph | 16384 | 8 | 32768 | 16.00 GiB | 8.00 GiB | 631.7 (628–633) | 17% |
| llama2-7b-L4 | mha, bf16 cache | 16384 | 128 | 32768 | 256.00 GiB | 128.00 GiB | does not fit (103.4 GiB left beside the weights) | |
| llama2-7b-L4-mla | mla, runtime absorption, bf16 cache, CUDA graph | 4096 | 1 | 10240 | 160.0 MiB | 80.0 MiB | 996.4 (992–1004) | 40% |
| llama2-7b-L4-mla | mla, runtime absorption, bf16 cache, CUDA graph | 16384 | 8 | 10240 | 5.00 GiB | 2.50 GiB | 2597.0 (2578–2607) | 30% |
| llama2-7b-L4-mla | mla, runtime absorption, bf16 cache, CUDA graph | 16384 | 128 | 10240 | 80.00 GiB | 40.00 GiB | 3835.9 (3819–3844) | 28% |
| llama2-7b-L4 | mha, HF transformers 5.17.0 (torch 2.11.0+cu130, SDPA without cuDNN) | 4096 | 1 | 32768 | | 256.0 MiB | 293.3 | 13% |
| llama2-7b-L4 | mha, HF transformers 5.17.0 (torch 2.11.0+cu130, SDPA without cuDNN) | 16384 | 8 | 32768 | | 8.00 GiB | 837.6 | 23% |
| llama2-7b-L4 | mha, HF transformers 5.17.0 (torch 2.11.0+cu130, SDPA without cuDNN) | 16384 | 128 | 32768 | | 128.00 GiB | does not fit | |
device: CUDA (NVIDIA H200, 143155 MiB, sm_90, driver CUDA 13.0, runtime 13.0)`;

test("decode goals: rows parsed by kind, the best row of each kind per shape, ratios with rows that do not fit", () => {
  const rows = parseDecodeRows(ROWS);
  assert.equal(rows.length, 10);
  assert.deepEqual(rows.map((r) => r.kind), ["mha", "mha", "mha", "mha", "mla", "mla", "mla", "hf", "hf", "hf"]);
  assert.equal(rows[3]!.tokensPerS, null, "a row that does not fit has no rate");
  const v = verdicts(rows);
  assert.deepEqual(v.map((s) => [s.ctx, s.batch]), [[4096, 1], [16384, 8], [16384, 128]]);
  assert.equal(v[0]!.mha!.tokensPerS, 943.5, "the faster of the two MHA rows");
  assert.ok(Math.abs(v[0]!.mlaOverMha! - 996.4 / 943.5) < 1e-12);
  assert.ok(Math.abs(v[1]!.mhaOverHf! - 631.7 / 837.6) < 1e-12);
  assert.equal(v[2]!.mlaOverMha, Infinity, "only MLA fits");
  assert.equal(v[2]!.mhaOverHf, null, "neither fits");
});

test("decode goals: each goal over the shapes it applies to, a miss named with its value", () => {
  const g = goals(verdicts(parseDecodeRows(ROWS)));
  assert.deepEqual(g.map((x) => x.met), [true, true, false, false]);
  assert.deepEqual(g[1]!.rows.map((r) => [r.ctx, r.batch, r.met]), [[16384, 8, true], [16384, 128, true]], "MHA not fitting counts as met");
  const text = report(ROWS);
  assert.match(text, /\| 4096 × 1 \| 943\.5 \(42%\) \| 996\.4 \(40%\) \| 293\.3 \(13%\) \| 1\.06 \| 3\.22 \|/);
  assert.match(text, /our MHA ≥ HF: not met \(16384 × 8: 0\.75\)/);
  assert.match(text, /MLA ≥ 2× MHA at batch ≥ 8 with ≥ 16k context: met \(16384 × 128: only the first fits, no rate to compare\)/, "a goal met where one side does not fit says so");
  assert.match(text, /≥ 50% of the HBM bound: not met \(4096 × 1: 40\.00\)/);
  assert.equal(report("nothing here"), "no decode rows found (expected the table rows bench/decode.sh prints)");
});

test("decode goals: a row run in several rounds counts as its median (rate and share of the bound); one not fitting in a round does not fit", () => {
  const row = (attention: string, rate: string, share: string) => `| llama2-7b-L4${attention.startsWith("mla") ? "-mla" : ""} | ${attention} | 4096 | 1 | 1 | 1 | 1 | ${rate} | ${share} |`;
  const mha = "mha, bf16 cache, CUDA graph", mla = "mla, runtime absorption, bf16 cache, CUDA graph";
  const text = [row(mha, "1000.0 (990–1010)", "50%"), row(mla, "1200.0", "40%"), row(mha, "1100.0", "55%"), row(mla, "990.0", "33%"), row(mha, "1050.0", "52%"), row(mla, "1020.0", "34%")].join("\n");
  const v = verdicts(parseDecodeRows(text));
  assert.equal(v.length, 1);
  assert.equal(v[0]!.mha!.tokensPerS, 1050, "the median of 1000, 1100 and 1050, not the fastest");
  assert.equal(v[0]!.mha!.rounds, 3);
  assert.equal(v[0]!.mla!.hbmPercent, 34);
  assert.ok(Math.abs(v[0]!.mlaOverMha! - 1020 / 1050) < 1e-12, "one fast MLA process does not meet the goal");
  assert.match(report(text), /median of 3 rounds/);
  const two = verdicts(parseDecodeRows([row(mha, "1000.0", "50%"), row(mha, "does not fit", "")].join("\n")));
  assert.equal(two[0]!.mha!.tokensPerS, null);
  const even = verdicts(parseDecodeRows([row(mla, "1000.0", "40%"), row(mla, "1100.0", "45%")].join("\n")));
  assert.equal(even[0]!.mla!.tokensPerS, 1050);
  assert.equal(even[0]!.mla!.hbmPercent, 42.5);
});

test("decode goals: int8/int4 cache rows are left out (a different storage; the goals compare MLA and MHA at one)", () => {
  const fast = `| llama2-7b-L4-mla | mla, runtime absorption, int8 cache, CUDA graph | 4096 | 1 | 10240 | 160.0 MiB | 80.0 MiB | 99999.0 | 90% |
| llama2-7b-L4 | mha, int4 cache, CUDA graph | 16384 | 8 | 32768 | 16.00 GiB | 8.00 GiB | 99999.0 | 90% |`;
  const rows = parseDecodeRows(`${ROWS}\n${fast}`);
  assert.equal(rows.length, 10, "the two quantized rows are not parsed");
  assert.equal(verdicts(rows)[0]!.mla!.tokensPerS, 996.4);
});
