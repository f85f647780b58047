/**
 * The shape checks of an entry's leading arguments (the model, its tokenizer, token ids, a folder),
 * beside checkOptionTypes' of its options object. TypeScript callers cannot get these wrong; a
 * JavaScript caller can pass the { model, tokenizer } pair loadModel returns where its model goes, or a
 * folder's name where a loaded model goes, which failed as "Cannot read properties of undefined
 * (reading 'vocabSize')" somewhere inside. Only the shape is checked: the checks stay cheap enough for
 * every call, and the values are checked where they are used.
 */
import { MlaError } from "../errors.js";
import { describe } from "./optionTypes.js";

type Loose = Record<string, unknown>;

const isObject = (v: unknown): v is Loose => typeof v === "object" && v !== null;

/** What loadModel returns: a script that destructures nothing passes it whole. */
const isLoadedModel = (v: unknown): boolean => isObject(v) && isObject(v["model"]) && isObject(v["tokenizer"]);

/** `where` is the entry as called ("generate()"); its name without the parentheses goes into hints. */
const bare = (where: string) => where.replace(/\(\)$/, "");

/**
 * Refuses `v` unless it is a loaded model (LlamaModel: loadModel(dir).model). Checked by its parts
 * (a config and a backend), not instanceof: a second copy of the package, or a test's stand-in, passes.
 */
export function checkModelArg(where: string, v: unknown, name = "model"): void {
  if (isObject(v) && isObject(v["config"]) && isObject(v["backend"])) return;
  if (isLoadedModel(v)) throw new MlaError("BAD_ARGUMENT", `${where}: the ${name} is the { model, tokenizer, … } that loadModel returns, not the model itself`, `pass its model: ${bare(where)}(loadModel(dir).model, …)`);
  if (typeof v === "string") throw new MlaError("BAD_ARGUMENT", `${where}: the ${name} is ${describe(v)}, not a loaded model`, `load it first: const { model } = loadModel(${JSON.stringify(v)})`);
  throw new MlaError("BAD_ARGUMENT", `${where}: the ${name} is ${describe(v)}, not a loaded model`, "pass the model loadModel(dir) returns: loadModel(dir).model");
}

/** Refuses `v` unless it is a tokenizer (TextTokenizer: loadTokenizer(dir), or loadModel(dir).tokenizer). */
export function checkTokenizerArg(where: string, v: unknown): void {
  if (isObject(v) && typeof v["encode"] === "function" && typeof v["decode"] === "function") return;
  if (isLoadedModel(v)) throw new MlaError("BAD_ARGUMENT", `${where}: the tokenizer is the { model, tokenizer, … } that loadModel returns, not the tokenizer itself`, "pass its tokenizer: loadModel(dir).tokenizer");
  throw new MlaError("BAD_ARGUMENT", `${where}: the tokenizer is ${describe(v)}, not a tokenizer`, typeof v === "string" ? `load it first: loadTokenizer(${JSON.stringify(v)})` : "pass loadTokenizer(dir), or the tokenizer loadModel(dir) returns");
}

/** Refuses `v` unless it is a string; `what` names it ("the text", "the model folder"), `hint` says what goes there. */
export function checkStringArg(where: string, what: string, v: unknown, hint: string): void {
  if (typeof v === "string" && v !== "") return;
  // An empty text (a continuation, a task) is no more "a name" than a folder's empty path is text.
  throw new MlaError("BAD_ARGUMENT", `${where}: ${what} is ${v === "" ? "an empty string" : `${describe(v)}, not a string`}`, hint);
}

/** Refuses `v` unless it is an array of Int32Array token-id windows (what calibrationWindows returns). */
export function checkWindowsArg(where: string, v: unknown): void {
  if (Array.isArray(v) && v.every((w) => w instanceof Int32Array)) return;
  throw new MlaError("BAD_ARGUMENT", `${where}: the windows are ${describe(v)}, not an array of Int32Array token-id windows`, "make them with calibrationWindows(tokenizer, text, samples, len, bos)");
}

/** A decode cache (model.newCache), known by its methods: a test's stand-in passes. */
const isDecodeCache = (c: unknown): boolean => isObject(c) && typeof c["commitStep"] === "function" && typeof c["replayBuffers"] === "function";

/** Refuses `caches` unless it is an array of decode caches; `hint` says how the entry's caches are made. */
export function checkCachesArg(where: string, caches: unknown, hint: string): void {
  if (!Array.isArray(caches)) throw new MlaError("BAD_ARGUMENT", `${where}: the caches are not an array`, hint);
  const bad = caches.findIndex((c) => !isDecodeCache(c));
  if (bad >= 0) throw new MlaError("BAD_ARGUMENT", `${where}: cache ${bad} is ${describe(caches[bad])}, not a decode cache`, hint);
}

/** Refuses `cache` unless it is a decode cache or left out (model.forward's). */
export function checkCacheArg(where: string, cache: unknown): void {
  if (cache !== undefined && !isDecodeCache(cache)) throw new MlaError("BAD_ARGUMENT", `${where}: the cache is ${describe(cache)}, not a decode cache`, "make one with model.newCache(dtype), or leave it out to score the ids from position 0");
}

/**
 * Token ids as the model's methods read them: an Int32Array as it is, or an array (or another typed
 * array) of whole numbers copied into one. A script's [1.5] or Float64Array.of(1) went through
 * unchecked: the TypeScript backend embedded a row between two tokens, the native one read 1.5 as
 * token 1 and a Float64Array's bytes as other ids, each returning logits for tokens never given.
 */
export function tokenIdsArg(where: string, ids: unknown): Int32Array {
  if (ids instanceof Int32Array) return ids;
  const hint = "pass an Int32Array of token ids, e.g. Int32Array.from(tokenizer.encode(text, { addSpecialTokens: true }))";
  if (!Array.isArray(ids) && !(ArrayBuffer.isView(ids) && !(ids instanceof DataView))) throw new MlaError("BAD_ARGUMENT", `${where}: the ids are ${describe(ids)}, not token ids`, hint);
  const list = ids as ArrayLike<unknown>;
  for (let i = 0; i < list.length; i++) {
    const t = list[i];
    if (!(typeof t === "number" && Number.isInteger(t) && t >= -(2 ** 31) && t < 2 ** 31)) throw new MlaError("BAD_ARGUMENT", `${where}: ids[${i}] is ${describe(t)}, not a token id`, hint);
  }
  return Int32Array.from(list as ArrayLike<number>);
}

/**
 * Refuses `v` unless it is a model config (ModelConfig: loadModel(dir).config, readHfConfig(dir)).
 * loadModel's result and a loaded model both hold one, and read as a config without stop tokens.
 */
export function checkConfigArg(where: string, v: unknown): void {
  if (isObject(v) && typeof v["vocabSize"] === "number" && isObject(v["attention"])) return;
  if (isObject(v) && isObject(v["config"])) throw new MlaError("BAD_ARGUMENT", `${where}: the config is ${isLoadedModel(v) ? "the { model, tokenizer, config, … } that loadModel returns" : "a loaded model"}, not its config`, `pass its config: ${bare(where)}(${isLoadedModel(v) ? "loadModel(dir)" : "model"}.config)`);
  throw new MlaError("BAD_ARGUMENT", `${where}: the config is ${describe(v)}, not a model config`, "pass loadModel(dir).config, or readHfConfig(dir)");
}

/**
 * Refuses `new C(…)` from JavaScript for an exported class whose instances its factory makes (the
 * constructor is private to TypeScript only): `new SafetensorsFile(path)` failed as "Cannot read
 * properties of undefined (reading 'map')", and `new Checkpoint(dir)` made an object whose every read
 * failed later. `made`: the constructor got what its factory passes.
 */
export function checkFactoryMade(made: boolean, cls: string, factory: string): void {
  if (!made) throw new MlaError("BAD_ARGUMENT", `new ${cls}(…) is not how a ${cls} is made`, `call ${factory}`);
}
