/**
 * Public entries whose own modules check their options but not their leading arguments (the model,
 * its tokenizer, its config, a folder, the text): here the same functions, with those checked first, so that a
 * JavaScript caller who passes loadModel's { model, tokenizer } pair, a folder's name where a loaded
 * model goes, or no folder at all gets an MlaError BAD_ARGUMENT naming the argument, not a TypeError
 * from deep inside ("reading 'bosTokenId'", 'The "path" argument must be of type string'). The
 * repository's own callers import the unchecked functions: TypeScript checks their arguments.
 * An async entry's refusal is a rejection, as its other errors are.
 */
import { perplexity as perplexityOf, tokenizeForEval as tokenizeForEvalOf } from "./eval/perplexity.js";
import { loglikelihood as loglikelihoodOf, choiceLoglikelihoods as choiceLoglikelihoodsOf } from "./eval/tasks/score.js";
import { checkTaskName, runTask as runTaskOf, TASKS } from "./eval/tasks/index.js";
import { normalizeHfConfig as normalizeHfConfigOf, readHfConfig as readHfConfigOf } from "./io/hfConfig.js";
import { writeSafetensorsSync as writeSafetensorsSyncOf } from "./io/safetensors.js";
import { loadTokenizer as loadTokenizerOf } from "./io/tokenizer.js";
import { loadChatTemplate as loadChatTemplateOf } from "./serve/chatTemplate.js";
import { calibrate as calibrateOf, calibrationWindows as calibrationWindowsOf } from "./ropeSelect/calibrate.js";
import { kvElemsPerToken as kvElemsPerTokenOf, stopTokenIds as stopTokenIdsOf } from "./model/config.js";
import { checkConfigArg, checkModelArg, checkStringArg, checkTokenizerArg, checkWindowsArg } from "./util/argTypes.js";
import { MlaError } from "./errors.js";
import { describe } from "./util/optionTypes.js";
import { requireCount } from "./util/counts.js";

const FOLDER_HINT = "pass the model folder's path, e.g. loadModel(spec).dir or resolveModel(spec).dir";
const TEXT_HINT = "pass the text itself as a string (readFileSync(file, \"utf8\") for a file's)";

/** Scores `tokenIds` with `model` (eval/perplexity.ts). */
export const perplexity: typeof perplexityOf = async (model, tokenIds, opts) => {
  checkModelArg("perplexity()", model);
  return perplexityOf(model, tokenIds, opts);
};

/** The first `maxTokens` token ids of `text` (eval/perplexity.ts). */
export const tokenizeForEval: typeof tokenizeForEvalOf = (tokenizer, text, maxTokens) => {
  checkTokenizerArg("tokenizeForEval()", tokenizer);
  checkStringArg("tokenizeForEval()", "the text", text, TEXT_HINT);
  // -3 kept the first 3 tokens (slice(0, -3) of a short encoding), NaN none, "5" five.
  if (maxTokens !== undefined && maxTokens !== null && typeof maxTokens !== "number") throw new MlaError("BAD_ARGUMENT", `tokenizeForEval(): maxTokens is ${describe(maxTokens)}, not a number`, "pass a whole number ≥ 1, or leave it out for all of the text");
  requireCount("tokenizeForEval()'s maxTokens", maxTokens ?? undefined);
  return tokenizeForEvalOf(tokenizer, text, maxTokens ?? undefined);
};

function checkScoring(where: string, model: unknown, tok: unknown, context: unknown): void {
  checkModelArg(where, model);
  checkTokenizerArg(where, tok);
  if (typeof context !== "string") throw new MlaError("BAD_ARGUMENT", `${where}: the context is ${context === null ? "null" : typeof context}, not a string`, "pass the text before the continuation (\"\" for none)");
}

/** The log-probability of `continuation` after `context` (eval/tasks/score.ts). */
export const loglikelihood: typeof loglikelihoodOf = (model, tok, context, continuation, kvCache) => {
  checkScoring("loglikelihood()", model, tok, context);
  checkStringArg("loglikelihood()", "the continuation", continuation, "pass the text to score after the context, e.g. \" Paris\"");
  return loglikelihoodOf(model, tok, context, continuation, kvCache);
};

/** loglikelihood of each of `continuations` after one `context` (eval/tasks/score.ts). */
export const choiceLoglikelihoods: typeof choiceLoglikelihoodsOf = (model, tok, context, continuations, kvCache) => {
  checkScoring("choiceLoglikelihoods()", model, tok, context);
  if (!Array.isArray(continuations) || !continuations.every((c) => typeof c === "string" && c !== ""))
    throw new MlaError("BAD_ARGUMENT", "choiceLoglikelihoods(): the continuations are not an array of non-empty strings", "pass one string per choice, e.g. [\" yes\", \" no\"]");
  return choiceLoglikelihoodsOf(model, tok, context, continuations, kvCache);
};

/** One benchmark's accuracy (eval/tasks/index.ts). */
export const runTask: typeof runTaskOf = async (model, tok, task, dataDir, ...rest) => {
  checkModelArg("runTask()", model);
  checkTokenizerArg("runTask()", tok);
  checkStringArg("runTask()", "the task", task, `pass a task's name: ${Object.keys(TASKS).join(", ")}`);
  checkTaskName(task);
  // The arguments are positional: an options object where the folder goes failed as a TypeError in fs.
  checkStringArg("runTask()", "the data folder", dataDir, "pass the folder of the task files, then the rest in order: runTask(model, tokenizer, task, dataDir, limit, progress, signal, kvCache)");
  return runTaskOf(model, tok, task, dataDir, ...rest);
};

/** The normalized config of the model folder `dir` (io/hfConfig.ts). */
export const readHfConfig: typeof readHfConfigOf = (dir) => {
  checkStringArg("readHfConfig()", "the model folder", dir, FOLDER_HINT);
  return readHfConfigOf(dir);
};

/** A parsed config.json as a ModelConfig (io/hfConfig.ts). */
export const normalizeHfConfig: typeof normalizeHfConfigOf = (raw, file) => {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new MlaError("BAD_ARGUMENT", `normalizeHfConfig(): the config is ${raw === null ? "null" : Array.isArray(raw) ? "an array" : typeof raw}, not the object of a config.json`, "pass JSON.parse(readFileSync(\"DIR/config.json\", \"utf8\")), or call readHfConfig(DIR)");
  return normalizeHfConfigOf(raw, file);
};

/** Writes `tensors` to the safetensors file `path` (io/safetensors.ts). */
export const writeSafetensorsSync: typeof writeSafetensorsSyncOf = (file, tensors, metadata) => {
  // The file name is SafetensorsWriter's own check.
  if (!Array.isArray(tensors)) throw new MlaError("BAD_ARGUMENT", "writeSafetensorsSync(): the tensors are not an array", "pass [{ name, dtype, shape, data }, …]");
  return writeSafetensorsSyncOf(file, tensors, metadata);
};

/** The tokenizer of the model folder `dir` (io/tokenizer.ts). */
export const loadTokenizer: typeof loadTokenizerOf = (dir) => {
  checkStringArg("loadTokenizer()", "the model folder", dir, FOLDER_HINT);
  return loadTokenizerOf(dir);
};

/** The chat template of the model folder `dir`, or null when it has none (serve/chatTemplate.ts). */
export const loadChatTemplate: typeof loadChatTemplateOf = (dir) => {
  checkStringArg("loadChatTemplate()", "the model folder", dir, FOLDER_HINT);
  return loadChatTemplateOf(dir);
};

/** Activation statistics of `model` over `windows` (ropeSelect/calibrate.ts). */
export const calibrate: typeof calibrateOf = async (model, windows, opts) => {
  checkModelArg("calibrate()", model);
  checkWindowsArg("calibrate()", windows);
  return calibrateOf(model, windows, opts);
};

/** Windows of `[BOS] + len − 1` tokens from the start of `text` (ropeSelect/calibrate.ts). */
export const calibrationWindows: typeof calibrationWindowsOf = (tokenizer, text, ...rest) => {
  checkTokenizerArg("calibrationWindows()", tokenizer);
  checkStringArg("calibrationWindows()", "the text", text, TEXT_HINT);
  return calibrationWindowsOf(tokenizer, text, ...rest);
};

/** KV-cache elements per token of a model with config `c`, all layers (model/config.ts). */
export const kvElemsPerToken: typeof kvElemsPerTokenOf = (c) => {
  checkConfigArg("kvElemsPerToken()", c);
  return kvElemsPerTokenOf(c);
};

/** The ids that end a generation under config `c` (model/config.ts). */
export const stopTokenIds: typeof stopTokenIdsOf = (c) => {
  // Its own check: it takes any object with eosTokenId (a config), and one without read as "no stop tokens".
  if (!(typeof c === "object" && c !== null && "eosTokenId" in c)) checkConfigArg("stopTokenIds()", c);
  return stopTokenIdsOf(c);
};
