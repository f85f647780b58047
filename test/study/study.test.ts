/**
 * `study`: a short run of every variant from one initialization writes a table (Markdown, HTML with
 * the curves, JSON) whose KV column follows the latent widths; bad variants and widths are named.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { initFromScratch } from "../../src/study/init.js";
import { latentWidth, study } from "../../src/study/study.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { FIXTURES, MODELS, tmpDir } from "../helpers.js";

const DATA = path.join(FIXTURES, "text", "tinystories_25k.txt");

test("study: MHA, MLA, MLA + RoPE and EG-MLA from one initialization, with a report", async () => {
  const out = path.join(tmpDir(), "study");
  const r = await study({ like: path.join(MODELS, "stories260K"), variants: ["mha", "mla", "mla-rope", "eg-mla"], ranks: ["d/2"], data: DATA, tokens: 4 * 4 * 32, seq: 32, batch: 4, valFraction: 0.05, gateDim: 4, device: "cpu", out, progress: null });
  assert.deepEqual(r.rows.map((x) => x.label), ["MHA", "MLA, latent 32", "MLA + RoPE, latent 32", "EG-MLA, latent 32"]);
  const [mha, mla, rope, eg] = r.rows as [typeof r.rows[0], typeof r.rows[0], typeof r.rows[0], typeof r.rows[0]];
  assert.equal(mha.kvElemsPerToken, 2 * 4 * 8 * 5);
  assert.equal(mla.kvElemsPerToken, 32 * 5, "no rope keys: the latent only");
  assert.equal(rope.kvElemsPerToken, (32 + 4 * 2) * 5);
  assert.equal(eg.kvElemsPerToken, rope.kvElemsPerToken, "the gate is not cached");
  for (const row of r.rows) {
    assert.ok(Number.isFinite(row.valNll) && row.valNll < 7, `${row.label}: ${row.valNll}`);
    assert.ok(row.curve.length >= 2 && row.decodeTokensPerS > 0, row.label);
  }
  const md = fs.readFileSync(r.report!, "utf8");
  assert.match(md, /\| MLA \+ RoPE, latent 32 \|/);
  assert.match(fs.readFileSync(r.html!, "utf8"), /<svg[^>]*aria-label="validation curves"/);
  const json = JSON.parse(fs.readFileSync(path.join(out, "study.json"), "utf8"));
  assert.equal(json.rows.length, 4);
  // The claims beside the rows: the KV cut (-37.5% here) is measured; a 4-step run settles no claim on validation NLL.
  assert.deepEqual(json.claims, r.claims);
  assert.deepEqual(r.claims!.map((c) => c.verdict), ["does not hold", "too few tokens to judge", "too few tokens to judge", "too few tokens to judge", "too few tokens to judge", "not measured"]);
  assert.match(md, /\| too few tokens to judge \|/);
  // stories260K is GQA (8/4 heads): MLA + RoPE cannot be full rank, so the d/2-against-d claim is named unmeasurable.
  assert.ok(json.mlaRopeWidest > 0 && json.mlaRopeWidest < 64, `widest ${json.mlaRopeWidest}`);
  assert.match(r.claims![5]!.measured, /^not measurable on this model/);
  assert.equal(fs.readdirSync(path.join(out, "tokens")).length, 1, "the variants share one cached token stream");
});

test("study resumes: stopped inside the second variant, the same command finishes it, skipping the first, and every result equals an uninterrupted study's", async () => {
  const base = { like: path.join(MODELS, "stories260K"), variants: ["mha", "mla-rope"] as const, ranks: ["d/2"], data: DATA, tokens: 8 * 4 * 32, seq: 32, batch: 4, valFraction: 0.05, device: "cpu" as const, progress: null };
  const straight = await study({ ...base, out: path.join(tmpDir(), "straight") });
  const out = path.join(tmpDir(), "stopped");
  // Four steps into the second variant (shouldStop is also polled while tokenizing and validating).
  const log = path.join(out, "mla-rope-L32-trained", "train_log.jsonl");
  const first = await study({ ...base, out, shouldStop: () => fs.existsSync(log) && fs.readFileSync(log, "utf8").split("\n").filter((l) => l.includes('"loss"')).length >= 4 });
  assert.equal(first.stoppedEarly, true);
  assert.deepEqual(first.rows.map((r) => r.label), ["MHA"]);
  assert.equal(fs.existsSync(path.join(out, "report.md")), false);
  const mhaRow = fs.statSync(path.join(out, "mha.row.json")).mtimeMs;
  const done = await study({ ...base, out });
  assert.equal(done.stoppedEarly, false);
  assert.equal(fs.statSync(path.join(out, "mha.row.json")).mtimeMs, mhaRow, "the finished variant is not trained again");
  assert.deepEqual(done.rows.map((r) => r.valNll), straight.rows.map((r) => r.valNll));
  await assert.rejects(study({ ...base, tokens: 4 * 4 * 32, out }), (e: unknown) => e instanceof MlaError && new RegExp(`from a study with other settings: --tokens ${base.tokens} → ${4 * 4 * 32} \\(the study's value → this call's\\)`).test(e.message));
  // The same data named another way (relative), and an eg-mla gate in a study that had none, are no change: only --tokens is named.
  await assert.rejects(study({ ...base, data: path.relative(process.cwd(), DATA), variants: ["mha", "mla-rope", "eg-mla"], gateDim: 8, tokens: 4 * 4 * 32, out }), (e: unknown) => e instanceof MlaError && new RegExp(`other settings: --tokens ${base.tokens} → ${4 * 4 * 32} \\(the study's value`).test(e.message));
  // Another width added later: the finished runs are kept, only the new one trains.
  const logged: string[] = [];
  const wider = await study({ ...base, ranks: ["d/2", "d/4"], out, logger: { info: (m) => logged.push(m), warn: () => {} } });
  assert.deepEqual(wider.rows.map((r) => r.label), ["MHA", "MLA + RoPE, latent 32", "MLA + RoPE, latent 16"]);
  assert.deepEqual(wider.rows.slice(0, 2).map((r) => r.valNll), straight.rows.map((r) => r.valNll));
  assert.equal(fs.statSync(path.join(out, "mha.row.json")).mtimeMs, mhaRow);
  assert.ok(logged.some((m) => /continuing the study .* --ranks d\/2,d\/4: finished runs are kept/.test(m)), logged.join("\n"));
  assert.equal(logged.filter((m) => /already done/.test(m)).length, 2);
  // A call naming fewer runs: its report still holds every finished run (it had dropped the others), in
  // the study's order, and a copy of a row file under another name is not a run.
  fs.copyFileSync(path.join(out, "mha.row.json"), path.join(out, "mha-backup.row.json"));
  const fewer: string[] = [];
  const narrower = await study({ ...base, ranks: ["d/4"], variants: ["mla-rope"], out, logger: { info: (m) => fewer.push(m), warn: () => {} } });
  assert.deepEqual(narrower.rows.map((r) => r.label), ["MHA", "MLA + RoPE, latent 32", "MLA + RoPE, latent 16"]);
  assert.equal((fs.readFileSync(path.join(out, "report.md"), "utf8").match(/^\| MHA \|/gm) ?? []).length, 1, "one MHA row");
  assert.ok(fewer.some((m) => /^continuing the study .* with --variants mla-rope --ranks d\/4: finished runs are kept/.test(m)), fewer.join("\n"));
  assert.ok(fewer.some((m) => /the report also holds 2 runs finished by earlier calls: MHA; MLA \+ RoPE, latent 32/.test(m)), fewer.join("\n"));
  // An older study recorded the default gate (16) with no eg-mla run: a gate of 8 now is no change either.
  const state = path.join(out, "study-state.json");
  const recorded = JSON.parse(fs.readFileSync(state, "utf8"));
  fs.writeFileSync(state, JSON.stringify({ ...recorded, settings: { ...recorded.settings, gateDim: 16 } }));
  await assert.rejects(study({ ...base, variants: ["mha", "mla-rope", "eg-mla"], gateDim: 8, tokens: 4 * 4 * 32, out }), (e: unknown) => e instanceof MlaError && new RegExp(`other settings: --tokens ${base.tokens} → ${4 * 4 * 32} \\(the study's value`).test(e.message));
});

test("study stops on its signal inside the run under way (its conversion at a layer, its training after a step, with a checkpoint) and the same call finishes that run as an uninterrupted study does", async () => {
  const base = { like: path.join(MODELS, "stories260K"), variants: ["mla-rope"] as const, ranks: ["d/2"], data: DATA, tokens: 8 * 4 * 32, seq: 32, batch: 4, valFraction: 0.05, device: "cpu" as const, progress: null };
  const straight = await study({ ...base, out: path.join(tmpDir(), "straight") });
  const out = path.join(tmpDir(), "stopped");
  // At a log line, or a progress line: the fine-tune's are its steps ("step 1/8 …").
  const stopsAt = (re: RegExp) => {
    const c = new AbortController();
    const at = (m: string) => void (re.test(m) && c.abort(new Error("enough")));
    return { signal: c.signal, logger: { info: at, warn: () => {} }, progress: { write: at } };
  };
  const stopped = (e: unknown) => e instanceof MlaError && e.code === "INTERRUPTED" && /hint: the finished runs are kept in .* call study\(\) again with the same options to resume/.test(e.message);
  // convert logs its float64 route just before its layers.
  await assert.rejects(study({ ...base, out, ...stopsAt(/^factoring with/) }), stopped);
  assert.deepEqual(fs.readdirSync(out).filter((f) => f.includes("mla-rope")), [], "no model folder, whole or temporary");
  // After the first step (a stop before it, in the validation before training, leaves nothing to resume).
  await assert.rejects(study({ ...base, out, ...stopsAt(/^step 1\//) }), stopped);
  assert.ok(fs.existsSync(path.join(out, "mla-rope-L32-trained", "checkpoint", "state.json")));
  assert.ok(!fs.existsSync(path.join(out, "mla-rope-L32.row.json")));
  const done = await study({ ...base, out });
  assert.equal(done.stoppedEarly, false);
  assert.deepEqual(done.rows.map((r) => [r.valNll, r.curve]), straight.rows.map((r) => [r.valNll, r.curve]));
});

test("study's initialization: seeded, norms at 1, N(0, 0.02) matrices, residual writers scaled down", () => {
  const a = path.join(tmpDir(), "a"), b = path.join(tmpDir(), "b");
  initFromScratch(path.join(MODELS, "stories260K"), a, 3);
  initFromScratch(path.join(MODELS, "stories260K"), b, 3);
  const ca = Checkpoint.open(a), cb = Checkpoint.open(b);
  assert.deepEqual(ca.readF32("model.layers.0.self_attn.q_proj.weight"), cb.readF32("model.layers.0.self_attn.q_proj.weight"));
  assert.ok(ca.readF32("model.layers.1.input_layernorm.weight").every((x) => x === 1));
  const q = ca.readF32("model.layers.0.self_attn.q_proj.weight"), o = ca.readF32("model.layers.0.self_attn.o_proj.weight");
  const std = (x: Float32Array) => Math.sqrt(x.reduce((s, v) => s + v * v, 0) / x.length);
  assert.ok(Math.abs(std(q) - 0.02) < 0.002, `q_proj std ${std(q)}`);
  assert.ok(Math.abs(std(o) - 0.02 / Math.sqrt(10)) < 0.001, `o_proj std ${std(o)}`);
});

test("study refuses unknown variants and latent widths that do not split over the KV heads, naming them", async () => {
  assert.throws(() => latentWidth("d/3", 64, 4), (e: Error) => e instanceof MlaError && /--ranks d\/3 gives a latent of 21\.33/.test(e.message));
  assert.throws(() => latentWidth("d/0", 64, 4), (e: Error) => e instanceof MlaError && /^--ranks d\/0 divides the hidden size by 0\n/.test(e.message) && !/Infinity/.test(e.message));
  assert.equal(latentWidth("d/4", 64, 4), 16);
  assert.equal(latentWidth("24", 64, 4), 24);
  assert.equal(latentWidth("d", 64, 4), 64, "d: full rank");
  const base = { like: path.join(MODELS, "stories260K"), ranks: ["d/2"], data: DATA, tokens: 128, out: path.join(tmpDir(), "never"), progress: null };
  await assert.rejects(study({ ...base, variants: ["gqa" as never] }), /--variants: gqa is not known/);
  await assert.rejects(study({ ...base, variants: ["mha"], data: "/nonexistent.txt" }), /--data \/nonexistent.txt does not exist/);
});

test("study reads .xz training text through the xz tool, in memory: the runs train on its text, and no decompressed copy is written", { skip: spawnSync("xz", ["--version"]).status !== 0 ? "no xz tool on this machine" : false }, async () => {
  const dir = tmpDir();
  const xz = path.join(dir, "text.txt.xz");
  fs.writeFileSync(xz, spawnSync("xz", ["-c", DATA]).stdout);
  const o = { like: path.join(MODELS, "stories260K"), variants: ["mha"] as const, tokens: 2 * 4 * 32, seq: 32, batch: 4, valFraction: 0.05, device: "cpu" as const, progress: null };
  const r = await study({ ...o, data: xz, out: path.join(dir, "study") });
  const plain = await study({ ...o, data: DATA, out: path.join(dir, "plain") });
  assert.equal(r.rows[0]!.valNll, plain.rows[0]!.valNll);
  assert.deepEqual(r.rows[0]!.curve, plain.rows[0]!.curve);
  assert.ok(!fs.existsSync(path.join(dir, "study", "text.txt")), "no decompressed copy in OUT");
  assert.equal(fs.readdirSync(path.join(dir, "study", "tokens")).length, 1, "its tokens cached once");
});
