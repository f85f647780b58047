/**
 * Penalties and logit biases (vLLM's order: bias, repetition over prompt and output, then frequency
 * and presence over the output) against a direct float64 reading of their definitions; generate()
 * with them equals a greedy loop over whole forwards with them applied; bad values are refused by name.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { checkPenalties, Penalties } from "../../src/model/penalties.js";
import { loadModel } from "../../src/model/llama.js";
import { generate } from "../../src/model/generate.js";
import { MODELS } from "../helpers.js";

const names = { presencePenalty: "presence", frequencyPenalty: "frequency", repetitionPenalty: "repetition", logitBias: "bias" };

test("penalties adjust the logits as their definitions read: bias, then repetition over prompt and output, then frequency and presence over the output", () => {
  const V = 12;
  const logits = Float32Array.from({ length: V }, (_, i) => Math.sin(i * 1.7) * 3);
  const prompt = [1, 2, 3];
  const generated = [3, 5, 5, 7];
  const o = { presencePenalty: 0.4, frequencyPenalty: 0.25, repetitionPenalty: 1.3, logitBias: new Map([[2, 5], [9, -100]]) };
  const p = Penalties.of(prompt, o)!;
  for (const t of generated) p.add(t);
  const got = p.apply(logits);
  const want = Array.from(logits, (x, i) => {
    let y = x + (o.logitBias.get(i) ?? 0);
    if (prompt.includes(i) || generated.includes(i)) y = y > 0 ? y / o.repetitionPenalty : y * o.repetitionPenalty;
    const n = generated.filter((t) => t === i).length;
    return y - o.frequencyPenalty * n - (n > 0 ? o.presencePenalty : 0);
  });
  got.forEach((x, i) => assert.ok(Math.abs(x - want[i]!) < 1e-5, `token ${i}: ${x} vs ${want[i]}`));
  assert.equal(logits[2], Math.fround(Math.sin(2 * 1.7) * 3), "the input row is left as it was");
  assert.equal(Penalties.of(prompt, { repetitionPenalty: 1, presencePenalty: 0, frequencyPenalty: 0, logitBias: new Map() }), null, "settings that change nothing cost nothing");
});

test("penalty settings outside their ranges are refused, naming the setting and the value", () => {
  assert.throws(() => checkPenalties({ presencePenalty: 3 }, 10, names), /presence 3 is not a number from -2 to 2/);
  assert.throws(() => checkPenalties({ frequencyPenalty: NaN }, 10, names), /frequency NaN/);
  assert.throws(() => checkPenalties({ repetitionPenalty: 0 }, 10, names), /repetition 0 is not a number above 0 and at most 100/);
  assert.throws(() => checkPenalties({ logitBias: new Map([[10, 1]]) }, 10, names), /bias names token id 10, outside the vocabulary of 10/);
  assert.throws(() => checkPenalties({ logitBias: new Map([[3, 101]]) }, 10, names), /bias gives token 3 the bias 101, outside -100 … 100/);
});

test("generate() with penalties and a bias equals a greedy loop over whole forwards with them applied", () => {
  const { model, tokenizer } = loadModel(path.join(MODELS, "stories260K"));
  const prompt = tokenizer.encode("Once upon a time", { addSpecialTokens: true });
  const o = { repetitionPenalty: 1.5, frequencyPenalty: 0.5, presencePenalty: 0.3, logitBias: new Map([[tokenizer.encode(" dog", { addSpecialTokens: false })[0]!, 4]]) };
  const got = generate(model, prompt, { maxTokens: 12, ...o, stopAtEos: false }).ids;
  const V = model.config.vocabSize;
  const ids = [...prompt], out: number[] = [];
  for (let k = 0; k < 12; k++) {
    const logits = model.forward(Int32Array.from(ids)).toArray().subarray((ids.length - 1) * V);
    const row = Array.from(logits, (x, i) => {
      let y = x + (o.logitBias.get(i) ?? 0);
      if (ids.includes(i)) y = y > 0 ? y / o.repetitionPenalty : y * o.repetitionPenalty;
      const n = out.filter((t) => t === i).length;
      return y - o.frequencyPenalty * n - (n > 0 ? o.presencePenalty : 0);
    });
    const t = row.indexOf(Math.max(...row));
    out.push(t);
    ids.push(t);
  }
  assert.deepEqual(got, out);
  assert.notDeepEqual(got, generate(model, prompt, { maxTokens: 12, stopAtEos: false }).ids, "they change the greedy text here");
  assert.throws(() => generate(model, prompt, { maxTokens: 2, repetitionPenalty: -1 }), /--repetition-penalty -1 is not a number above 0 and at most 100/);
});
