/**
 * choiceLoglikelihoods (a multiple-choice item's continuations scored over one prefill of their shared
 * context) gives loglikelihood's numbers choice by choice, for GQA and MLA, with an empty context, an
 * empty continuation, and continuations that merge into the context's last token.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { loadModel } from "../../src/model/llama.js";
import { choiceLoglikelihoods, loglikelihood } from "../../src/eval/tasks/score.js";
import { convertFixture } from "../convert/helpers.js";
import { MODELS } from "../helpers.js";

const cases: [string, string[]][] = [
  ["Once upon a time, there was a little", [" girl", " dog named Max", " boat.", ""]],
  ["", ["Once upon a time", "The cat"]],
  ["Lily and Tom went to the pa", ["rk", "rk. They played", " river"]],
];

for (const kind of ["gqa", "mla"] as const) {
  test(`choiceLoglikelihoods equals loglikelihood choice by choice (${kind})`, async () => {
    const spec = kind === "gqa" ? path.join(MODELS, "stories260K") : await convertFixture("stories260K", { rank: 4, ropePairs: 2, ropeStrategy: "uniform", device: "reference" });
    const { model, tokenizer } = loadModel(spec);
    for (const [context, choices] of cases) {
      // An int8 cache (groups of 32 per token) quantizes the same rows whether cached or round-tripped in one forward.
      const int8 = choiceLoglikelihoods(model, tokenizer, context, choices, "int8");
      choices.forEach((c, j) => assert.ok(Math.abs(int8[j]!.logprob - loglikelihood(model, tokenizer, context, c, "int8").logprob) < 1e-4, `${JSON.stringify(context + c)}: int8`));
      const got = choiceLoglikelihoods(model, tokenizer, context, choices);
      choices.forEach((c, j) => {
        const want = loglikelihood(model, tokenizer, context, c);
        assert.equal(got[j]!.tokens, want.tokens, `${JSON.stringify(context + c)}: tokens`);
        assert.equal(got[j]!.greedy, want.greedy, `${JSON.stringify(context + c)}: greedy`);
        assert.ok(Math.abs(got[j]!.logprob - want.logprob) < 1e-4, `${JSON.stringify(context + c)}: ${got[j]!.logprob} vs ${want.logprob}`);
      });
    }
  });
}
