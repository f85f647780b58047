/**
 * LlamaModel.prefillScored: the prompt's tokens scored while it is prefilled (what a completion's echo
 * with logprobs reports) equal the log-softmax of one forward's rows and the cross-entropy that
 * perplexity sums, whole or in chunks on a growing cache, for GQA and for MLA; its last row's logits
 * are prefill's.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { loadModel } from "../../src/model/llama.js";
import { convertFixture } from "../convert/helpers.js";
import { MODELS, maxAbsDiff } from "../helpers.js";
import type { TokenLogprobs } from "../../src/model/sampling.js";

const ids = Int32Array.of(1, 400, 300, 200, 17, 23, 42, 9, 8, 7, 6, 5, 99, 311);

for (const kind of ["gqa", "mla"] as const) {
  test(`prefillScored scores each prompt token as one forward's log-softmax, whole and in chunks (${kind})`, async () => {
    const spec = kind === "gqa" ? path.join(MODELS, "stories260K") : await convertFixture("stories260K", { rank: 4, ropePairs: 2, ropeStrategy: "uniform", device: "reference" });
    const { model, config } = loadModel(spec);
    const V = config.vocabSize, T = ids.length;
    const logits = model.forward(ids).toArray();
    const losses = model.tokenLosses(ids.subarray(0, T - 1), ids.subarray(1));
    const next = Int32Array.from({ length: T }, (_, i) => (i + 1 < T ? ids[i + 1]! : -1));
    for (const chunk of [T, 5, 1]) {
      const cache = model.newCache();
      const scored: (TokenLogprobs | null)[] = [];
      let last: ArrayLike<number> = [];
      for (let s = 0; s < T; s += chunk) {
        const out = model.prefillScored(ids.subarray(s, s + chunk), cache, next.subarray(s, s + chunk), 3);
        scored.push(...out.scored);
        last = out.logits;
      }
      assert.equal(cache.length, T);
      assert.equal(scored.length, T);
      assert.equal(scored[T - 1], null, "the last row has no next token to score");
      for (let i = 0; i + 1 < T; i++) {
        const x = scored[i]!;
        assert.ok(Math.abs(x.logprob + losses[i]!) < 1e-4, `chunks of ${chunk}, token ${i + 1}: ${x.logprob} against −${losses[i]}`);
        const row = logits.subarray(i * V, (i + 1) * V);
        const order = Array.from(row.keys()).sort((a, b) => row[b]! - row[a]! || a - b);
        assert.deepEqual(x.top.map((t) => t.id), order.slice(0, 3), `the 3 most likely after token ${i}`);
        assert.ok(x.top[0]!.logprob >= x.logprob - 1e-6);
      }
      assert.ok(maxAbsDiff(last, logits.subarray((T - 1) * V)) < 1e-4, `chunks of ${chunk}: the last row's logits`);
    }
    assert.throws(() => model.prefillScored(ids, model.newCache(), next.subarray(1), 1), /13 next tokens for 14 ids/);
  });
}
