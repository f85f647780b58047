import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { perplexity, readText, tokenizeForEval } from "../../src/eval/perplexity.js";
import { loadModel } from "../../src/model/llama.js";
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

test("perplexity: a batch below 1 is refused", async () => {
  const lm = loadModel(path.join(MODELS, "stories260K"));
  await assert.rejects(perplexity(lm.model, Int32Array.from([5, 6, 7]), { ctx: 8, progress: null, batch: 0 }), (e: unknown) => e instanceof MlaError && /batch/.test(e.message));
});
