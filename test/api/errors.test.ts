/**
 * What a script gets for bad input through the public API: an MlaError with a stable code and a
 * message naming the culprit, with a hint, before any work, never a TypeError from deep inside nor
 * a default silently used. JavaScript callers are the point: the casts below are what TypeScript
 * would refuse to compile.
 */
import test from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { convert, evaluate, finetune, generate, generateBatch, inspectModel, loadModel, MlaError, pipeline, seededRandom, study, synth, type MlaErrorCode } from "../../src/index.js";
import { FIXTURES, tmpDir } from "../helpers.js";

const TEXT = path.join(FIXTURES, "text", "tinystories.txt");
type Loose = any;

async function refused(what: string, call: () => unknown, code: MlaErrorCode, re: RegExp): Promise<void> {
  await assert.rejects(
    (async () => call())(),
    (e: unknown) => {
      assert.ok(e instanceof MlaError, `${what}: threw ${String(e)}`);
      assert.equal(e.code, code, `${what}: ${e.message}`);
      assert.match(e.message, re, what);
      assert.match(e.message, /\n {2}hint: /, `${what}: no hint`);
      return true;
    },
  );
}

test("a model that is not there is NOT_FOUND from every entry, naming where it looked", async () => {
  const out = path.join(tmpDir(), "out");
  await refused("convert", () => convert("no-such-model", { rank: 4, out }), "NOT_FOUND", /model "no-such-model" was not found; looked in/);
  await refused("evaluate", () => evaluate("no-such-model", { text: TEXT }), "NOT_FOUND", /model "no-such-model" was not found/);
  await refused("finetune", () => finetune("no-such-model", { data: [TEXT], out }), "NOT_FOUND", /model "no-such-model" was not found/);
  await refused("loadModel", () => loadModel("no-such-model"), "NOT_FOUND", /model "no-such-model" was not found/);
  await refused("inspectModel", () => inspectModel("no-such-model"), "NOT_FOUND", /model "no-such-model" was not found/);
  await refused("a model that is no string", () => loadModel(42 as Loose), "BAD_ARGUMENT", /the model 42 is not a name/);
  // A loaded model where its name goes: a short message (its JSON is its weights: 9 MB here, past a string's length at 26M parameters).
  const lm = loadModel("stories260K");
  for (const [what, f] of [["inspectModel", () => inspectModel(lm as Loose)], ["evaluate", () => evaluate(lm as Loose, { text: TEXT })], ["convert", () => convert(lm as Loose, { rank: 4, out })]] as const) {
    await refused(`${what} of a loaded model`, f, "BAD_ARGUMENT", /^the model \(an object: a loaded model of .*stories260K\?\) is not a name\n {2}hint: .*e\.g\. its folder/);
    await (async () => f())().catch((e: Error) => assert.ok(e.message.length < 400, `${what}: ${e.message.length} characters`));
  }
  assert.ok(!fs.existsSync(out));
});

test("a rank out of range, of the wrong type or left out is BAD_ARGUMENT and writes nothing", async () => {
  const parent = tmpDir();
  const out = path.join(parent, "out");
  await refused("rank 0", () => convert("stories260K", { rank: 0, out }), "BAD_ARGUMENT", /--rank 0 is out of range[\s\S]*1…14/);
  await refused("rank 99", () => convert("stories260K", { rank: 99, out }), "BAD_ARGUMENT", /--rank 99 is out of range/);
  await refused("rank 4.5", () => convert("stories260K", { rank: 4.5, out }), "BAD_ARGUMENT", /--rank 4\.5 is not a whole number[\s\S]*use an integer in 1…14/);
  await refused("rank as text", () => convert("stories260K", { rank: "4" as Loose, out }), "BAD_ARGUMENT", /convert\(\): option rank is "4" \(a string\), not a number/);
  await refused("no rank", () => convert("stories260K", { out } as Loose), "BAD_ARGUMENT", /convert\(\) needs the option rank/);
  await refused("no options", () => (convert as Loose)("stories260K"), "BAD_ARGUMENT", /convert\(\) takes an options object, got undefined/);
  assert.deepEqual(fs.readdirSync(parent), [], "no output or temporary folder left");
});

test("options of the wrong type, unknown options and unknown values are refused by name", async () => {
  const out = path.join(tmpDir(), "out");
  const cases: [string, () => unknown, RegExp][] = [
    ["convert out as a number", () => convert("stories260K", { rank: 4, out: 5 as Loose }), /option out is 5 \(a number\), not a string/],
    ["convert option misspelt", () => convert("stories260K", { rank: 4, out, ropepairs: 1 } as Loose), /convert\(\) has no option "ropepairs"[\s\S]*did you mean ropePairs\?/],
    ["convert unknown strategy", () => convert("stories260K", { rank: 4, out, ropeStrategy: "random" as Loose }), /--rope-strategy random is not known[\s\S]*high, low, uniform, 2-norm/],
    ["convert unknown device", () => convert("stories260K", { rank: 4, out, device: "gpu" as Loose }), /--device gpu is not known[\s\S]*auto, reference, cpu, cuda/],
    ["evaluate ctx as text", () => evaluate("stories260K", { text: TEXT, ctx: "64" as Loose }), /evaluate\(\): option ctx is "64" \(a string\), not a number/],
    ["evaluate tasks as one string", () => evaluate("stories260K", { tasks: "arc-easy" as Loose }), /option tasks is "arc-easy" \(a string\), not an array of strings/],
    ["evaluate unknown task", () => evaluate("stories260K", { tasks: ["arc-easy", "mmlu" as Loose] }), /task "mmlu" is not known/],
    ["evaluate unknown cache type", () => evaluate("stories260K", { text: TEXT, kvCache: "fp8" as Loose }), /--kv-cache fp8 is not a cache type/],
    ["finetune data as one string", () => finetune("stories260K", { data: TEXT as Loose, out }), /option data is ".*tinystories\.txt" \(a string\), not an array of strings/],
    ["finetune no out", () => finetune("stories260K", { data: [TEXT] } as Loose), /finetune\(\) needs the option out/],
    ["finetune lr as text", () => finetune("stories260K", { data: [TEXT], out, lr: "1e-3" as Loose }), /option lr is "1e-3" \(a string\), not a number/],
    ["finetune unknown schedule", () => finetune("stories260K", { data: [TEXT], out, schedule: "linear" as Loose }), /--schedule linear is not known/],
    ["finetune unknown train", () => finetune("stories260K", { data: [TEXT], out, train: "mlp" as Loose }), /--train mlp is not known/],
    ["finetune shouldStop not a function", () => finetune("stories260K", { data: [TEXT], out, shouldStop: true as Loose }), /option shouldStop is true \(a boolean\), not a function/],
    ["loadModel unknown weights", () => loadModel("stories260K", { weights: "bf16" as Loose }), /weights "bf16" is not known[\s\S]*auto or f32/],
    ["pipeline rank as text", () => pipeline("stories260K", { out, convert: { rank: "4" as Loose } }), /pipeline\(\)'s convert: option rank is "4"/],
    // Strings, but not a known value: "hf" ran a deepseek export, "DeepSeek" our format.
    ["pipeline unknown export", () => pipeline("stories260K", { out, convert: { rank: 4 }, export: "hf" as Loose }), /pipeline\(\): export "hf" is not known[\s\S]*hint: use "deepseek"/],
    ["pipeline unknown format", () => pipeline("stories260K", { out, convert: { rank: 4 }, format: "DeepSeek" as Loose }), /pipeline\(\): format "DeepSeek" is not known[\s\S]*"mha2mla" \(the default\) or "deepseek"/],
    ["study variants as one string", () => study({ like: "stories260K", variants: "mha,mla" as Loose, data: TEXT, tokens: 100, out }), /study\(\): option variants is "mha,mla" \(a string\), not an array of strings/],
  ];
  for (const [what, call, re] of cases) await refused(what, call, "BAD_ARGUMENT", re);
  assert.ok(!fs.existsSync(out));
});

test("generate refuses text where token ids go, and an unknown cache type", async () => {
  const { model } = loadModel("stories260K");
  await refused("a string prompt", () => generate(model, "Once upon a time" as Loose, { maxTokens: 2 }), "BAD_ARGUMENT", /the prompt is not an array of token ids[\s\S]*tokenizer\.encode/);
  await refused("maxTokens as text", () => generate(model, [1, 2], { maxTokens: "2" as Loose }), "BAD_ARGUMENT", /generate\(\): option maxTokens is "2"/);
  await refused("newCache fp8", () => model.newCache("fp8" as Loose), "BAD_ARGUMENT", /--kv-cache fp8 is not a cache type/);
});

test("generate refuses top-k at temperature 0 (greedy reads none) and seeds its generators cannot take, as the CLI does", async () => {
  const { model } = loadModel("stories260K");
  await refused("topK at temperature 0", () => generate(model, [1, 2], { maxTokens: 2, temperature: 0, topK: 5 }), "BAD_ARGUMENT", /^--top-k has no effect without --temperature T > 0/);
  await refused("topK without temperature", () => generateBatch(model, [[1, 2]], { maxTokens: 2, topK: 5 }), "BAD_ARGUMENT", /^--top-k has no effect without --temperature T > 0/);
  for (const seed of [-1, 1.5, NaN]) await refused(`seed ${seed}`, () => generate(model, [1, 2], { maxTokens: 2, temperature: 1, seed }), "BAD_ARGUMENT", new RegExp(`^--seed ${seed} is not a whole number in \\[0, 2\\^32\\)`));
  await refused("seededRandom(-1)", () => seededRandom(-1), "BAD_ARGUMENT", /^seededRandom\(\): the seed -1 is not a whole number in \[0, 2\^32\)/);
  assert.equal(generate(model, [1, 2], { maxTokens: 2, temperature: 0, seed: 3, stopAtEos: false }).ids.length, 2, "a seed at temperature 0 is taken, as the CLI takes it");
});

test("synth: an options object of the wrong shape is BAD_ARGUMENT, naming the option", async () => {
  const out = path.join(tmpDir(), "synth");
  await refused("synth without options", () => synth(undefined as Loose), "BAD_ARGUMENT", /synth\(\) takes an options object, got undefined/);
  await refused("synth layers as a string", () => synth({ arch: "smollm-135m", out, layers: "2" as Loose }), "BAD_ARGUMENT", /synth\(\): option layers is "2" \(a string\), not a number/);
  await refused("synth misspelt option", () => synth({ arch: "smollm-135m", out, layer: 2 } as Loose), "BAD_ARGUMENT", /synth\(\) has no option "layer"/);
  await refused("synth without out", () => synth({ arch: "smollm-135m" } as Loose), "BAD_ARGUMENT", /synth\(\) needs the option out/);
  assert.ok(!fs.existsSync(out));
});
