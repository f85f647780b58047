/**
 * Mistakes a JavaScript script makes past the entries' option tables: numbers that are not numbers of
 * the kind asked for, options of the lower-level objects (decode caches and sessions), a factory's class
 * made with `new`, a folder where a file goes. Each is an MlaError naming the culprit, with a hint, not a
 * TypeError, a default silently used, or a call that runs to its end ignoring what it was given.
 */
import test from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { AdamW, Batcher, calibrationWindows, Checkpoint, convert, covarianceRoots, DecodeSession, factorLayer, fixedPairs, generate, generateBatchAsync, IncrementalDecoder, KvCache, LatentCache, LlamaModel, loadModel, loglikelihood, lrAt, Penalties, pickToken, referenceBackend, ropeInvFreq, seededRandom, selectBackend, MlaError, perplexity, runTask, SafetensorsFile, study, tokenizeForEval, topPairs, truncatedFactor, twoNormScores, uniformSplit, whitenedFactor, writeReport } from "../../src/index.js";
import { fastCpu, FIXTURES, MODELS, tmpDir } from "../helpers.js";

const TEXT = path.join(FIXTURES, "text", "tinystories.txt");
type Loose = any;

function refused(re: RegExp): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof MlaError, `threw ${String(e)}`);
    assert.equal(e.code, "BAD_ARGUMENT", e.message);
    assert.match(e.message, re);
    assert.match(e.message, /\n {2}hint: /, "no hint");
    return true;
  };
}

test("a calibration length that is not a whole number says so (it said 'too small' for 1.5, NaN and Infinity)", async () => {
  const { tokenizer } = loadModel("stories260K");
  for (const len of [1.5, NaN, Infinity]) assert.throws(() => calibrationWindows(tokenizer, "Once upon a time there was a cat.", 2, len, 1), refused(new RegExp(`^--calib-len ${len} is not a whole number of tokens\\n {2}hint: use a whole number ≥ 2`)));
  assert.throws(() => calibrationWindows(tokenizer, "Once upon a time", 2, 1, 1), refused(/^--calib-len 1 is too small/));
  const parent = tmpDir();
  await assert.rejects(convert("stories260K", { rank: 4, calib: TEXT, calibLen: 1.5, out: path.join(parent, "out") }), refused(/^--calib-len 1\.5 is not a whole number of tokens/));
  assert.deepEqual(fs.readdirSync(parent), []);
});

test("generateBatchAsync refuses a yieldMs that never yields (NaN went unheard: an abort stopped nothing)", async () => {
  const { model } = loadModel("stories260K");
  for (const yieldMs of [NaN, Infinity, -1]) await assert.rejects(generateBatchAsync(model, [[1, 2]], { maxTokens: 2, yieldMs }), refused(new RegExp(`^generateBatchAsync\\(\\): yieldMs ${yieldMs} is not a number of milliseconds ≥ 0`)));
  // 0 gives a turn after every step: an abort from a timer is heard.
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 1);
  await assert.rejects(generateBatchAsync(model, [[1, 2]], { maxTokens: 5000, stopAtEos: false, yieldMs: 0, signal: ac.signal }), (e: unknown) => e instanceof MlaError && e.code === "INTERRUPTED");
});

test("tokenizeForEval refuses a maxTokens that is not a count (-3 kept 3 tokens, NaN none, \"5\" five)", () => {
  const { tokenizer } = loadModel("stories260K");
  for (const n of [-3, NaN, 0, 1.5]) assert.throws(() => tokenizeForEval(tokenizer, "Once upon a time", n), refused(new RegExp(`^tokenizeForEval\\(\\)'s maxTokens ${n} is not a positive count`)));
  assert.throws(() => tokenizeForEval(tokenizer, "Once upon a time", "5" as Loose), refused(/^tokenizeForEval\(\): maxTokens is "5" \(a string\), not a number/));
  assert.equal(tokenizeForEval(tokenizer, "Once upon a time", 2).length, 2);
  assert.equal(tokenizeForEval(tokenizer, "Once upon a time").length, tokenizeForEval(tokenizer, "Once upon a time", 1000).length);
});

test("perplexity needs ctx, and says so by name", async () => {
  const { model } = loadModel("stories260K");
  await assert.rejects(perplexity(model, Int32Array.of(1, 2, 3), {} as Loose), refused(/^perplexity\(\) needs the option ctx\n {2}hint: pass ctx as a number/));
});

test("a class made by its factory refuses `new` from JavaScript, pointing at the factory", () => {
  assert.throws(() => new (SafetensorsFile as Loose)(TEXT), refused(/^new SafetensorsFile\(…\) is not how a SafetensorsFile is made\n {2}hint: call SafetensorsFile\.open\(path\)/));
  assert.throws(() => new (Checkpoint as Loose)(path.join(MODELS, "stories260K")), refused(/^new Checkpoint\(…\) is not how a Checkpoint is made\n {2}hint: call Checkpoint\.open\(dir\)/));
  assert.ok(Checkpoint.open(path.join(MODELS, "stories260K")).names().length > 0);
});

test("an unknown option close to a known one is suggested (\"rank\" for ranks)", async () => {
  const out = path.join(tmpDir(), "study");
  await assert.rejects(study({ like: "stories260K", variants: ["mla"], rank: ["4"], data: TEXT, tokens: 512, out } as Loose), refused(/^study\(\) has no option "rank"\n {2}hint: did you mean ranks\?/));
  assert.ok(!fs.existsSync(out));
});

test("decode caches and sessions check their options and arguments", () => {
  const { model } = loadModel("stories260K");
  assert.throws(() => model.newCache("f32", { capacty: 16 } as Loose), refused(/^newCache\(\) has no option "capacty"\n {2}hint: did you mean capacity\?/));
  assert.throws(() => model.newCache("f32", { capacity: "16" } as Loose), refused(/^newCache\(\): option capacity is "16" \(a string\), not a number/));
  const cache = model.newCache("f32", Object.freeze({ capacity: 16 }));
  model.forward(Int32Array.of(1, 2, 3), cache);
  assert.throws(() => cache.clone(2 as Loose), refused(/^clone\(\) takes an options object, got 2 \(a number\)/));
  assert.throws(() => cache.clone({ token: 2 } as Loose), refused(/^clone\(\) has no option "token"\n {2}hint: did you mean tokens\?/));
  assert.equal(cache.clone(Object.freeze({ tokens: 2 })).length, 2);
  assert.throws(() => new DecodeSession(model, [cache], { graph: false } as Loose), refused(/^new DecodeSession\(\) has no option "graph"\n {2}hint: did you mean graphs\?/));
  assert.throws(() => new DecodeSession(model, [cache], { graphs: "no" } as Loose), refused(/option graphs is "no" \(a string\), not true or false/));
  assert.throws(() => new DecodeSession(model, [cache, 1 as Loose]), refused(/^new DecodeSession\(\): cache 1 is 1 \(a number\), not a decode cache\n {2}hint: make one per sequence with model\.newCache/));
  const session = new DecodeSession(model, [cache]);
  try {
    assert.throws(() => session.step(5 as Loose), refused(/^a decode step got 5 \(a number\), not the next token ids/));
    assert.throws(() => session.step([5.5] as Loose), refused(/^token id 5\.5 of sequence 0 is not a whole number/));
    assert.equal(cache.length, 3, "a refused step left the cache as it was");
    assert.deepEqual(session.step(Int32Array.of(5)).shape, [1, model.config.vocabSize]);
  } finally {
    session.dispose();
  }
});

test("writeReport names a folder given where an eval JSON goes (it was EISDIR)", () => {
  const dir = tmpDir();
  const out = path.join(dir, "r.html");
  assert.throws(() => writeReport([path.join(MODELS, "stories260K")], out), refused(/ is a folder, not an eval JSON file\n {2}hint: pass JSON files written by `mha2mla eval --json FILE`/));
  assert.deepEqual(fs.readdirSync(dir), []);
});

test("a tokenizer refuses text that is not a string, ids that are not an array, and transformers' option names (add_special_tokens left BOS out)", () => {
  const { tokenizer } = loadModel("stories260K");
  assert.throws(() => tokenizer.encode(5 as Loose), refused(/^encode\(\): the text is 5 \(a number\), not a string\n {2}hint: pass the text itself/));
  assert.throws(() => tokenizer.encode("Once", { add_special_tokens: true } as Loose), refused(/^encode\(\) has no option "add_special_tokens"\n {2}hint: did you mean addSpecialTokens\?/));
  assert.throws(() => tokenizer.decode("abc" as Loose), refused(/^decode\(\): the ids are "abc" \(a string\), not an array of token ids/));
  assert.throws(() => tokenizer.decode(419 as Loose), refused(/^decode\(\): the ids are 419 \(a number\), not an array of token ids/));
  assert.throws(() => tokenizer.decode([419], { skip_special_tokens: true } as Loose), refused(/^decode\(\) has no option "skip_special_tokens"\n {2}hint: did you mean skipSpecialTokens\?/));
  const ids = tokenizer.encode("Once upon a time", { addSpecialTokens: true });
  assert.equal(ids[0], 1, "BOS first");
  assert.deepEqual(tokenizer.encode("", {}), []);
  assert.equal(tokenizer.decode(Int32Array.from(ids.slice(1)) as Loose, { skipSpecialTokens: true }), "Once upon a time");
});

test("IncrementalDecoder.push refuses one id (what onToken hears) instead of handing out nothing ever", () => {
  const { model, tokenizer } = loadModel("stories260K");
  const decoder = new IncrementalDecoder(tokenizer);
  assert.throws(() => decoder.push(419 as Loose), refused(/^IncrementalDecoder\.push\(\): the ids are 419 \(a number\), not an array of token ids\n {2}hint: pass \[id\] for one id/));
  let text = "";
  const { ids } = generate(model, tokenizer.encode("Once upon a time", { addSpecialTokens: true }), { maxTokens: 8, stopAtEos: false, onToken: (_, id) => void (text += decoder.push([id])) });
  assert.equal(text + decoder.finish().rest, tokenizer.decode(ids));
});

test("runTask refuses an options object where its data folder goes, and an unknown task, before reading anything (a TypeError from fs before)", async () => {
  const { model, tokenizer } = loadModel("stories260K");
  await assert.rejects(runTask(model, tokenizer, "arc-easy", { limit: 2 } as Loose), refused(/^runTask\(\): the data folder is an object, not a string\n {2}hint: pass the folder of the task files, then the rest in order: runTask\(model, tokenizer, task, dataDir, limit/));
  await assert.rejects(runTask(model, tokenizer, "arc-ez" as Loose, tmpDir(), 2), refused(/^task "arc-ez" is not known\n {2}hint: known tasks: arc-easy/));
  await assert.rejects(runTask(model, tokenizer, 3 as Loose, tmpDir(), 2), refused(/^runTask\(\): the task is 3 \(a number\), not a string/));
});

test("an option of a known shape given another type is named by its shape (\"cpu\" where loadModel's backend goes said 'not an object')", () => {
  assert.throws(() => loadModel("stories260K", { backend: "cpu" } as Loose), refused(/^loadModel\(\): option backend is "cpu" \(a string\), not a backend, e\.g\. selectBackend\("auto"\)\n {2}hint: pass backend as a backend/));
  assert.throws(() => loadModel("stories260K", { backend: {} } as Loose), refused(/^loadModel\(\): option backend is not a backend/));
  assert.throws(() => loadModel("stories260K", { logger: console.log } as Loose), refused(/has no option "logger"/));
  const parent = tmpDir();
  return assert.rejects(convert("stories260K", { rank: 4, out: path.join(parent, "out"), logger: console.log } as Loose), refused(/^convert\(\): option logger is a function, not a logger with info\(message\) and warn\(message\)/)).then(() => assert.deepEqual(fs.readdirSync(parent), []));
});

test("selectBackend names what it got where a device name goes (no name read as \"--device undefined\", an object as [object Object])", () => {
  assert.throws(() => (selectBackend as Loose)(), refused(/^selectBackend\(\): the device is undefined, not a device name\n {2}hint: pass one of auto, reference, cpu, cuda, e\.g\. selectBackend\("auto"\)/));
  assert.throws(() => selectBackend({ device: "cpu" } as Loose), refused(/^selectBackend\(\): the device is an object, not a device name/));
  assert.throws(() => selectBackend("gpu" as Loose), refused(/^--device gpu is not known\n {2}hint: use one of auto, reference, cpu, cuda/));
  assert.equal(selectBackend("reference").name, "reference");
});

test("model.forward and model.decodeBatch refuse what is not a decode cache (a TypeError from inside before)", () => {
  const { model } = loadModel("stories260K");
  assert.throws(() => model.forward(Int32Array.of(1, 2), "cache" as Loose), refused(/^forward\(\): the cache is "cache" \(a string\), not a decode cache\n {2}hint: make one with model\.newCache\(dtype\)/));
  assert.throws(() => model.forward(Int32Array.of(1, 2), {} as Loose), refused(/^forward\(\): the cache is an object, not a decode cache/));
  const cache = model.newCache("f32");
  model.forward(Int32Array.of(1, 2), cache);
  assert.throws(() => model.decodeBatch(Int32Array.of(3), cache as Loose), refused(/^decodeBatch\(\): the caches are not an array\n {2}hint: pass one cache per sequence/));
  assert.throws(() => model.decodeBatch(Int32Array.of(3, 4), [cache, 5] as Loose), refused(/^decodeBatch\(\): cache 1 is 5 \(a number\), not a decode cache/));
  assert.equal(cache.length, 2, "a refused call left the cache as it was");
  assert.deepEqual(model.decodeBatch(Int32Array.of(3), [cache]).shape, [1, model.config.vocabSize]);
  assert.deepEqual(model.forward(Int32Array.of(1, 2)).shape, [2, model.config.vocabSize]);
});

test("model.forward, prefill and decodeBatch refuse ids that are not whole numbers (1.5 gave the logits of no token, a Float64Array's bytes other tokens)", () => {
  // The TypeScript backend, and the native CPU one where it is built (it read 1.5 as 1, a Float64Array's bytes as other ids).
  for (const opts of [{}, fastCpu()]) {
    const { model } = loadModel("stories260K", opts);
    const cache = model.newCache("f32");
    assert.throws(() => model.forward([1, 1.5] as Loose, cache), refused(/^forward\(\): ids\[1\] is 1\.5 \(a number\), not a token id\n {2}hint: pass an Int32Array of token ids/));
    assert.throws(() => model.forward(["1"] as Loose), refused(/^forward\(\): ids\[0\] is "1" \(a string\), not a token id/));
    assert.throws(() => model.forward("abc" as Loose), refused(/^forward\(\): the ids are "abc" \(a string\), not token ids/));
    assert.throws(() => model.prefill([NaN] as Loose, cache), refused(/^prefill\(\): ids\[0\] is NaN \(a number\), not a token id/));
    assert.throws(() => model.decodeBatch([2.5] as Loose, [cache]), refused(/^decodeBatch\(\): ids\[0\] is 2\.5 \(a number\), not a token id/));
    assert.equal(cache.length, 0, "a refused call left the cache as it was");
    // Whole numbers in any array are the same ids as an Int32Array's.
    const want = Array.from(model.backend.download(model.forward(Int32Array.of(1, 5))));
    for (const ids of [[1, 5], Float64Array.of(1, 5), Uint8Array.of(1, 5)]) assert.deepEqual(Array.from(model.backend.download(model.forward(ids as Loose))), want);
  }
});

test("a logitBias Map keyed by strings (built from an object's entries) is named as such, not as a token outside the vocabulary", () => {
  const { model } = loadModel("stories260K");
  assert.throws(() => generate(model, [1], { maxTokens: 2, logitBias: new Map([["5", 1]]) as Loose }), refused(/^logitBias names token id "5" \(a string\), not a number\n {2}hint: key it by numbers/));
  assert.throws(() => generate(model, [1], { maxTokens: 2, logitBias: new Map([[5, "1"]]) as Loose }), refused(/^logitBias gives token 5 the bias "1" \(a string\), not a number/));
  assert.equal(generate(model, [1], { maxTokens: 2, logitBias: new Map([[5, 1]]) }).ids.length, 2);
});

test("an empty string where text goes is called empty, not 'not a name'", () => {
  const { model, tokenizer } = loadModel("stories260K");
  assert.throws(() => loglikelihood(model, tokenizer, "Once", ""), refused(/^loglikelihood\(\): the continuation is an empty string\n {2}hint: pass the text to score/));
  assert.throws(() => tokenizeForEval(tokenizer, ""), refused(/^tokenizeForEval\(\): the text is an empty string\n/));
});

test("the low-level exports refuse garbage arguments by name (they threw TypeErrors, RangeErrors, or returned NaN or empty results)", async () => {
  const { model } = loadModel("stories260K");
  const be = referenceBackend;
  const cfg = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0 };
  const layer = { wk: new Float32Array(16), wv: new Float32Array(16), bk: null, bv: null, kvHeads: 1, headDim: 4, hidden: 4, selection: [[0]], rank: 1, svd: "joint", whiten: null };
  const cases: [() => unknown, RegExp][] = [
    [() => uniformSplit({} as Loose), /^uniformSplit\(\): the attention is an object, not an MLA attention/],
    [() => ropeInvFreq(NaN, { theta: 1e4, scaling: null }), /^ropeInvFreq\(\): headDim is NaN/],
    [() => ropeInvFreq(64, {} as Loose), /^ropeInvFreq\(\): rope\.theta is undefined/],
    [() => new (Penalties as Loose)(), /^Penalties: the prompt is undefined/],
    [() => Penalties.of([1], { presencePenalty: NaN }), /^Penalties' presencePenalty NaN/],
    [() => new Batcher(model, undefined as Loose), /^new Batcher\(\) takes an options object/],
    [() => new Batcher("stories260K" as Loose, { maxBatch: 2, kvCache: "f32" }), /^new Batcher\(\): the model is "stories260K"/],
    [() => new Batcher(model, { maxBatch: 2, kvCache: "zz" as Loose }), /^new Batcher\(\): option kvCache is "zz"/],
    [() => truncatedFactor(new Float64Array(4), NaN, 2, 1), /^truncatedFactor\(\): M is NaN/],
    [() => truncatedFactor(new Float32Array(4) as Loose, 2, 2, 1), /^truncatedFactor\(\): A \(2×2\) is a Float32Array of 4, not a Float64Array/],
    [() => whitenedFactor(new Float64Array(4), 2, 2, 1, undefined as Loose), /^whitenedFactor\(\): the roots are undefined/],
    [() => covarianceRoots(new Float64Array(4), -1), /^covarianceRoots\(\): N is -1/],
    [() => new AdamW(cfg, [-1]), /^new AdamW\(\): sizes\[0\] is -1/],
    [() => new AdamW({ ...cfg, beta1: "x" } as Loose, [4]), /^new AdamW\(\): beta1 is "x"/],
    [() => new LatentCache(be, 2, [{} as Loose]), /^new LatentCache\(\): layers\[0\]\.ropeDims is undefined/],
    [() => new KvCache(be, 2, NaN, 4), /^new KvCache\(\): kvHeads is NaN/],
    [() => new KvCache(be, 2, 2, 4, "zz" as Loose), /^new KvCache\(\): the dtype is "zz"/],
    [() => new LlamaModel("stories260K" as Loose, undefined as Loose, be), /^new LlamaModel\(\): the config is "stories260K"/],
    [() => new LlamaModel(model.config, {} as Loose, be), /^new LlamaModel\(\): the weights are an object/],
    [() => factorLayer({ ...layer, svd: "x" } as Loose), /^factorLayer\(\): svd is "x"/],
    [() => factorLayer({ ...layer, wk: new Float32Array(4) } as Loose), /^factorLayer\(\): wk \[4, 4\] is a Float32Array of 4/],
    [() => factorLayer({ ...layer, selection: [[7]] } as Loose), /^factorLayer\(\): selection\[0\]\[0\] is 7, past the last pair/],
    [() => lrAt({ name: "wsd", lr: 1e-3, warmupSteps: 0, decayFraction: 0.2, minLrFraction: 0 }, 1, NaN), /^lrAt's total NaN/],
    [() => fixedPairs("x" as Loose, 2, 8), /^fixedPairs\(\): the strategy is "x"/],
    [() => fixedPairs("low", 8, 8), /^fixedPairs\(\): R 8 is more than the 4 pairs/],
    [() => topPairs([3, 1, 2], NaN), /^topPairs\(\): R is NaN/],
    [() => topPairs([3, NaN, 2], 2), /^topPairs\(\): scores\[1\] is NaN, so the 2 highest of 3 pairs are not defined/],
    [() => twoNormScores(new Float64Array(4), new Float64Array(4), 2, 1, -2), /^twoNormScores\(\): half is -2/],
    [() => pickToken([1, 2] as Loose, { temperature: 0 }, Math.random), /^pickToken's logits are \[1, 2\]/],
    [() => seededRandom("1" as Loose), /^seededRandom\(\): the seed "1"/],
  ];
  for (const [call, re] of cases) {
    // factorLayer is async: its refusal is a rejection.
    let thrown: unknown = null;
    try {
      await call();
    } catch (e) {
      thrown = e;
    }
    assert.ok(thrown !== null, `${re} was not refused`);
    refused(re)(thrown);
  }
  // Valid calls are unchanged.
  assert.deepEqual(fixedPairs("low", 2, 8), [2, 3]);
  assert.deepEqual(topPairs([3, 1, 2], 2), [0, 2]);
  // NaN scores where the order does not matter (convert passes them so): none kept, or all.
  assert.deepEqual(topPairs([NaN, 1, 2], 0), []);
  assert.deepEqual(topPairs([NaN, 1, 2], 3), [0, 1, 2]);
  assert.equal(ropeInvFreq(8, { theta: 1e4, scaling: null }).length, 4);
  assert.equal(new KvCache(be, 2, 2, 4).length, 0);
});
