/**
 * The conversion flags `convert` and `pipeline` share: the calibration windows' flags are refused
 * without --calib (they were dropped unseen), --balance-kv either way with --svd split (balancing is
 * the joint SVD's), and with --calib the settings passed on are those yargs's defaults gave (a
 * pipeline's fingerprint); without it the windows are left out, as the library refuses them there,
 * and --balance-kv is passed only as given (a run the CLI started passing true still resumes). What
 * --format deepseek decides itself (--rope-disjoint, --svd, --attention, --kv-split) is refused given,
 * its default's value included, as everywhere else; our format gets the defaults yargs once filled in.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { conversionSettings, type ConversionArgs } from "../../src/cli/conversionOptions.js";
import { pipeline } from "../../src/pipeline.js";
import { runFingerprint } from "../../src/pipelineState.js";
import { FIXTURES, MODELS, ROOT, tmpDir } from "../helpers.js";

const MAIN = path.join(ROOT, "dist", "src", "cli", "main.js");
const CALIB = path.join(FIXTURES, "text", "tinystories.txt");

/** The arguments yargs hands the handlers when only --rank is given. */
const plain: ConversionArgs = { rank: 4, "svd-init": "weights", "refit-output": false };

test("--calib-samples / --calib-len without --calib are refused, naming them; with it they pass on", () => {
  assert.throws(() => conversionSettings({ ...plain, "calib-samples": 8 }, "mha2mla"), /^MlaError: --calib-samples has no effect without --calib FILE \(settings of the calibration windows\)\n {2}hint: add --calib FILE, or leave --calib-samples out$/);
  assert.throws(() => conversionSettings({ ...plain, "calib-samples": 8, "calib-len": 64 }, "mha2mla"), /--calib-samples and --calib-len have no effect without --calib FILE/);
  const s = conversionSettings({ ...plain, calib: CALIB, "calib-samples": 8, "calib-len": 64 }, "mha2mla");
  assert.deepEqual([s.calibSamples, s.calibLen], [8, 64]);
});

test("with --calib the window settings are those the yargs defaults gave; without it none (the library refuses windows without text); --balance-kv only as given", () => {
  // JSON as the legacy fingerprint hashed it (undefined fields dropped, keys in this order), less the
  // balanceKv: true yargs's default gave (the run identity counts an absent one as true: next test).
  assert.equal(JSON.stringify(conversionSettings({ ...plain, calib: CALIB }, "mha2mla")), JSON.stringify({ rank: 4, ropeDisjoint: false, svd: "joint", svdInit: "weights", refitOutput: false, calib: CALIB, calibSamples: 32, calibLen: 256, attention: "mla" }));
  assert.equal(JSON.stringify(conversionSettings(plain, "mha2mla")), JSON.stringify({ rank: 4, ropeDisjoint: false, svd: "joint", svdInit: "weights", refitOutput: false, attention: "mla" }));
  assert.equal(conversionSettings({ ...plain, "balance-kv": false }, "mha2mla").balanceKv, false);
  assert.equal(conversionSettings({ ...plain, "balance-kv": true }, "mha2mla").balanceKv, true);
});

test("a pipeline the CLI started without --calib when it passed the windows' defaults (32/256) and --balance-kv's (true) still resumes", async () => {
  const out = path.join(tmpDir(), "pl");
  fs.mkdirSync(out);
  const model = path.join(MODELS, "stories260K");
  // As the CLI passed the conversion then, and the ordered-JSON fingerprint of that time.
  const then = { rank: 2, ropeDisjoint: false, svd: "joint", svdInit: "weights", balanceKv: true, refitOutput: false, calibSamples: 32, calibLen: 256, attention: "mla" };
  const fingerprint = crypto.createHash("sha256").update(JSON.stringify({ spec: model, convert: then, format: "mha2mla", deepseek: null, finetune: null, export: null, evalText: CALIB })).digest("hex").slice(0, 16);
  fs.writeFileSync(path.join(out, "pipeline.json"), JSON.stringify({ fingerprint, model, settings: { out, convert: then, evalText: CALIB } }));
  fs.writeFileSync(path.join(out, "eval-original.json"), "{}");
  const r = await pipeline(model, { out, convert: conversionSettings({ ...plain, rank: 2 }, "mha2mla"), evalText: CALIB, device: "cpu", progress: null, shouldStop: () => true });
  assert.equal(r.stoppedEarly, true, "resumed (and stopped before the next phase), not refused as another run");
});

test("convert and pipeline on the command line refuse the idle flags before any work", () => {
  const parent = tmpDir();
  const out = path.join(parent, "out");
  const cases: [string[], RegExp][] = [
    [["convert", "stories260K", "--rank", "2", "--calib-samples", "8", "--out", out], /^error: --calib-samples has no effect without --calib FILE/m],
    [["convert", "stories260K", "--rank", "2", "--format", "deepseek", "--calib-len", "64", "--out", out], /^error: --calib-len has no effect without --calib FILE/m],
    [["convert", "stories260K", "--rank", "2", "--svd", "split", "--no-balance-kv", "--out", out], /^error: --no-balance-kv has no effect without --svd joint .*\n {2}hint: use --svd joint, or leave --no-balance-kv out/m],
    [["convert", "stories260K", "--rank", "2", "--svd", "split", "--balance-kv", "--out", out], /^error: --balance-kv has no effect without --svd joint .*\n {2}hint: use --svd joint, or leave --balance-kv out/m],
    [["convert", "stories260K", "--rank", "2", "--rope-strategy", "uniform", "--calib", CALIB, "--out", out], /^error: --calib has no effect without --rope-strategy 2-norm, /m],
    [["pipeline", MODELS + "/stories260K", "--rank", "2", "--eval-text", CALIB, "--calib-len", "64", "--out", out], /^error: --calib-len has no effect without --calib FILE/m],
    [["pipeline", MODELS + "/stories260K", "--rank", "2", "--eval-text", CALIB, "--svd", "split", "--no-balance-kv", "--out", out], /^error: --no-balance-kv has no effect without --svd joint/m],
    [["pipeline", MODELS + "/stories260K", "--rank", "2", "--eval-text", CALIB, "--rope-strategy", "high", "--calib", CALIB, "--out", out], /^error: --calib has no effect without --rope-strategy 2-norm, /m],
    [["pipeline", MODELS + "/stories260K", "--rank", "2", "--eval-text", CALIB, "--attention-bias", "--out", out], /^error: --attention-bias has no effect without --format deepseek or --export deepseek/m],
    // What --format deepseek decides itself, given, even at its default's value.
    [["convert", "stories260K", "--rank", "2", "--format", "deepseek", "--no-rope-disjoint", "--out", out], /^error: --no-rope-disjoint has no effect without --format mha2mla \(--format deepseek chooses its one shared rope key by RoRoPE\)\n {2}hint: drop --format deepseek to convert in our format, or leave --no-rope-disjoint out$/m],
    [["convert", "stories260K", "--rank", "2", "--format", "deepseek", "--svd", "joint", "--out", out], /^error: --svd joint has no effect without --format mha2mla \(--format deepseek always factors keys and values jointly\)/m],
    [["convert", "stories260K", "--rank", "2", "--format", "deepseek", "--attention", "mla", "--out", out], /^error: --attention mla has no effect without --format mha2mla \(DeepSeek-V3's attention has no EG-MLA gate\)/m],
    [["pipeline", MODELS + "/stories260K", "--rank", "2", "--format", "deepseek", "--eval-text", CALIB, "--kv-split", "uniform", "--out", out], /^error: --kv-split uniform has no effect without --format mha2mla \(deepseek_v3 has one kv_lora_rank and one rope dim for every layer\)/m],
    [["pipeline", MODELS + "/stories260K", "--rank", "2", "--format", "deepseek", "--eval-text", CALIB, "--svd", "split", "--out", out], /^error: --svd split has no effect without --format mha2mla/m],
  ];
  for (const [args, re] of cases) {
    const r = spawnSync(process.execPath, [MAIN, ...args, "--device", "reference"], { encoding: "utf8" });
    assert.equal(r.status, 1, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, re, args.join(" "));
  }
  assert.deepEqual(fs.readdirSync(parent), [], "nothing written");
  const dry = spawnSync(process.execPath, [MAIN, "convert", "stories260K", "--rank", "2", "--calib", CALIB, "--calib-samples", "4", "--calib-len", "64", "--dry-run"], { encoding: "utf8" });
  assert.equal(dry.status, 0, dry.stderr);
  // The defaults that do not apply are no one's mistake: split balances nothing, and says so in its plan.
  const split = spawnSync(process.execPath, [MAIN, "convert", "stories260K", "--rank", "2", "--svd", "split", "--dry-run", "--json"], { encoding: "utf8" });
  assert.equal(split.status, 0, split.stderr);
  assert.equal(JSON.parse(split.stdout).plan.settings.balanceKv, false);
  const deepseek = spawnSync(process.execPath, [MAIN, "convert", "stories260K", "--rank", "2", "--format", "deepseek", "--dry-run"], { encoding: "utf8" });
  assert.equal(deepseek.status, 0, deepseek.stderr);
});

test("--format deepseek gets --rope-disjoint, --svd, --attention and --kv-split only as given; our format their defaults", () => {
  assert.equal(JSON.stringify(conversionSettings(plain, "deepseek")), JSON.stringify({ rank: 4, svdInit: "weights", refitOutput: false }));
  assert.equal(conversionSettings({ ...plain, "kv-split": "uniform" }, "deepseek").kvSplit, "uniform");
  assert.equal(conversionSettings({ ...plain, "kv-split": "uniform" }, "mha2mla").kvSplit, undefined);
  assert.equal(conversionSettings({ ...plain, "rope-disjoint": false }, "deepseek").ropeDisjoint, false);
});

test("a --format deepseek pipeline the CLI started when it passed --no-rope-disjoint, --svd joint and --attention mla still resumes", async () => {
  const out = path.join(tmpDir(), "pl");
  fs.mkdirSync(out);
  const model = path.join(MODELS, "stories260K");
  const then = { rank: 2, ropePairs: 1, ropeDisjoint: false, svd: "joint", svdInit: "weights", refitOutput: false, attention: "mla" } as const;
  const was = { out, convert: then, format: "deepseek" as const, evalText: CALIB };
  const now = { out, convert: conversionSettings({ ...plain, rank: 2, "rope-pairs": 1 }, "deepseek"), format: "deepseek" as const, evalText: CALIB };
  assert.equal(runFingerprint(model, now), runFingerprint(model, was), "the same fingerprint");
  fs.writeFileSync(path.join(out, "pipeline.json"), JSON.stringify({ fingerprint: runFingerprint(model, was), model, settings: was }));
  fs.writeFileSync(path.join(out, "eval-original.json"), "{}");
  return pipeline(model, { ...now, device: "cpu", progress: null, shouldStop: () => true }).then((r) => assert.equal(r.stoppedEarly, true, "resumed, not refused as another run"));
});
