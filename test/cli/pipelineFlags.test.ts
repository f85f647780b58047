/**
 * `pipeline` checks every option that needs no phase's result before its first phase, and before
 * --force clears an earlier run (a bad --lr used to surface after the conversion and evaluations,
 * and the corrected command then needed --force). Options of a phase that is off (--rope-dim without
 * --format deepseek, --lr without --finetune-data) are refused, naming both flags.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { pipeline, type PipelineOptions } from "../../src/pipeline.js";
import { assertKept, earlierOut, FIXTURES, MODELS, pastVocabModel, pastVocabPiqa, ROOT, tmpDir } from "../helpers.js";

const MAIN = path.join(ROOT, "dist", "src", "cli", "main.js");
const MODEL = path.join(MODELS, "stories260K");
const TEXT = path.join(FIXTURES, "text", "tinystories.txt");
const HAVE_CUDA = fs.existsSync(path.join(ROOT, "build", "native", "libmla_cuda.so"));

/** A folder holding stories260K's config.json with `changes` (with `whole`, its other files too). */
function withConfig(changes: Record<string, unknown>, whole = false): string {
  const dir = tmpDir();
  if (whole) fs.cpSync(MODEL, dir, { recursive: true });
  const config = JSON.parse(fs.readFileSync(path.join(MODEL, "config.json"), "utf8")) as Record<string, unknown>;
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify({ ...config, ...changes }));
  return dir;
}

/** A teacher whose vocabulary differs from stories260K's: only its config is read. */
const otherVocabTeacher = () => withConfig({ vocab_size: 1000 });

/** A teacher of the student's vocabulary size whose tokenizer.json gives two ids each other's token. */
function otherTokensTeacher(): string {
  const dir = tmpDir();
  fs.cpSync(MODEL, dir, { recursive: true });
  const tj = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")) as { model: { vocab: Record<string, number> } };
  const [x, y] = Object.keys(tj.model.vocab).filter((t) => tj.model.vocab[t]! >= 300);
  [tj.model.vocab[x!], tj.model.vocab[y!]] = [tj.model.vocab[y!]!, tj.model.vocab[x!]!];
  fs.writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify(tj));
  return dir;
}

function cli(args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: "utf8" });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function badJsonl(): string {
  const f = path.join(tmpDir(), "bad.jsonl");
  fs.writeFileSync(f, '{"text": "Once upon a time"}\n{"txt": "no text field"}\n');
  return f;
}

function emptyFile(): string {
  const f = path.join(tmpDir(), "empty.txt");
  fs.writeFileSync(f, "");
  return f;
}

test("pipeline refuses a bad option of any phase before the first phase runs, --force or not, naming the flag", async () => {
  const empty = path.join(tmpDir(), "empty.txt");
  fs.writeFileSync(empty, "");
  const base: PipelineOptions = { out: "", force: true, convert: { rank: 2 }, evalText: TEXT, device: "reference", progress: null };
  const cases: [Partial<PipelineOptions>, RegExp][] = [
    // convert (our format and deepseek_v3)
    [{ convert: { rank: 999 } }, /--rank 999 is out of range/],
    [{ convert: { rank: 2, ropePairs: 9 } }, /--rope-pairs 9 is out of range/],
    [{ convert: { rank: 2, calib: empty } }, /text file .*empty\.txt is empty/],
    [{ convert: { rank: 2, calib: TEXT, calibSamples: 0 } }, /--calib-samples 0 is not a positive integer/],
    [{ convert: { rank: 2, calib: TEXT, calibLen: 1 } }, /--calib-len 1 is too small/],
    [{ convert: { rank: 2, svdInit: "activations" } }, /--svd-init activations needs calibration text/],
    [{ convert: { rank: 2, attention: "eg-mla", gateDim: 0 } }, /--gate-dim 0 is not a positive integer/],
    [{ format: "deepseek", convert: { rank: 2, ropeStrategy: "high" } }, /^--rope-strategy has no effect without --format mha2mla \(--format deepseek chooses its one shared rope key by RoRoPE\)/],
    [{ format: "deepseek", convert: { rank: 2, svd: "joint" } }, /^--svd joint has no effect without --format mha2mla/],
    [{ format: "deepseek", deepseek: { ropeDim: 3 } }, /--rope-dim 3 must be even/],
    [{ format: "deepseek", deepseek: { kvLoraRank: 1 } }, /kv_lora_rank 1 is out of range/],
    // evaluations
    [{ evalTokens: 0 }, /--eval-tokens 0 is not a positive count/],
    [{ evalText: undefined }, /nothing to evaluate\n {2}hint: pass --eval-text FILE/],
    [{ evalText: empty }, /text file .*empty\.txt is empty/],
    // fine-tune
    [{ finetune: { data: [TEXT], lr: 0 } }, /--lr 0 must be a positive number/],
    [{ finetune: { data: [FIXTURES] } }, /fixtures is a folder, not a text file/],
    [{ finetune: { data: [TEXT], tokens: 0.5 } }, /--tokens 0\.5 must be a positive integer/],
    [{ finetune: { data: [TEXT], seq: 1 } }, /--seq 1 is too small/],
    [{ finetune: { data: [TEXT], batch: 0 } }, /--batch 0 must be a positive integer/],
    [{ finetune: { data: [TEXT], seed: 1.5 } }, /--seed 1\.5 is not a whole number in \[0, 2\^32\)/],
    [{ evalCtx: 1 }, /--eval-ctx 1 is too small/],
    // finetune's own data check (it takes .xz corpora): an empty file is named by the pipeline's flag.
    [{ finetune: { data: [emptyFile()] } }, /--finetune-data .*empty\.txt is empty/],
    // A .jsonl file's bad line is found before the conversion, not when fine-tuning starts.
    [{ finetune: { data: [badJsonl()] } }, /bad\.jsonl:2: no string "text" field/],
    [{ finetune: { data: [TEXT], distill: "no-such-model" } }, /model "no-such-model" was not found/],
    [{ finetune: { data: [TEXT], distill: otherVocabTeacher() } }, /--distill .* has a vocabulary of 1000, the student 512/],
    [{ finetune: { data: [TEXT], distill: otherTokensTeacher() } }, /--distill .* has another vocabulary than the student, of the same size \(512\): id \d+ is /],
    // export
    [{ export: "deepseek", convert: { rank: 2, ropeDisjoint: true, attention: "eg-mla" } }, /EG-MLA/],
    ...(HAVE_CUDA ? [] : ([[{ device: "cuda" }, /--device cuda: /]] as [Partial<PipelineOptions>, RegExp][])),
  ];
  for (const [opts, re] of cases) {
    const out = earlierOut();
    await assert.rejects(pipeline(MODEL, { ...base, ...opts, out }), (e: unknown) => e instanceof MlaError && re.test(e.message), `${JSON.stringify(opts)} → ${re}`);
    assertKept(out);
  }
});

test("pipeline refuses an --eval-text or a task item whose ids pass the model's vocabulary before the conversion (the evaluations after it found them), naming the file", async () => {
  const model = pastVocabModel();
  const zz = path.join(tmpDir(), "zz.txt");
  fs.writeFileSync(zz, "Once upon a time <zz> there was a little girl named Lily.\n");
  const past = "past its vocabulary of 512 \\(vocab_size in \\S+config\\.json\\)";
  const cases: [Partial<PipelineOptions>, RegExp][] = [
    [{ evalText: zz }, new RegExp(`^the model's tokenizer gives id 600 for --eval-text \\S+zz\\.txt, ${past}`)],
    [{ evalText: TEXT, tasks: ["piqa"], dataDir: pastVocabPiqa() }, new RegExp(`^the model's tokenizer gives id 600 for \\S+piqa\\.test\\.json item 0, ${past}`)],
  ];
  for (const [opts, re] of cases) {
    const out = earlierOut();
    await assert.rejects(pipeline(model, { out, force: true, convert: { rank: 2 }, device: "reference", progress: null, ...opts }), (e: unknown) => e instanceof MlaError && re.test(e.message) && /hint: /.test(e.message), `${JSON.stringify(opts)} → ${re}`);
    assertKept(out);
  }
});

test("pipeline refuses --finetune-data whose ids the model's tokenizer puts past the vocabulary before the conversion (the fine-tune phase found them after it), naming the file; its scratch token cache is removed", async () => {
  const model = pastVocabModel();
  const zz = path.join(tmpDir(), "zz.txt");
  fs.writeFileSync(zz, "Once upon a time <zz> there was a little girl named Lily. She liked to play.\n".repeat(40));
  const out = earlierOut();
  const logged: string[] = [];
  const logger = { info: (m: string) => logged.push(m), warn: (m: string) => logged.push(`warning: ${m}`) };
  const want = `the model's tokenizer gives id 600 for ${zz}, past its vocabulary of 512 (vocab_size in ${path.join(model, "config.json")})\n  hint: the tokenizer and the model do not match: put the model's own tokenizer.json beside its weights`;
  await assert.rejects(pipeline(model, { out, force: true, convert: { rank: 2 }, evalText: TEXT, finetune: { data: [TEXT, zz], seq: 32, batch: 4 }, device: "reference", progress: null, logger }), (e: unknown) => e instanceof MlaError && e.message === want, logged.join("\n"));
  assertKept(out);
  const scratch = /the fine-tune phase reads the tokens from (\S+)\)$/.exec(logged.find((m) => m.includes("tokenizing --finetune-data now")) ?? "")?.[1];
  assert.ok(scratch, logged.join("\n"));
  assert.ok(!fs.existsSync(scratch), "the scratch token cache is removed");
  // A token cache of its own, which the check would fill, is checked first as the phase checks it.
  await assert.rejects(pipeline(model, { out, force: true, convert: { rank: 2 }, evalText: TEXT, finetune: { data: [zz], tokenCache: out }, device: "reference", progress: null }), (e: unknown) => e instanceof MlaError && e.message.startsWith(`--token-cache ${out} holds the converted model's folder (${path.join(out, "mla")})`), "--token-cache over the phases' folders");
  assertKept(out);
});

test("a pipeline that tokenized --finetune-data up front (its tokenizer has ids past the vocabulary) fine-tunes on the tokens it cached then, without tokenizing again", async () => {
  const model = pastVocabModel();
  const logged: string[] = [];
  const logger = { info: (m: string) => logged.push(m), warn: (m: string) => logged.push(`warning: ${m}`) };
  const r = await pipeline(model, { out: path.join(tmpDir(), "pl"), convert: { rank: 4, ropePairs: 1 }, finetune: { data: [TEXT], tokens: 2 * 4 * 32, seq: 32, batch: 4 }, evalText: TEXT, evalTokens: 200, device: "reference", progress: null, logger });
  assert.ok(r.phases.some((p) => p.name === "finetune" && !p.skipped));
  const all = logged.join("\n");
  assert.equal(logged.filter((m) => m.startsWith(`tokenizing ${TEXT}:`)).length, 1, all);
  const cached = logged.filter((m) => m.startsWith(`${TEXT}: `) && m.includes(" tokens from the token cache "));
  assert.equal(cached.length, 1, all);
  const scratch = /the fine-tune phase reads the tokens from (\S+)\)$/.exec(logged.find((m) => m.includes("tokenizing --finetune-data now")) ?? "")?.[1];
  assert.ok(scratch && cached[0]!.includes(scratch), all);
  assert.ok(!fs.existsSync(scratch), "the scratch token cache is removed when the run ends");
});

test("pipeline refuses options of a phase that is off, naming both flags", async () => {
  const base: PipelineOptions = { out: "", force: true, convert: { rank: 2 }, evalText: TEXT, device: "reference", progress: null };
  const cases: [Partial<PipelineOptions>, RegExp][] = [
    [{ deepseek: { ropeDim: 4, kvLoraRank: 8 } }, /--rope-dim and --kv-lora-rank have no effect without --format deepseek .*\n {2}hint: add --format deepseek, or leave --rope-dim and --kv-lora-rank out/],
    [{ finetune: { data: [], lr: 1e-3, seq: 32 } }, /--lr and --seq have no effect without --finetune-data FILE .*\n {2}hint: add --finetune-data FILE, or leave --lr and --seq out/],
    [{ finetune: { data: [] } }, /--finetune-data names no files/],
    [{ evalTokens: 100, evalText: undefined, tasks: ["arc-easy"] }, /--eval-tokens has no effect without --eval-text FILE/],
    [{ limit: 5 }, /--limit has no effect without --tasks a,b/],
    [{ evalCtx: 128, evalText: undefined, tasks: ["arc-easy"] }, /--eval-ctx has no effect without --eval-text FILE/],
    [{ dataDir: FIXTURES }, /--data-dir has no effect without --tasks a,b/],
  ];
  for (const [opts, re] of cases) {
    const out = earlierOut();
    await assert.rejects(pipeline(MODEL, { ...base, ...opts, out }), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message), `${JSON.stringify(opts)} → ${re}`);
    assertKept(out);
  }
});

test("pipeline on the command line: fine-tuning and deepseek flags alone are refused, and a bad --rank with --force keeps the earlier run", () => {
  const common = ["pipeline", MODEL, "--rank", "2", "--eval-text", TEXT, "--device", "reference"];
  const never = path.join(tmpDir(), "never");
  // --seq and --batch have no yargs default any more, so giving one is seen.
  const tuning = cli([...common, "--out", never, "--seq", "32", "--lr", "0.001"]);
  assert.equal(tuning.code, 1, tuning.stderr);
  assert.match(tuning.stderr, /^error: --seq and --lr have no effect without --finetune-data FILE/m);
  const saving = cli([...common, "--out", never, "--save-every-minutes", "10"]);
  assert.equal(saving.code, 1, saving.stderr);
  assert.match(saving.stderr, /^error: --save-every-minutes has no effect without --finetune-data FILE/m);
  const ropeDim = cli([...common, "--out", never, "--rope-dim", "4"]);
  assert.equal(ropeDim.code, 1, ropeDim.stderr);
  assert.match(ropeDim.stderr, /^error: --rope-dim has no effect without --format deepseek/m);
  assert.equal(fs.existsSync(never), false);
  const out = earlierOut();
  const rank = cli(["pipeline", MODEL, "--rank", "999", "--eval-text", TEXT, "--device", "reference", "--out", out, "--force"]);
  assert.equal(rank.code, 1, rank.stderr);
  assert.match(rank.stderr, /^error: --rank 999 is out of range/m);
  assert.doesNotMatch(rank.stderr, /pipeline: convert/, "refused before the first phase");
  assertKept(out);
});

test("a fine-tune its phase would refuse (memory, --precision, end-of-text id) is refused before the conversion, with finetune's words; nothing is written", async () => {
  const eosPastVocab = withConfig({ eos_token_id: 600 }, true);
  // 65536 sequences of 65536 tokens: their activations pass any machine's memory.
  const huge = { data: [TEXT], seq: 65536, batch: 65536 };
  const cases: [string, PipelineOptions["finetune"], RegExp][] = [
    [MODEL, huge, /^training [\d,]+ parameters \(f32, --train all\) needs about [\d.]+ GiB of host memory beyond the float32 weights it will load .*\n {2}hint: a smaller --batch or --seq/s],
    [MODEL, { data: [TEXT], precision: "bf16" }, /^--precision bf16 needs a backend with bf16 GEMMs; reference has none/],
    [eosPastVocab, { data: [TEXT] }, /config\.json: "eos_token_id" is 600, past the 512-token vocabulary; fine-tuning puts it between documents/],
  ];
  for (const [model, finetune, re] of cases) {
    const out = path.join(tmpDir(), "pl");
    await assert.rejects(pipeline(model, { out, convert: { rank: 2 }, evalText: TEXT, device: "reference", progress: null, finetune }), (e: unknown) => e instanceof MlaError && re.test(e.message), String(re));
    assert.equal(fs.existsSync(out), false, `${re}: nothing converted or written`);
  }
  // On the command line: the error and its hint, no stack, and no phase started.
  const out = path.join(tmpDir(), "pl");
  const r = cli(["pipeline", MODEL, "--rank", "2", "--eval-text", TEXT, "--device", "reference", "--out", out, "--finetune-data", TEXT, "--seq", "65536", "--batch", "65536"]);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /^error: training [\d,]+ parameters .* needs about [\d.]+ GiB of host memory/m);
  assert.match(r.stderr, /^ {2}hint: a smaller --batch or --seq/m);
  assert.doesNotMatch(r.stderr, /pipeline: convert|^\s+at /m, "refused before the first phase, without a stack");
  assert.equal(fs.existsSync(out), false, "nothing written");
});

test("a pipeline the CLI started before --seq/--batch lost their defaults still resumes (same fingerprint)", async () => {
  const out = path.join(tmpDir(), "pl");
  fs.mkdirSync(out);
  // What the CLI passes now for `--finetune-data TEXT --tokens 2048`: the flags not given are undefined.
  const opts = { convert: { rank: 2 }, evalText: TEXT, finetune: { data: [TEXT], tokens: 2048, seq: undefined, batch: undefined, lr: undefined, distill: undefined, device: "cpu" as const } };
  // As the CLI passed them then: every fine-tuning field, seq and batch at their defaults (256, 16).
  const then = { spec: MODEL, convert: opts.convert, format: "mha2mla", deepseek: null, finetune: { data: [TEXT], tokens: 2048, seq: 256, batch: 16, device: "cpu" }, export: null, evalText: TEXT };
  fs.writeFileSync(path.join(out, "pipeline.json"), JSON.stringify({ fingerprint: crypto.createHash("sha256").update(JSON.stringify(then)).digest("hex").slice(0, 16) }));
  const r = await pipeline(MODEL, { ...opts, out, device: "cpu", progress: null, shouldStop: () => true });
  assert.equal(r.stoppedEarly, true, "resumed (and stopped before the first phase), not refused as another run");
});

test("a --calib too short for one window is refused before the pipeline writes anything; a pipeline whose first phase failed starts over with the corrected command, no --force needed", async () => {
  const out = path.join(tmpDir(), "pl");
  const short = path.join(tmpDir(), "short.txt");
  fs.writeFileSync(short, "Once upon a time there was a cat.\n");
  const base: PipelineOptions = { out, convert: { rank: 2 }, evalText: TEXT, evalTokens: 300, device: "cpu", progress: null };
  // The up-front checks cut the windows (test/cli/pipelineCalibration.test.ts): not even pipeline.json is written.
  await assert.rejects(pipeline(MODEL, { ...base, convert: { rank: 2, calib: short } }), (e: unknown) => e instanceof MlaError && /short\.txt holds \d+ tokens, fewer than one calibration window/.test(e.message));
  assert.equal(fs.existsSync(out), false, "nothing written");
  // A run whose first phase failed on what only the work finds leaves only its state file, of other settings.
  fs.mkdirSync(out);
  fs.writeFileSync(path.join(out, "pipeline.json"), JSON.stringify({ fingerprint: "0000000000000000", model: MODEL, settings: { ...base, convert: { rank: 3 } } }));
  const r = await pipeline(MODEL, { ...base, convert: { rank: 2, calib: TEXT } });
  assert.ok(r.phases.some((p) => p.name.startsWith("convert") && !p.skipped), "the corrected run converted");
});

test("a model without BOS is refused before the conversion when the pipeline evaluates (its windows and task items start with BOS)", async () => {
  const dir = path.join(tmpDir(), "nobos");
  fs.cpSync(MODEL, dir, { recursive: true });
  const config = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
  delete config.bos_token_id;
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(config));
  const out = path.join(tmpDir(), "pl");
  await assert.rejects(pipeline(dir, { out, convert: { rank: 2 }, evalText: TEXT, device: "reference", progress: null }), (e: unknown) => e instanceof MlaError && /no bos_token_id/.test(e.message));
  assert.ok(!fs.existsSync(out), "nothing converted");
});

test("pipeline --no-attention-bias: refused without a deepseek_v3 folder to write or without --calib; with --export deepseek it writes that folder without biases", async () => {
  const CALIB = path.join(FIXTURES, "text", "tinystories.txt");
  const base: PipelineOptions = { out: "", convert: { rank: 2, ropePairs: 1, ropeDisjoint: true, calib: CALIB }, evalText: TEXT, evalTokens: 300, device: "cpu", progress: null, attentionBias: false };
  for (const [opts, re] of [
    [{}, /--no-attention-bias has no effect without --format deepseek or --export deepseek/],
    [{ export: "deepseek", convert: { rank: 2, ropePairs: 1, ropeDisjoint: true } }, /--no-attention-bias needs calibration text: .*\n {2}hint: pass --calib FILE/],
  ] as [Partial<PipelineOptions>, RegExp][]) {
    const out = path.join(tmpDir(), "pl");
    await assert.rejects(pipeline(MODEL, { ...base, ...opts, out }), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message), String(re));
    assert.ok(!fs.existsSync(out), "refused before any phase");
  }
  const out = path.join(tmpDir(), "pl");
  const r = await pipeline(MODEL, { ...base, export: "deepseek", out });
  const cfg = JSON.parse(fs.readFileSync(path.join(out, "deepseek", "config.json"), "utf8"));
  assert.equal(cfg.attention_bias, false);
  assert.ok(r.evals.every((e) => Number.isFinite(e.nll!)), "every model evaluated");
});

test("pipeline: a --calib only the bias-free export reads is taken (the conversion gets none); one no phase reads, and --attention-bias either way without a deepseek_v3 folder, are refused", async () => {
  const CALIB = path.join(FIXTURES, "text", "tinystories.txt");
  const convert = { rank: 2, ropePairs: 1, ropeDisjoint: true, ropeStrategy: "uniform" as const, calib: CALIB, calibSamples: 2, calibLen: 64 };
  const base: PipelineOptions = { out: "", convert, evalText: TEXT, evalTokens: 300, device: "cpu", progress: null };
  for (const [opts, re] of [
    [{}, /^--calib has no effect without --rope-strategy 2-norm, .*\(the settings that read calibration text; --rope-strategy uniform does not\)/],
    [{ export: "deepseek" }, /^--calib has no effect without/],
    [{ attentionBias: true, convert: { rank: 2 } }, /^--attention-bias has no effect without --format deepseek or --export deepseek/],
  ] as [Partial<PipelineOptions>, RegExp][]) {
    const out = path.join(tmpDir(), "pl");
    await assert.rejects(pipeline(MODEL, { ...base, ...opts, out }), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message), String(re));
    assert.ok(!fs.existsSync(out), "refused before any phase");
  }
  // Stopped after the conversion: the export would fit its norm on the text, the conversion read none.
  const out = path.join(tmpDir(), "pl");
  let asked = 0;
  await pipeline(MODEL, { ...base, export: "deepseek", attentionBias: false, out, shouldStop: () => asked++ > 0 });
  const rec = JSON.parse(fs.readFileSync(path.join(out, "mla", "mla_conversion.json"), "utf8"));
  assert.deepEqual([rec.settings.calib, rec.settings.calibSamples, rec.settings.calibLen], [null, null, null]);
});
