/**
 * What a script author calling the library meets: options that cover what they say (a pipeline's
 * device reaches its fine-tune), option objects checked for what they are used as, raw Node errors
 * named, and servers that do not keep a long-lived AbortSignal's listeners.
 */
import assert from "node:assert/strict";
import { getEventListeners } from "node:events";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { Checkpoint, evaluate, finetune, generateBatchAsync, loadModel, MlaError, pipeline, serve, synth } from "../../src/index.js";
import { FIXTURES, MODELS, tmpDir } from "../helpers.js";

const TEXT = path.join(FIXTURES, "text", "tinystories.txt");
const MODEL = path.join(MODELS, "stories260K");
const refusal = (re: RegExp) => (e: unknown) => e instanceof MlaError && e.code !== "UNSUPPORTED" && re.test(e.message);

test("pipeline's device covers its fine-tune (it trained on the default backend)", async () => {
  const lines: string[] = [];
  const logger = { info: (m: string) => lines.push(m), warn: (m: string) => lines.push(m) };
  await pipeline(MODEL, { out: path.join(tmpDir(), "p"), convert: { rank: 4, ropeStrategy: "high" }, finetune: { data: [TEXT], tokens: 2 * 4 * 32, seq: 32, batch: 4 }, evalText: TEXT, evalTokens: 200, device: "reference", logger, progress: null });
  // The reference backend announces nothing; the default one it used to pick does ("device: native CPU backend").
  assert.deepEqual(lines.filter((l) => /^device: /.test(l)), []);
});

test("option objects are checked for what they are used as: a logger without warn(), a progress sink without write(), an OpenAI-style logitBias object, a signal that is no AbortSignal", async () => {
  await assert.rejects(evaluate(MODEL, { text: TEXT, tokens: 100, logger: { info() {} } as never }), refusal(/option logger is not a logger with info\(message\) and warn\(message\)/));
  await assert.rejects(evaluate(MODEL, { text: TEXT, tokens: 100, progress: {} as never }), refusal(/option progress is not a stream with write\(text\)/));
  const lm = loadModel(MODEL);
  await assert.rejects(generateBatchAsync(lm.model, [[1, 403]], { maxTokens: 2, logitBias: { 5: -100 } as never }), refusal(/option logitBias is not a Map/));
  // A plain object never aborts: Ctrl-C wired to it would do nothing.
  await assert.rejects(evaluate(MODEL, { text: TEXT, tokens: 100, signal: { aborted: false } as never }), refusal(/option signal is not an AbortSignal/));
  await assert.rejects(generateBatchAsync(lm.model, [[1, 403]], { maxTokens: 2, signal: {} as never }), refusal(/option signal is not an AbortSignal/));
});

test("finetune refuses a schedule floor outside [0, 1] and distillation settings without a teacher", async () => {
  const o = { data: [TEXT], out: path.join(tmpDir(), "f"), tokens: 128, seq: 32, batch: 4, progress: null };
  await assert.rejects(finetune(MODEL, { ...o, schedule: "cosine", minLrFraction: -3 }), refusal(/minLrFraction -3 is outside \[0, 1\]/));
  await assert.rejects(finetune(MODEL, { ...o, temperature: 2 }), refusal(/--temperature has no effect without --distill TEACHER/));
  assert.equal(fs.existsSync(o.out), false);
});

test("Checkpoint.open names a missing folder and a file given for one; synth takes bf16 as BF16; a server lets go of the signal's listener when it closes", async () => {
  assert.throws(() => Checkpoint.open(path.join(tmpDir(), "nope")), refusal(/cannot read the checkpoint folder .*nope/));
  assert.throws(() => Checkpoint.open(TEXT), refusal(/cannot read the checkpoint folder/));
  const r = await synth({ arch: "stories260k", out: path.join(tmpDir(), "s"), dtype: "bf16", progress: null });
  assert.ok(fs.existsSync(path.join(r.out, "config.json")));
  const ac = new AbortController();
  const lm = loadModel(MODEL);
  for (let i = 0; i < 3; i++) await (await serve(lm, { port: 0, signal: ac.signal })).close();
  assert.equal(getEventListeners(ac.signal, "abort").length, 0);
});

test("pipeline names an --out that is a file and a damaged pipeline.json (internal errors before)", async () => {
  const dir = tmpDir();
  const file = path.join(dir, "afile");
  fs.writeFileSync(file, "hi");
  const o = { convert: { rank: 4, ropeStrategy: "high" as const }, evalText: TEXT, evalTokens: 100, progress: null };
  for (const force of [false, true]) await assert.rejects(pipeline(MODEL, { ...o, out: file, force }), refusal(/--out .*afile is a file, not a folder/));
  const damaged = path.join(dir, "p");
  fs.mkdirSync(damaged);
  fs.writeFileSync(path.join(damaged, "pipeline.json"), "{bad");
  fs.writeFileSync(path.join(damaged, "x"), "");
  await assert.rejects(pipeline(MODEL, { ...o, out: damaged }), refusal(/pipeline\.json is not valid JSON[\s\S]*--force to start over/));
});

test('generate takes kvCache "auto" as the CLI and serve do (defaultKvCache: f32 on the CPU)', async () => {
  const lm = await loadModel(MODEL);
  const ids = lm.tokenizer.encode("Once upon a time");
  const auto = await generateBatchAsync(lm.model, [ids], { maxTokens: 4, kvCache: "auto" });
  const f32 = await generateBatchAsync(lm.model, [ids], { maxTokens: 4, kvCache: "f32" });
  assert.deepEqual(auto.sequences[0]!.ids, f32.sequences[0]!.ids);
  assert.equal(auto.sequences[0]!.cacheElements, f32.sequences[0]!.cacheElements);
});
