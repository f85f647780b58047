import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { convert } from "../../src/convert/pipeline.js";
import { finetune, FinetuneOptions } from "../../src/finetune/trainer.js";
import { defaultLr, lrAt, parseSchedule } from "../../src/finetune/schedule.js";
import { AdamW, clipGradients } from "../../src/finetune/optimizer.js";
import { checkpointBytes } from "../../src/finetune/checkpoint.js";
import { CheckpointKeeper } from "../../src/finetune/checkpointKeeper.js";
import { loadModel } from "../../src/model/llama.js";
import { FIXTURES, MODELS, pastVocabModel, ROOT, tmpDir, waitFor } from "../helpers.js";

const MAIN = path.join(ROOT, "dist", "src", "cli", "main.js");
const DATA = path.join(FIXTURES, "text", "tinystories_25k.txt");

async function convertedModel(): Promise<string> {
  const out = path.join(tmpDir(), "mla");
  await convert(path.join(MODELS, "stories260K"), { rank: 2, ropePairs: 1, ropeStrategy: "high", out, progress: null });
  return out;
}

test("wsd schedule: linear warmup, constant, then 1−sqrt decay over the last 20%", () => {
  const s = { name: "wsd" as const, lr: 1, warmupSteps: 5, decayFraction: 0.2, minLrFraction: 0.1 };
  assert.equal(lrAt(s, 0, 100), 0.2);
  assert.equal(lrAt(s, 4, 100), 1);
  assert.equal(lrAt(s, 79, 100), 1);
  assert.equal(lrAt(s, 80, 100), 1);
  assert.ok(Math.abs(lrAt(s, 95, 100) - (1 - Math.sqrt(15 / 20))) < 1e-12);
  const c = { ...s, name: "cosine" as const, warmupSteps: 0 };
  assert.ok(Math.abs(lrAt(c, 100, 100) - 0.1) < 1e-12);
  assert.throws(() => parseSchedule("linear"), (e: Error) => e instanceof MlaError && /--schedule linear is not known/.test(e.message));
});

test("the default learning rate goes by model size: 1e-3 for tiny models, 2e-4 at tens of millions, the paper's 1e-4 from 100M", () => {
  assert.equal(defaultLr(260e3), 1e-3);
  assert.equal(defaultLr(26.5e6), 2e-4);
  assert.equal(defaultLr(135e6), 1e-4);
  assert.equal(defaultLr(6.7e9), 1e-4);
});

test("AdamW matches the PyTorch update rule; clipping scales to the global norm", () => {
  const p = [Float32Array.of(1, -2)];
  const opt = new AdamW({ beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 }, [2]);
  opt.update(p, [Float32Array.of(0.5, -1)], 0.01);
  // step 1: m̂ = g, v̂ = g², update = lr·(sign(g)·|g|/(|g|+eps) + wd·p)
  assert.ok(Math.abs(p[0]![0]! - (1 - 0.01 * (1 + 0.1 * 1))) < 1e-6);
  assert.ok(Math.abs(p[0]![1]! - (-2 - 0.01 * (-1 + 0.1 * -2))) < 1e-6);
  const g = [Float32Array.of(3, 4)];
  assert.equal(clipGradients(g, 1), 5);
  assert.ok(Math.abs(Math.hypot(g[0]![0]!, g[0]![1]!) - 1) < 1e-5);
});

test("a short run lowers the held-out NLL and leaves a loadable model, a log and a checkpoint", async () => {
  const model = await convertedModel();
  const out = path.join(tmpDir(), "ft");
  const r = await finetune(model, { data: [DATA], out, tokens: 8 * 4 * 64, seq: 64, batch: 4, lr: 3e-3, progress: null });
  assert.equal(r.steps, 8);
  assert.ok(r.valNllAfter! < r.valNllBefore! - 0.2, `${r.valNllBefore} → ${r.valNllAfter}`);
  const lm = loadModel(out);
  assert.equal(lm.config.attention.kind, "mla");
  const log = fs.readFileSync(path.join(out, "train_log.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
  assert.equal(log.filter((l) => "loss" in l).length, 8);
  for (const k of ["step", "loss", "lr", "grad_norm", "tokens_per_s"]) assert.ok(k in log[1], k);
  assert.ok(fs.existsSync(path.join(out, "checkpoint", "state.json")));
  const attnOnly = await finetune(model, { data: [DATA], out: path.join(tmpDir(), "att"), tokens: 2 * 4 * 64, seq: 64, batch: 4, train: "attention", progress: null });
  const after = loadModel(attnOnly.out);
  const before = loadModel(model);
  assert.deepEqual(after.model.weights.layers[0]!.gate.toArray(), before.model.weights.layers[0]!.gate.toArray(), "--train attention freezes the MLP");
  assert.notDeepEqual(after.model.weights.layers[0]!.attn.o.toArray(), before.model.weights.layers[0]!.attn.o.toArray());
});

test("resume equality: 20 steps straight = 10 steps, kill -9, --resume 10 steps (losses and final weights)", async () => {
  const model = await convertedModel();
  const args = (out: string) => ["finetune", model, "--data", DATA, "--out", out, "--tokens", String(20 * 4 * 64), "--seq", "64", "--batch", "4", "--save-every", "10", "--val-fraction", "0.02"];
  const straight = path.join(tmpDir(), "straight");
  assert.equal(spawnSync(process.execPath, [MAIN, ...args(straight)], { encoding: "utf8" }).status, 0);
  const killed = path.join(tmpDir(), "killed");
  // The hook SIGKILLs the child right after its step-10 checkpoint, at the same step on any machine.
  const child = spawnSync(process.execPath, [MAIN, ...args(killed)], { encoding: "utf8", env: { ...process.env, MHA2MLA_TEST_KILL_AFTER_SAVE: "10" } });
  assert.equal(child.signal, "SIGKILL", `the child was not killed by the hook: status ${child.status}, ${child.stderr}`);
  const state = path.join(killed, "checkpoint", "state.json");
  assert.equal(JSON.parse(fs.readFileSync(state, "utf8")).step, 10, "killed after the step-10 checkpoint, before the end");
  assert.equal(fs.existsSync(path.join(killed, "model.safetensors")), false, "no model before the run ends");
  const resumed = spawnSync(process.execPath, [MAIN, ...args(killed), "--resume"], { encoding: "utf8" });
  assert.equal(resumed.status, 0, resumed.stderr);
  const losses = (dir: string) => {
    const byStep = new Map<number, number>();
    for (const l of fs.readFileSync(path.join(dir, "train_log.jsonl"), "utf8").trim().split("\n").map((x) => JSON.parse(x))) if ("loss" in l) byStep.set(l.step, l.loss);
    return [...byStep.entries()].sort((a, b) => a[0] - b[0]).map((e) => e[1]);
  };
  const a = losses(straight);
  const b = losses(killed);
  assert.equal(a.length, 20);
  assert.equal(b.length, 20);
  a.forEach((x, i) => assert.ok(Math.abs(x - b[i]!) <= 1e-6, `step ${i + 1}: ${x} vs ${b[i]}`));
  assert.deepEqual(fs.readFileSync(path.join(killed, "model.safetensors")), fs.readFileSync(path.join(straight, "model.safetensors")), "same final weights");
});

test("disk room: a model that cannot be written is refused before training; so is --save-every without room for its checkpoints; otherwise the model is written and the final checkpoint skipped with a warning", async () => {
  const model = await convertedModel();
  const common = { data: [DATA], tokens: 2 * 4 * 64, seq: 64, batch: 4, progress: null };
  const modelBytes = fs.statSync(path.join(model, "model.safetensors")).size;
  process.env["MHA2MLA_TEST_FREE_BYTES"] = "1000";
  try {
    const noRoom = path.join(tmpDir(), "noroom");
    await assert.rejects(finetune(model, { ...common, out: noRoom }), (e: Error) => e instanceof MlaError && /the trained model will take .* [kMG]B .* has 1\.0 kB free/.test(e.message) && /refused before training/.test(e.message));
    assert.ok(!fs.existsSync(path.join(noRoom, "train_log.jsonl")), "refused before training");
    process.env["MHA2MLA_TEST_FREE_BYTES"] = String(modelBytes + 1000); // the model fits, no checkpoint does
    const warnings: string[] = [];
    const logger = { info: () => {}, warn: (m: string) => warnings.push(m) };
    const refusedOut = path.join(tmpDir(), "refused");
    await assert.rejects(finetune(model, { ...common, out: refusedOut, saveEvery: 1, logger }), (e: Error) => e instanceof MlaError && /--save-every 1: a training checkpoint of this run takes .* [kMG]B .* beside the last, and the model takes .* [kMG]B free/.test(e.message) && /hint: free disk space/.test(e.message));
    assert.ok(!fs.existsSync(path.join(refusedOut, "model.safetensors")) && !fs.existsSync(path.join(refusedOut, "train_log.jsonl")), "refused before training");
    const out = path.join(tmpDir(), "nocheckpoint");
    const r = await finetune(model, { ...common, out, logger });
    assert.equal(r.steps, 2);
    assert.equal(r.checkpointStep, null);
    assert.ok(fs.existsSync(path.join(out, "model.safetensors")) && fs.existsSync(path.join(out, "finetune.json")), "the trained model is written");
    assert.ok(!fs.existsSync(path.join(out, "checkpoint")), "no checkpoint");
    assert.ok(warnings.some((w) => /the run will write its model but no checkpoint/.test(w)), `warned up front: ${warnings.join("; ")}`);
    assert.ok(warnings.some((w) => /no final checkpoint: it takes .* [kMG]B/.test(w)), warnings.join("; "));
  } finally {
    delete process.env["MHA2MLA_TEST_FREE_BYTES"];
  }
});

test("graceful SIGTERM saves a checkpoint and exits with 130, leaving no model yet", async () => {
  const model = await convertedModel();
  const out = path.join(tmpDir(), "sig");
  // 2000 steps: far more than run between the first logged loss and the signal, even on a fast machine.
  const args = ["finetune", model, "--data", DATA, "--out", out, "--tokens", String(2000 * 4 * 64), "--seq", "64", "--batch", "4", "--val-fraction", "0.02"];
  const child = spawn(process.execPath, [MAIN, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  child.stdout.on("data", (d) => (stdout += d));
  const logFile = path.join(out, "train_log.jsonl");
  await waitFor(() => fs.existsSync(logFile) && fs.readFileSync(logFile, "utf8").includes('"loss"'), "the first logged loss");
  child.kill("SIGTERM");
  const code = await new Promise((r) => child.on("exit", r));
  assert.equal(code, 130);
  assert.match(stdout, /stopped at step \d+; checkpoint/);
  const st = JSON.parse(fs.readFileSync(path.join(out, "checkpoint", "state.json"), "utf8"));
  assert.ok(st.step >= 1 && st.step < 2000);
  assert.equal(fs.existsSync(path.join(out, "model.safetensors")), false, "no model before the run ends");
});

test("bad input is refused cleanly", async () => {
  const model = await convertedModel();
  const base: FinetuneOptions = { data: [DATA], out: path.join(tmpDir(), "x"), tokens: 256, seq: 64, batch: 4, progress: null };
  const refused = async (o: Partial<FinetuneOptions>, re: RegExp) => assert.rejects(finetune(model, { ...base, ...o }), (e: Error) => e instanceof MlaError && re.test(e.message) && /hint:/.test(e.message));
  const empty = path.join(tmpDir(), "empty.txt");
  fs.writeFileSync(empty, "");
  await refused({ data: [empty] }, /--data .*empty\.txt is empty/);
  const blank = path.join(tmpDir(), "blank.jsonl");
  fs.writeFileSync(blank, "\n\n");
  await refused({ data: [blank] }, /holds no tokens/);
  const short = path.join(tmpDir(), "short.txt");
  fs.writeFileSync(short, "Once upon a time there was a cat.");
  await refused({ data: [short] }, /fewer than one sequence/);
  await refused({ lr: 0 }, /--lr 0 must be a positive number/);
  await refused({ lr: -1e-3 }, /--lr -0.001/);
  await refused({ tokens: 0 }, /--tokens 0 must be a positive integer/);
  await refused({ saveEvery: -1 }, /--save-every -1 must be a whole number of steps, 0 or more/);
  await refused({ evalEvery: 0.5 }, /--eval-every 0.5 must be a whole number of steps, 0 or more/);
  const bad = path.join(tmpDir(), "bad.jsonl");
  fs.writeFileSync(bad, '{"text": "ok"}\n{"txt": 1}\n');
  await refused({ data: [bad] }, /bad\.jsonl:2: no string "text" field/);
  // --resume from a checkpoint of another model or other settings
  const run = path.join(tmpDir(), "run");
  await finetune(model, { ...base, out: run, tokens: 2 * 4 * 64 });
  await refused({ out: run, resume: true, lr: 5e-4 }, /--lr is 5e-4 here but the run in .* was started with 1e-3/);
  await assert.rejects(finetune(path.join(MODELS, "stories260K"), { ...base, out: run, resume: true, tokens: 2 * 4 * 64 }), /MODEL is .*stories260K here but the run in .* was started with .*mla/);
  await refused({ out: path.join(tmpDir(), "none"), resume: true }, /none does not exist: there is no run there to resume/);
  const emptyRun = path.join(tmpDir(), "empty");
  fs.mkdirSync(emptyRun);
  await refused({ out: emptyRun, resume: true }, /no checkpoint/);
  await refused({ out: run }, /already exists[\s\S]*--resume/);
  // An --out inside the model folder, or one that holds it (starting over there deleted the model).
  await refused({ out: path.join(model, "ft") }, /is the input model folder or inside it/);
  await refused({ out: path.dirname(model), force: true }, /holds the input model folder/);
  await refused({ out: path.dirname(DATA), force: true }, /holds (the input model folder|--data)/);
  assert.ok(fs.existsSync(path.join(model, "config.json")) && fs.existsSync(DATA), "the model and the data are kept");
  const cli = spawnSync(process.execPath, [MAIN, "finetune", model, "--data", DATA, "--out", path.join(tmpDir(), "y"), "--schedule", "linear"], { encoding: "utf8" });
  assert.equal(cli.status, 1);
  assert.match(cli.stderr, /^error: --schedule linear is not one of /m);
});

test("a model without BOS or with EOS past its vocabulary, a missing teacher and a run too big for the machine are refused before the data is read", async () => {
  const model = await convertedModel();
  // Data the loader would refuse (line 2): reaching it means the check came after the tokenizing.
  const bad = path.join(tmpDir(), "bad.jsonl");
  fs.writeFileSync(bad, '{"text": "ok"}\n{"txt": 1}\n');
  const base: FinetuneOptions = { data: [bad], out: path.join(tmpDir(), "x"), tokens: 256, seq: 64, batch: 4, progress: null };
  const refused = async (m: string, o: Partial<FinetuneOptions>, re: RegExp) => assert.rejects(finetune(m, { ...base, ...o }), (e: Error) => e instanceof MlaError && re.test(e.message) && /hint:/.test(e.message));
  const noBos = path.join(tmpDir(), "nobos");
  fs.cpSync(model, noBos, { recursive: true });
  const cfg = JSON.parse(fs.readFileSync(path.join(noBos, "config.json"), "utf8"));
  delete cfg.bos_token_id;
  fs.writeFileSync(path.join(noBos, "config.json"), JSON.stringify(cfg));
  await refused(noBos, { valFraction: 0 }, /no bos_token_id/);
  // EOS past the vocabulary: it would be put between documents (it reached perplexity() as a token id).
  const farEos = path.join(tmpDir(), "far-eos");
  fs.cpSync(model, farEos, { recursive: true });
  fs.writeFileSync(path.join(farEos, "config.json"), JSON.stringify({ ...cfg, bos_token_id: 1, eos_token_id: 600 }));
  await refused(farEos, { valFraction: 0 }, /"eos_token_id" is 600, past the 512-token vocabulary; fine-tuning puts it between documents/);
  await refused(model, { distill: path.join(tmpDir(), "no-such-teacher") }, /no-such-teacher/);
  await refused(model, { batch: 20_000_000 }, /needs about [\d.]+ GiB of host memory[\s\S]*the machine has/);
  // A teacher with as many ids for other tokens (Llama-2 and Mistral-7B: 32000 each): two tokens swapped.
  const otherTokens = path.join(tmpDir(), "other-tokens");
  fs.cpSync(path.join(MODELS, "stories260K"), otherTokens, { recursive: true });
  const tj = JSON.parse(fs.readFileSync(path.join(otherTokens, "tokenizer.json"), "utf8")) as { model: { vocab: Record<string, number> } };
  const [x, y] = Object.keys(tj.model.vocab).filter((t) => tj.model.vocab[t]! >= 300);
  [tj.model.vocab[x!], tj.model.vocab[y!]] = [tj.model.vocab[y!]!, tj.model.vocab[x!]!];
  fs.writeFileSync(path.join(otherTokens, "tokenizer.json"), JSON.stringify(tj));
  await refused(model, { distill: otherTokens }, /--distill .*other-tokens has another vocabulary than the student, of the same size \(512\): id \d+ is "[^"]+" in the teacher's tokenizer\.json, "[^"]+" in the student's/);
  assert.ok(!fs.existsSync(base.out), "no run folder");
});

test("--data whose ids the model's tokenizer puts past the vocabulary is refused after tokenizing, naming the file, the id and the vocabulary, before any training (the first validation found it, blaming perplexity()'s ids)", () => {
  const model = pastVocabModel();
  const parent = tmpDir();
  const data = path.join(parent, "zz.txt");
  fs.writeFileSync(data, "Once upon a time <zz> there was a little girl named Lily. She liked to play.\n".repeat(40));
  const cache = path.join(tmpDir(), "tokens");
  const want = `error: the model's tokenizer gives id 600 for ${data}, past its vocabulary of 512 (vocab_size in ${path.join(model, "config.json")})\n  hint: the tokenizer and the model do not match: put the model's own tokenizer.json beside its weights\n`;
  // Twice: tokenized, then (the second run) from the token cache, which holds the same ids.
  for (const run of ["tokenized", "cached"]) {
    const r = spawnSync(process.execPath, [MAIN, "finetune", model, "--data", data, "--out", path.join(parent, "ft"), "--tokens", "512", "--seq", "32", "--batch", "4", "--token-cache", cache, "--device", "reference"], { encoding: "utf8" });
    assert.equal(r.status, 1, r.stderr);
    // The progress lines, then the error alone (no stack, no training step nor validation).
    assert.equal(r.stderr.slice(r.stderr.indexOf("error: ")), want, run);
    assert.doesNotMatch(r.stderr, /memory plan|validation|step 1/, run);
    assert.deepEqual(fs.readdirSync(parent), ["zz.txt"], `${run}: --out not made`);
  }
  // Data without the token past the vocabulary trains with that tokenizer.
  fs.writeFileSync(data, fs.readFileSync(DATA, "utf8").slice(0, 4000));
  const ok = spawnSync(process.execPath, [MAIN, "finetune", model, "--data", data, "--out", path.join(parent, "ft"), "--tokens", "128", "--seq", "32", "--batch", "4", "--device", "reference"], { encoding: "utf8" });
  assert.equal(ok.status, 0, ok.stderr);
});

test("a --distill teacher with fewer positions than --seq is warned about (its targets past them are extrapolated)", async () => {
  const model = await convertedModel();
  const teacher = path.join(tmpDir(), "short-teacher");
  fs.cpSync(path.join(MODELS, "stories260K"), teacher, { recursive: true });
  const cfg = JSON.parse(fs.readFileSync(path.join(teacher, "config.json"), "utf8"));
  fs.writeFileSync(path.join(teacher, "config.json"), JSON.stringify({ ...cfg, max_position_embeddings: 32 }));
  const warnings: string[] = [];
  const logger = { info: () => {}, warn: (m: string) => void warnings.push(m) };
  // Stopped while the data is tokenized: the warning comes before.
  const r = await finetune(model, { data: [path.join(FIXTURES, "text", "tinystories.txt")], out: path.join(tmpDir(), "x"), tokens: 256, seq: 64, batch: 4, distill: teacher, progress: null, logger, shouldStop: () => true });
  assert.equal(r.steps, 0);
  assert.deepEqual(warnings.filter((w) => /teacher's/.test(w)), ["--seq 64 passes the --distill teacher's 32 positions (max_position_embeddings): its targets past them are extrapolated (RoPE), and the KL term pulls the student toward them"]);
});

test("a NaN loss stops training with a clear error", async () => {
  const model = await convertedModel();
  const { SafetensorsFile, writeSafetensorsSync } = await import("../../src/io/safetensors.js");
  const file = path.join(model, "model.safetensors");
  const f = SafetensorsFile.open(file);
  const tensors = [...f.tensors.values()].map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, data: f.readBytes(t.name) }));
  f.close();
  const norm = tensors.find((t) => t.name === "model.norm.weight")!;
  new DataView(norm.data.buffer, norm.data.byteOffset).setFloat32(0, NaN, true);
  writeSafetensorsSync(file, tensors, { format: "pt" });
  await assert.rejects(finetune(model, { data: [DATA], out: path.join(tmpDir(), "nan"), tokens: 2 * 4 * 64, seq: 64, batch: 4, valFraction: 0, progress: null }), (e: Error) => e instanceof MlaError && /training diverged at step 1: loss NaN/.test(e.message) && /hint:/.test(e.message));
});

test("checkpoint room: --save-every needs room for two checkpoints (the new one is written beside the last), a resumed run for one; a skipped save names the checkpoint that stays", () => {
  const out = tmpDir();
  const warnings: string[] = [];
  const log = { info: () => {}, warn: (m: string) => warnings.push(m) };
  const slots = { paths: ["w"], sizes: [10], read: () => new Float32Array(10), write: () => {} };
  const state = (step: number) => ({ format: 1 as const, step, epoch: 0, cursor: 0, tokensSeen: 0, fingerprint: "f", settings: {} });
  const one = checkpointBytes(10);
  process.env["MHA2MLA_TEST_FREE_BYTES"] = String(Math.round(1.5 * one));
  try {
    assert.throws(() => new CheckpointKeeper(out, 10, 0, log, false).checkAtStart(5), (e: Error) => e instanceof MlaError && /beside the last/.test(e.message));
    assert.doesNotThrow(() => new CheckpointKeeper(out, 10, 0, log, true).checkAtStart(5), "a resumed run has its checkpoint on the disk already");
    assert.throws(() => new CheckpointKeeper(out, 10, 2 * one, log, true).checkAtStart(undefined), (e: Error) => e instanceof MlaError && /the trained model will take/.test(e.message));
    const keeper = new CheckpointKeeper(out, 10, 0, log, false);
    keeper.checkAtStart(undefined); // one fits: no warning
    assert.equal(warnings.length, 0);
    assert.equal(keeper.save(state(3), slots, "step-3"), true);
    assert.equal(keeper.step, 3);
    process.env["MHA2MLA_TEST_FREE_BYTES"] = "1000";
    assert.equal(keeper.save(state(6), slots, "step-6"), false);
    assert.equal(keeper.step, 3);
    assert.match(warnings[0]!, /no step-6 checkpoint: .* keeps step 3/);
  } finally {
    delete process.env["MHA2MLA_TEST_FREE_BYTES"];
  }
});

test("--tokens is rounded up to whole steps, and the run says so (10 tokens train one step of batch × seq)", async () => {
  const said: string[] = [];
  const logger = { info: (m: string) => said.push(m), warn: (m: string) => said.push(m) };
  const r = await finetune(path.join(MODELS, "stories260K"), { data: [DATA], out: path.join(tmpDir(), "run"), tokens: 10, seq: 32, batch: 2, valFraction: 0, progress: null, logger });
  assert.deepEqual([r.steps, r.tokensSeen], [1, 64]);
  assert.ok(said.includes("--tokens 10 is less than one step of 64 tokens (--batch 2 × --seq 32): training 1 step, 64 tokens"), said.join("\n"));
  said.length = 0;
  await finetune(path.join(MODELS, "stories260K"), { data: [DATA], out: path.join(tmpDir(), "run"), tokens: 128, seq: 32, batch: 2, valFraction: 0, progress: null, logger });
  assert.ok(!said.some((m) => m.startsWith("--tokens")), "a whole number of steps is not remarked on");
});
