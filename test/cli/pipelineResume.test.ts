/**
 * A pipeline's --out resumes under the same run, whatever order the options were written in and on
 * whichever device; a run with other settings is refused, naming each option that differs with the
 * run's value and this call's.
 */
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { pipeline, type PipelineOptions } from "../../src/pipeline.js";
import { runFingerprint } from "../../src/pipelineState.js";
import { canonicalJson } from "../../src/util/canonicalJson.js";
import { FIXTURES, MODELS, tmpDir } from "../helpers.js";

const MODEL = path.join(MODELS, "stories260K");
const TEXT = path.join(FIXTURES, "text", "tinystories.txt");

/** Runs that stop before their first phase: they only write (or check) pipeline.json. */
const quiet = { progress: null, shouldStop: () => true } as const;

/** An --out holding a run of `o` (its pipeline.json) and something a phase left, so a re-run must resume or be refused. */
async function startedRun(o: Omit<PipelineOptions, "out">): Promise<string> {
  const out = path.join(tmpDir(), "pl");
  const r = await pipeline(MODEL, { ...o, out, ...quiet });
  assert.equal(r.stoppedEarly, true);
  fs.writeFileSync(path.join(out, "eval-original.json"), "{}");
  return out;
}

test("canonical JSON: key order does not matter, array order does, undefined fields are left out", () => {
  assert.equal(canonicalJson({ b: 1, a: { d: [2, 1], c: undefined } }), canonicalJson({ a: { d: [2, 1] }, b: 1 }));
  assert.notEqual(canonicalJson({ a: [1, 2] }), canonicalJson({ a: [2, 1] }));
});

test("the fingerprint ignores the options' key order, the device and how often the fine-tune saves, not a setting", () => {
  const a: PipelineOptions = { out: "x", convert: { rank: 2, ropePairs: 1 }, evalText: TEXT, finetune: { data: [TEXT], tokens: 2048, lr: 1e-3, device: "cpu" }, device: "cpu" };
  const b: PipelineOptions = { device: "reference", finetune: { device: "reference", lr: 1e-3, tokens: 2048, data: [TEXT], saveEvery: 5, saveEveryMinutes: 10 }, evalText: TEXT, convert: { ropePairs: 1, rank: 2 }, out: "y" };
  assert.equal(runFingerprint(MODEL, a), runFingerprint(MODEL, b));
  assert.notEqual(runFingerprint(MODEL, a), runFingerprint(MODEL, { ...a, convert: { rank: 3, ropePairs: 1 } }));
  assert.notEqual(runFingerprint(MODEL, a), runFingerprint(MODEL, { ...a, finetune: { ...a.finetune!, data: [TEXT, TEXT] } }));
});

test("a pipeline with --finetune-data resumes with its options in another order and on another device", async () => {
  const out = await startedRun({ convert: { rank: 2, ropePairs: 1 }, evalText: TEXT, finetune: { data: [TEXT], tokens: 2048, seq: 32 }, device: "cpu" });
  const logged: string[] = [];
  const r = await pipeline(MODEL, { device: "reference", finetune: { seq: 32, tokens: 2048, data: [TEXT], device: "reference" }, evalText: TEXT, convert: { ropePairs: 1, rank: 2 }, out, ...quiet, logger: { info: (m) => logged.push(m), warn: () => {} } });
  assert.equal(r.stoppedEarly, true, "resumed, not refused");
  assert.ok(logged.some((m) => /^resuming the pipeline in /.test(m)), logged.join("\n"));
});

test("a pipeline with other settings is refused, naming each option that differs with both values", async () => {
  const base = { convert: { rank: 2, ropePairs: 1 }, evalText: TEXT, evalTokens: 300, finetune: { data: [TEXT], tokens: 2048 }, device: "cpu" as const };
  const out = await startedRun(base);
  const other = { ...base, convert: { rank: 3, ropePairs: 1 }, evalTokens: undefined, finetune: { data: [TEXT], tokens: 2048, lr: 5e-4 } };
  await assert.rejects(pipeline(MODEL, { ...other, out, ...quiet }), (e: unknown) => {
    assert.ok(e instanceof MlaError && e.code === "EXISTS", String(e));
    assert.match(e.message, /from a pipeline with other settings: /);
    for (const clause of [/--rank 2 → 3/, /--eval-tokens 300 → \(not given\)/, /--lr \(not given\) → 5e-4/]) assert.match(e.message, clause);
    assert.doesNotMatch(e.message, /--rope-pairs|--finetune-data|--tokens|--seq/, "options that agree are not named");
    assert.match(e.message, /hint: re-run with the run's values to resume it, pass --force to start over/);
    return true;
  });
  assert.ok(fs.existsSync(path.join(out, "eval-original.json")), "the run is kept");
});

test("a re-run naming the same files by other paths (./x for x, absolute for relative) and giving a fine-tune default resumes", async () => {
  const rel = (p: string) => path.relative(process.cwd(), p);
  const out = await startedRun({ convert: { rank: 2, ropePairs: 1, calib: TEXT }, evalText: TEXT, finetune: { data: [TEXT], tokens: 2048 }, device: "cpu" });
  const logged: string[] = [];
  const dotted = (p: string) => `.${path.sep}${rel(p)}`;
  const r = await pipeline(MODEL, { convert: { rank: 2, ropePairs: 1, calib: dotted(TEXT) }, evalText: rel(TEXT), finetune: { data: [dotted(TEXT)], tokens: 2048, seq: 256, warmup: 0.05 }, device: "cpu", out, ...quiet, logger: { info: (m) => logged.push(m), warn: () => {} } });
  assert.equal(r.stoppedEarly, true, "resumed, not refused");
  assert.ok(logged.some((m) => /^resuming the pipeline in /.test(m)), logged.join("\n"));
  // Another file is still another run, named as given.
  const other = path.join(FIXTURES, "text", "tinystories_25k.txt");
  await assert.rejects(pipeline(MODEL, { convert: { rank: 2, ropePairs: 1, calib: TEXT }, evalText: TEXT, finetune: { data: [rel(other)], tokens: 2048 }, device: "cpu", out, ...quiet }), (e: unknown) => {
    assert.ok(e instanceof MlaError && e.code === "EXISTS", String(e));
    assert.ok(e.message.includes(`--finetune-data ${TEXT} → ${rel(other)}`), e.message);
    assert.doesNotMatch(e.message, /--eval-text|--calib/);
    return true;
  });
});

test("a run started with relative paths resumes from another working folder naming the same files (pipeline.json records where it was started)", async () => {
  const home = process.cwd();
  const a = tmpDir(), b = tmpDir();
  fs.mkdirSync(path.join(a, "rel"));
  fs.copyFileSync(TEXT, path.join(a, "rel", "t.txt"));
  fs.cpSync(MODEL, path.join(a, "inp"), { recursive: true });
  const out = path.join(a, "pl");
  try {
    process.chdir(a);
    const first = await pipeline("inp", { convert: { rank: 2, ropePairs: 1 }, evalText: "rel/t.txt", finetune: { data: ["rel/t.txt"], tokens: 2048 }, device: "cpu", out: "pl", ...quiet });
    assert.equal(first.stoppedEarly, true);
    fs.writeFileSync(path.join(out, "eval-original.json"), "{}");
    process.chdir(b);
    const from = path.relative(b, a);
    const logged: string[] = [];
    const r = await pipeline(path.join(from, "inp"), { convert: { rank: 2, ropePairs: 1 }, evalText: path.join(from, "rel", "t.txt"), finetune: { data: [path.join(a, "rel", "t.txt")], tokens: 2048 }, device: "cpu", out, ...quiet, logger: { info: (m) => logged.push(m), warn: () => {} } });
    assert.equal(r.stoppedEarly, true, "resumed, not refused");
    assert.ok(logged.some((m) => /^resuming the pipeline in /.test(m)), logged.join("\n"));
  } finally {
    process.chdir(home);
  }
});

test("a re-run adding a fine-tune to a run without one names --finetune-data and --tokens, not every fine-tune default", async () => {
  const base = { convert: { rank: 2, ropePairs: 1 }, evalText: TEXT, device: "cpu" as const };
  const out = await startedRun(base);
  await assert.rejects(pipeline(MODEL, { ...base, finetune: { data: [TEXT], tokens: 2048 }, out, ...quiet }), (e: unknown) => {
    assert.ok(e instanceof MlaError && e.code === "EXISTS", String(e));
    assert.ok(e.message.includes(`--finetune-data (not given) → ${TEXT}`), e.message);
    assert.match(e.message, /--tokens \(not given\) → 2048/);
    assert.doesNotMatch(e.message, /→ \(not given\)|accum|warmup|--seq|--batch/, "options at their defaults are not named");
    return true;
  });
});

test("--force never empties a folder that holds no pipeline run, nor a fine-tune's one that holds no run: refused, its files kept", async () => {
  const out = path.join(tmpDir(), "models");
  fs.mkdirSync(out);
  fs.writeFileSync(path.join(out, "notes.txt"), "important\n");
  await assert.rejects(pipeline(MODEL, { convert: { rank: 2, ropePairs: 1 }, evalText: TEXT, device: "cpu", out, force: true, ...quiet }), (e: unknown) => e instanceof MlaError && e.code === "EXISTS" && /holds no pipeline run \(no pipeline\.json\): it holds notes\.txt, and --force replaces only an earlier output/.test(e.message));
  const { finetune } = await import("../../src/finetune/trainer.js");
  await assert.rejects(finetune(MODEL, { data: [TEXT], out, force: true, tokens: 64, device: "cpu", progress: null }), (e: unknown) => e instanceof MlaError && e.code === "EXISTS" && /holds no fine-tuning run/.test(e.message));
  assert.deepEqual(fs.readdirSync(out), ["notes.txt"]);
});

test("once the conversion is written, a re-run giving --lr at the default for the converted model's size resumes (and one started with it resumes without it); another --lr is refused", async () => {
  const out = path.join(tmpDir(), "pl");
  const base = { convert: { rank: 2, ropePairs: 1 }, evalText: TEXT, evalTokens: 300, finetune: { data: [TEXT], tokens: 2048 }, device: "cpu" as const, progress: null };
  const converted = () => fs.existsSync(path.join(out, "mla", "config.json"));
  const r = await pipeline(MODEL, { ...base, out, shouldStop: converted });
  assert.equal(r.stoppedEarly, true);
  assert.ok(converted(), "the conversion was written");
  const logged: string[] = [];
  const logger = { info: (m: string) => logged.push(m), warn: () => {} };
  // The converted stories260K has under 10M parameters: its default learning rate is 1e-3 (defaultLr).
  const same = await pipeline(MODEL, { ...base, finetune: { ...base.finetune, lr: 1e-3 }, out, shouldStop: () => true, logger });
  assert.equal(same.stoppedEarly, true);
  assert.ok(logged.some((m) => /^resuming the pipeline in /.test(m)), logged.join("\n"));
  await assert.rejects(pipeline(MODEL, { ...base, finetune: { ...base.finetune, lr: 5e-4 }, out, shouldStop: () => true }), (e: unknown) => {
    assert.ok(e instanceof MlaError && e.code === "EXISTS", String(e));
    assert.match(e.message, /--lr \(not given: 1e-3\) → 5e-4/, "the value the run computes with");
    return true;
  });
  // Started with the default given, re-run without it.
  const out2 = path.join(tmpDir(), "pl2");
  await pipeline(MODEL, { ...base, finetune: { ...base.finetune, lr: 1e-3 }, out: out2, shouldStop: () => fs.existsSync(path.join(out2, "mla", "config.json")) });
  const again = await pipeline(MODEL, { ...base, out: out2, shouldStop: () => true });
  assert.equal(again.stoppedEarly, true, "resumed, not refused");
});

test("a run an earlier version started (fingerprint of ordered JSON, the fine-tune's device in it) resumes on another device from its recorded settings", async () => {
  const out = path.join(tmpDir(), "pl");
  fs.mkdirSync(out);
  const settings = { out, convert: { rank: 2 }, evalText: TEXT, finetune: { data: [TEXT], tokens: 2048, device: "cuda" }, device: "cuda" };
  const then = { spec: MODEL, convert: settings.convert, format: "mha2mla", deepseek: null, finetune: { data: [TEXT], tokens: 2048, device: "cuda", seq: 256, batch: 16 }, export: null, evalText: TEXT };
  const fingerprint = crypto.createHash("sha256").update(JSON.stringify(then)).digest("hex").slice(0, 16);
  fs.writeFileSync(path.join(out, "pipeline.json"), JSON.stringify({ fingerprint, model: MODEL, settings }));
  fs.writeFileSync(path.join(out, "eval-original.json"), "{}");
  const r = await pipeline(MODEL, { out, convert: { rank: 2 }, evalText: TEXT, finetune: { data: [TEXT], tokens: 2048 }, device: "cpu", ...quiet });
  assert.equal(r.stoppedEarly, true, "resumed, not refused");
  await assert.rejects(pipeline(MODEL, { out, convert: { rank: 2 }, evalText: TEXT, finetune: { data: [TEXT], tokens: 4096 }, device: "cpu", ...quiet }), /--tokens 2048 → 4096/);
});

test("settings that do nothing do not count: --balance-kv under the split SVD, calibration windows without --calib, a --calib no phase reads (a run started with them resumes without them)", () => {
  const base: PipelineOptions = { out: "x", convert: { rank: 2, ropePairs: 1, svd: "split" }, evalText: TEXT };
  assert.equal(runFingerprint(MODEL, base), runFingerprint(MODEL, { ...base, convert: { ...base.convert!, balanceKv: false } }));
  assert.equal(runFingerprint(MODEL, base), runFingerprint(MODEL, { ...base, convert: { ...base.convert!, balanceKv: true } }));
  assert.equal(runFingerprint(MODEL, base), runFingerprint(MODEL, { ...base, convert: { ...base.convert!, calibSamples: 8, calibLen: 64 } }));
  const uniform: PipelineOptions = { ...base, convert: { rank: 2, ropePairs: 1, ropeStrategy: "uniform" } };
  assert.equal(runFingerprint(MODEL, uniform), runFingerprint(MODEL, { ...uniform, convert: { ...uniform.convert!, calib: TEXT, calibSamples: 8 } }));
  const joint: PipelineOptions = { ...base, convert: { rank: 2, ropePairs: 1, calib: TEXT } };
  assert.notEqual(runFingerprint(MODEL, joint), runFingerprint(MODEL, { ...joint, convert: { ...joint.convert!, balanceKv: false } }));
  assert.notEqual(runFingerprint(MODEL, joint), runFingerprint(MODEL, { ...joint, convert: { ...joint.convert!, calibSamples: 8 } }));
  // Under the joint SVD an absent --balance-kv is the default: the CLI passed true until it passed only a given one.
  assert.equal(runFingerprint(MODEL, joint), runFingerprint(MODEL, { ...joint, convert: { ...joint.convert!, balanceKv: true } }));
  // A text the bias-free export reads counts, even where the conversion reads none.
  const exported: PipelineOptions = { ...uniform, convert: { ...uniform.convert!, ropeDisjoint: true }, export: "deepseek", attentionBias: false };
  assert.notEqual(runFingerprint(MODEL, exported), runFingerprint(MODEL, { ...exported, convert: { ...exported.convert!, calib: TEXT } }));
});

test("a run started before they were refused, with settings that do nothing, resumes without them; with them it is refused, naming them", async () => {
  for (const idle of [{ svd: "split", balanceKv: false }, { svd: "split", balanceKv: true }, { ropeStrategy: "uniform", calib: TEXT, calibSamples: 8 }] as const) {
    const out = path.join(tmpDir(), "pl");
    fs.mkdirSync(out);
    const rest = "svd" in idle ? { svd: idle.svd } : { ropeStrategy: idle.ropeStrategy };
    // pipeline.json as the run's version wrote it (its fingerprint is another version's: the recorded settings decide).
    fs.writeFileSync(path.join(out, "pipeline.json"), JSON.stringify({ fingerprint: "0123456789abcdef", model: MODEL, settings: { out, convert: { rank: 2, ropePairs: 1, ...idle }, evalText: TEXT } }));
    fs.writeFileSync(path.join(out, "eval-original.json"), "{}");
    await assert.rejects(pipeline(MODEL, { out, convert: { rank: 2, ropePairs: 1, ...idle }, evalText: TEXT, device: "cpu", ...quiet }), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && /has no effect without[\s\S]*hint: .*, or leave /.test(e.message));
    const r = await pipeline(MODEL, { out, convert: { rank: 2, ropePairs: 1, ...rest }, evalText: TEXT, device: "cpu", ...quiet });
    assert.equal(r.stoppedEarly, true, `${JSON.stringify(idle)}: resumed, not refused`);
  }
});

test("an --out that holds no pipeline run (a fine-tune's folder) is refused without the hint to re-run the same command, which would not resume anything", async () => {
  const out = path.join(tmpDir(), "ft");
  fs.mkdirSync(out);
  fs.writeFileSync(path.join(out, "train_log.jsonl"), "{}\n");
  await assert.rejects(pipeline(MODEL, { out, convert: { rank: 2, ropePairs: 1 }, evalText: TEXT, device: "cpu", ...quiet }), (e: unknown) => {
    assert.ok(e instanceof MlaError && e.code === "EXISTS", String(e));
    assert.match(e.message, /already exists and holds no pipeline run \(no pipeline\.json\)\n\s*hint: choose another --out, or pass --force/);
    assert.doesNotMatch(e.message, /re-run|resume/);
    return true;
  });
  assert.deepEqual(fs.readdirSync(out), ["train_log.jsonl"], "nothing changed");
});
