import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { perplexity, readText, tokenizeForEval } from "../../src/eval/perplexity.js";
import { loadModel } from "../../src/model/llama.js";
import { evaluate } from "../../src/eval/evaluate.js";
import { MlaError } from "../../src/errors.js";
import { convertFixture } from "../convert/helpers.js";
import { FIXTURES, MODELS } from "../helpers.js";

// Stacking full-length windows as one micro-batch (what the CUDA backend does by default) must score
// every token exactly as one window per forward does, partial last window included.
test("perplexity: windows batched per forward give the same NLL as one window per forward (MHA and MLA)", async () => {
  const text = readText(path.join(FIXTURES, "text", "tinystories.txt"));
  const mla = await convertFixture("stories260K", { rank: 4, ropePairs: 1, ropeStrategy: "uniform" });
  for (const dir of [path.join(MODELS, "stories260K"), mla]) {
    const lm = loadModel(dir);
    const ids = tokenizeForEval(lm.tokenizer, text, 1500);
    const one = await perplexity(lm.model, ids, { ctx: 64, progress: null, batch: 1 });
    for (const batch of [4, 16]) {
      const many = await perplexity(lm.model, ids, { ctx: 64, progress: null, batch });
      assert.equal(many.windows, one.windows);
      assert.equal(many.tokens, one.tokens);
      assert.ok(Math.abs(many.nll - one.nll) < 1e-9, `${path.basename(dir)} batch ${batch}: ${many.nll} vs ${one.nll}`);
    }
  }
});

// A throughput peer times after a warm-up forward, so the result also says what came after the first.
test("perplexity: the timing after the first forward counts the tokens of the later forwards (null with one forward)", async () => {
  const lm = loadModel(path.join(MODELS, "stories260K"));
  const ids = tokenizeForEval(lm.tokenizer, readText(path.join(FIXTURES, "text", "tinystories.txt")), 1000);
  const r = await perplexity(lm.model, ids, { ctx: 64, progress: null, batch: 4 });
  assert.ok(ids.length > 4 * 63);
  assert.equal(r.afterFirst?.tokens, ids.length - 4 * 63, "the first forward scored 4 full windows");
  assert.ok(r.afterFirst.seconds > 0 && r.afterFirst.seconds <= r.seconds);
  // Four full windows in one forward (a partial last window would take a forward of its own).
  assert.equal((await perplexity(lm.model, ids.subarray(0, 4 * 63), { ctx: 64, progress: null, batch: 4 })).afterFirst, null);
});

test("perplexity: a batch below 1 is refused", async () => {
  const lm = loadModel(path.join(MODELS, "stories260K"));
  await assert.rejects(perplexity(lm.model, Int32Array.from([5, 6, 7]), { ctx: 8, progress: null, batch: 0 }), (e: unknown) => e instanceof MlaError && /--batch 0: the windows scored per forward must be a positive integer/.test(e.message));
});

test("eval --batch reaches perplexity: the same NLL at 1 and 4 windows per forward", async () => {
  const args = { text: path.join(FIXTURES, "text", "tinystories.txt"), ctx: 64, tokens: 1000, progress: null };
  const [one, four] = [await evaluate(path.join(MODELS, "stories260K"), { ...args, batch: 1 }), await evaluate(path.join(MODELS, "stories260K"), { ...args, batch: 4 })];
  assert.ok(Math.abs(one.nll! - four.nll!) < 1e-9, `${one.nll} vs ${four.nll}`);
  await assert.rejects(evaluate(path.join(MODELS, "stories260K"), { ...args, batch: 1.5 }), (e: unknown) => e instanceof MlaError && /--batch 1\.5/.test(e.message));
});

test("tokenLosses: the LM head in row chunks gives forward's per-token cross-entropy (one window and stacked windows)", () => {
  const lm = loadModel(path.join(MODELS, "stories260K"));
  const text = readText(path.join(FIXTURES, "text", "tinystories.txt"));
  const ids = tokenizeForEval(lm.tokenizer, text, 3 * 40 + 1);
  const input = ids.subarray(0, 120), targets = ids.subarray(1, 121);
  const b = lm.model.backend;
  for (const sequences of [1, 3]) {
    const logits = lm.model.forward(input, undefined, { sequences });
    const want = b.crossEntropy(logits, targets);
    for (const chunk of [7, 40, 1000]) {
      const got = lm.model.tokenLosses(input, targets, { sequences }, chunk);
      assert.equal(got.length, want.length);
      assert.ok(got.every((x, i) => Math.abs(x - want[i]!) < 1e-9), `sequences ${sequences}, chunks of ${chunk}`);
    }
  }
  assert.throws(() => lm.model.tokenLosses(input, targets.subarray(1)), (e: unknown) => e instanceof MlaError && /119 targets for 120 tokens/.test(e.message));
});

// From a script: a plain array threw "ids.subarray is not a function", a Float32Array's bytes reached the
// native cross-entropy as int32 targets (a segmentation fault), an id past the vocabulary scored NaN on
// the reference backend and a negative one a number.
test("perplexity: ids that are not token ids of the model are refused by name; a plain array of ids is taken", async () => {
  const lm = loadModel(path.join(MODELS, "stories260K"));
  const V = lm.config.vocabSize;
  const refused = (re: RegExp) => (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message);
  await assert.rejects(perplexity(lm.model, Float32Array.of(403.5, 2, 408) as unknown as Int32Array, { ctx: 3, progress: null }), refused(/ids is Float32Array, not token ids/));
  await assert.rejects(perplexity(lm.model, Int32Array.of(403, V, 408), { ctx: 3, progress: null }), refused(new RegExp(`ids\\[1\\] is ${V}, not a token id of this model's vocabulary of ${V}`)));
  await assert.rejects(perplexity(lm.model, Int32Array.of(403, 407, -1), { ctx: 3, progress: null }), refused(/ids\[2\] is -1/));
  await assert.rejects(perplexity(lm.model, [403, 1.5] as unknown as Int32Array, { ctx: 3, progress: null }), refused(/ids\[1\] is 1\.5/));
  const typed = await perplexity(lm.model, Int32Array.of(403, 407, 408, 409), { ctx: 3, progress: null });
  const plain = await perplexity(lm.model, [403, 407, 408, 409] as unknown as Int32Array, { ctx: 3, progress: null });
  assert.equal(plain.nll, typed.nll);
  assert.ok(Number.isFinite(typed.nll));
});
