/**
 * The leading arguments of every public entry (the model, loadModel's result, a tokenizer, token ids,
 * prompts, a folder or file, a config), given the wrong type from JavaScript: an MlaError
 * BAD_ARGUMENT naming the argument and what goes there, with a hint, never a TypeError from deep
 * inside ("Cannot read properties of undefined (reading 'vocabSize')"), and nothing written. The
 * last test keeps the table whole: an export added later is either in it or said to take none of these.
 */
import test from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import * as api from "../../src/index.js";
import { FIXTURES, tmpDir } from "../helpers.js";

type Loose = any;
const m = api as Loose;
const TEXT = path.join(FIXTURES, "text", "tinystories.txt");
const parent = tmpDir();
const out = path.join(parent, "out");
const lm = api.loadModel("stories260K");
const { model, tokenizer, config } = lm;

/** What each slot is named by in the refusal. */
type Slot = "model" | "spec" | "tokenizer" | "text" | "folder" | "dir" | "file" | "prompt" | "prompts" | "windows" | "config" | "json" | "options";
const NAMED: Record<Slot, RegExp> = {
  model: /the model is/,
  spec: /the model .* is not a name/,
  tokenizer: /the tokenizer is/,
  text: /the text is/,
  folder: /the model folder is/,
  dir: /the folder is/,
  file: /the file is/,
  prompt: /the prompt is/,
  prompts: /the prompts are|prompt 1 is/,
  windows: /the windows are/,
  config: /the config is/,
  json: /the config is/,
  options: /takes an options object|needs the option/,
};

/** [entry, the slot it is given a wrong value for, the call]. */
const TABLE: [string, Slot, (x: unknown) => unknown][] = [
  ["convert", "spec", (x) => api.convert(x as Loose, { rank: 4, out })],
  ["convertDeepseek", "spec", (x) => api.convertDeepseek(x as Loose, { rank: 4, out })],
  ["exportDeepseek", "spec", (x) => api.exportDeepseek(x as Loose, { out })],
  ["evaluate", "spec", (x) => api.evaluate(x as Loose, { text: TEXT })],
  ["finetune", "spec", (x) => api.finetune(x as Loose, { data: [TEXT], out })],
  ["pipeline", "spec", (x) => api.pipeline(x as Loose, { out, convert: { rank: 4 } })],
  ["inspectModel", "spec", (x) => api.inspectModel(x as Loose)],
  ["loadModel", "spec", (x) => api.loadModel(x as Loose)],
  ["resolveModel", "spec", (x) => api.resolveModel(x as Loose)],
  ["refitOutputProjections", "spec", (x) => api.refitOutputProjections(x as Loose, lm.dir, [], model.backend)],
  ["study", "options", (x) => api.study(x as Loose)],
  ["synth", "options", (x) => api.synth(x as Loose)],
  ["generate", "model", (x) => api.generate(x as Loose, [1, 2], { maxTokens: 2 })],
  ["generate", "prompt", (x) => api.generate(model, x as Loose, { maxTokens: 2 })],
  ["generateBatch", "model", (x) => api.generateBatch(x as Loose, [[1, 2]], { maxTokens: 2 })],
  ["generateBatch", "prompts", (x) => api.generateBatch(model, x as Loose, { maxTokens: 2 })],
  ["generateBatchAsync", "model", (x) => api.generateBatchAsync(x as Loose, [[1, 2]], { maxTokens: 2 })],
  ["generateBatchAsync", "prompts", (x) => api.generateBatchAsync(model, x as Loose, { maxTokens: 2 })],
  ["defaultKvCache", "model", (x) => api.defaultKvCache(x as Loose)],
  ["DecodeSession", "model", (x) => new api.DecodeSession(x as Loose, [model.newCache()])],
  ["perplexity", "model", (x) => api.perplexity(x as Loose, Int32Array.of(1, 2, 3), { ctx: 4 })],
  ["tokenizeForEval", "tokenizer", (x) => api.tokenizeForEval(x as Loose, "Once upon a time")],
  ["tokenizeForEval", "text", (x) => api.tokenizeForEval(tokenizer, x as Loose)],
  ["loglikelihood", "model", (x) => api.loglikelihood(x as Loose, tokenizer, "Once upon", " a time")],
  ["loglikelihood", "tokenizer", (x) => api.loglikelihood(model, x as Loose, "Once upon", " a time")],
  ["choiceLoglikelihoods", "model", (x) => api.choiceLoglikelihoods(x as Loose, tokenizer, "Once upon", [" a time"])],
  ["choiceLoglikelihoods", "tokenizer", (x) => api.choiceLoglikelihoods(model, x as Loose, "Once upon", [" a time"])],
  ["runTask", "model", (x) => api.runTask(x as Loose, tokenizer, "arc-easy", parent, 1)],
  ["runTask", "tokenizer", (x) => api.runTask(model, x as Loose, "arc-easy", parent, 1)],
  ["calibrate", "model", (x) => api.calibrate(x as Loose, [Int32Array.of(1, 2, 3)], { covariance: false })],
  ["calibrate", "windows", (x) => api.calibrate(model, x as Loose, { covariance: false })],
  ["calibrationWindows", "tokenizer", (x) => api.calibrationWindows(x as Loose, "Once upon a time", 1, 4, 1)],
  ["calibrationWindows", "text", (x) => api.calibrationWindows(tokenizer, x as Loose, 1, 4, 1)],
  ["readHfConfig", "folder", (x) => api.readHfConfig(x as Loose)],
  ["loadTokenizer", "folder", (x) => api.loadTokenizer(x as Loose)],
  ["loadChatTemplate", "folder", (x) => api.loadChatTemplate(x as Loose)],
  ["writeSafetensorsSync", "file", (x) => api.writeSafetensorsSync(x as Loose, [])],
  ["kvElemsPerToken", "config", (x) => api.kvElemsPerToken(x as Loose)],
  ["stopTokenIds", "config", (x) => api.stopTokenIds(x as Loose)],
  ["normalizeHfConfig", "json", (x) => api.normalizeHfConfig(x as Loose)],
  // Classes: their static open or constructor (Checkpoint.open(42) failed as a TypeError from path.join;
  // new IncrementalDecoder(42) was taken, failing at its first push).
  ["Checkpoint", "folder", (x) => api.Checkpoint.open(x as Loose)],
  ["SafetensorsFile", "file", (x) => api.SafetensorsFile.open(x as Loose)],
  ["IncrementalDecoder", "tokenizer", (x) => new api.IncrementalDecoder(x as Loose)],
  ["CheckpointWriter", "dir", (x) => new api.CheckpointWriter(x as Loose, [])],
  ["SafetensorsWriter", "file", (x) => new api.SafetensorsWriter(x as Loose, [])],
];

/** Exports that take none of those slots (or whose checks are tested elsewhere), with why. */
const NOT_IN_TABLE: Record<string, string> = {
  serve: "test/serve",
  writeReport: "test/eval/report",
  reportHtml: "eval results, refused as a whole when not",
  reportMarkdown: "eval results, refused as a whole when not",
  isMlaError: "any value",
  selectBackend: "a device name, checked by name",
  parseTaskNames: "a task list, checked by name",
  checkPenalties: "an options object",
  lrAt: "test/api/numberHelpers",
  pickToken: "test/api/numberHelpers",
  tokenLogprobs: "logits",
  seededRandom: "a number",
  ropeInvFreq: "numbers",
  uniformSplit: "an attention config",
  defaultRopePairs: "test/api/numberHelpers",
  fixedPairs: "numbers",
  topPairs: "scores",
  twoNormScores: "norm arrays",
  truncatedFactor: "matrices",
  whitenedFactor: "matrices",
  covarianceRoots: "matrices",
  factorLayer: "a layer's tensors",
};

/**
 * Wrong values for a slot: never a string where a string goes (a name to look up, refused as
 * NOT_FOUND), nor an object where any object goes (a config.json's, refused by its keys), nor
 * token ids where they go.
 */
function wrongValues(slot: Slot): [string, unknown][] {
  const all: [string, unknown][] = [["undefined", undefined], ["null", null], ["{}", {}], ["a number", 42], ["a string", "stories260K"], ["an array", [1, 2]]];
  const takesString = slot === "spec" || slot === "text" || slot === "folder" || slot === "dir" || slot === "file";
  return all.filter(([what]) => !(takesString && what === "a string") && !(slot === "json" && what === "{}") && !(slot === "prompt" && what === "an array"));
}

test("every entry refuses a wrong leading argument with MlaError BAD_ARGUMENT naming it, never a TypeError", async () => {
  for (const [entry, slot, call] of TABLE) {
    for (const [what, value] of wrongValues(slot)) {
      const label = `${entry}(${slot}: ${what})`;
      let thrown: unknown;
      try {
        await call(value);
      } catch (e) {
        thrown = e;
      }
      assert.ok(thrown instanceof api.MlaError, `${label}: ${thrown === undefined ? "returned" : `threw ${String(thrown)}`}`);
      assert.equal(thrown.code, "BAD_ARGUMENT", `${label}: ${thrown.message}`);
      assert.match(thrown.message, NAMED[slot], label);
      assert.match(thrown.message, /\n {2}hint: /, `${label}: no hint`);
    }
  }
  assert.deepEqual(fs.readdirSync(parent), [], "nothing written");
});

test("an async entry's refusal is a rejected promise, not a throw at the call", () => {
  const p = api.perplexity(null as Loose, Int32Array.of(1), { ctx: 4 });
  assert.ok(p instanceof Promise);
  return assert.rejects(p, { code: "BAD_ARGUMENT" });
});

test("loadModel's { model, tokenizer } pair where its model, tokenizer or config goes is named as such, with the fix", async () => {
  await assert.rejects(async () => api.generate(lm as Loose, [1, 2], { maxTokens: 2 }), /generate\(\): the model is the \{ model, tokenizer, … \} that loadModel returns[\s\S]*hint: pass its model: generate\(loadModel\(dir\)\.model/);
  await assert.rejects(async () => api.perplexity(lm as Loose, Int32Array.of(1, 2), { ctx: 4 }), /perplexity\(\): the model is the \{ model, tokenizer, … \} that loadModel returns/);
  await assert.rejects(async () => api.tokenizeForEval(lm as Loose, "a"), /the tokenizer is the \{ model, tokenizer, … \} that loadModel returns[\s\S]*loadModel\(dir\)\.tokenizer/);
  await assert.rejects(async () => api.stopTokenIds(lm as Loose), /stopTokenIds\(\): the config is the \{ model, tokenizer, config, … \} that loadModel returns[\s\S]*loadModel\(dir\)\.config/);
  await assert.rejects(async () => api.generate("stories260K" as Loose, [1, 2], { maxTokens: 2 }), /hint: load it first: const \{ model \} = loadModel\("stories260K"\)/);
  await assert.rejects(async () => api.generateBatch(model, [1, 2] as Loose, { maxTokens: 2 }), /prompt 1 is 1 \(a number\), not an array of token ids[\s\S]*pass \[ids\] for one prompt/);
});

test("the entries still work with right arguments", () => {
  assert.equal(api.kvElemsPerToken(config), 320);
  assert.ok(api.stopTokenIds(config).has(config.eosTokenId!));
  assert.equal(api.readHfConfig(lm.dir).vocabSize, 512);
  assert.equal(api.tokenizeForEval(tokenizer, "Once upon a time").length > 0, true);
  assert.equal(api.generate(model, [1, 2], { maxTokens: 2 }).ids.length, 2);
  assert.equal(api.defaultKvCache(model), "f32");
});

test("every exported function is in the table or said to take none of its slots", () => {
  const inTable = new Set(TABLE.map(([entry]) => entry));
  const functions = Object.keys(m).filter((k) => typeof m[k] === "function" && !/^class\s/.test(Function.prototype.toString.call(m[k])));
  const missing = functions.filter((k) => !inTable.has(k) && !(k in NOT_IN_TABLE));
  assert.deepEqual(missing, [], "classify each new export: a TABLE row, or NOT_IN_TABLE with why");
  for (const k of [...inTable, ...Object.keys(NOT_IN_TABLE)]) assert.ok(k in m, `${k} is no longer exported`);
});
