/**
 * Issue 16: zero-sized dimensions on every CPU backend, and the identity conversion of
 * stories260K-mha (every RoPE pair kept, so k_up_proj is [0, L]) on the native CPU backend.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { loadNativeCpu, NativeCpuBackend } from "../../src/backends/native/cpu.js";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { perplexity, readText, tokenizeForEval } from "../../src/eval/perplexity.js";
import { loadModel } from "../../src/model/llama.js";
import type { Backend } from "../../src/tensor/backend.js";
import { convertFixture } from "../convert/helpers.js";
import { FIXTURES, MODELS, maxAbsDiff } from "../helpers.js";
import { zeroWidthFailures } from "./zeroWidth.js";

const lib = loadNativeCpu();
const backends: [string, () => Backend][] = [
  ["reference", () => new ReferenceBackend()],
  ["native CPU", () => new NativeCpuBackend(lib as Exclude<typeof lib, string>)],
];
const skipFor = (name: string) => (name === "native CPU" && typeof lib === "string" ? `native CPU library not loaded: ${lib}` : false);

for (const [name, make] of backends) {
  test(`${name}: ops accept zero-sized dimensions (M, K, N, T, S, head dims = 0)`, { skip: skipFor(name) }, () => {
    const bad = zeroWidthFailures(make());
    assert.deepEqual(bad, []);
  });

  test(`${name}: stories260K-mha converted with every RoPE pair (k_up_proj [0, L]) reproduces the original NLL; absorbed decode too`, { skip: skipFor(name) }, async () => {
    const out = await convertFixture("stories260K-mha", { rank: 8, ropePairs: 4, ropeStrategy: "high" });
    const text = readText(path.join(FIXTURES, "text", "tinystories_heldout.txt"));
    const nll = async (dir: string) => {
      const lm = loadModel(dir, { backend: make() });
      return (await perplexity(lm.model, tokenizeForEval(lm.tokenizer, text, 2000), { ctx: 256, progress: null })).nll;
    };
    const [orig, conv] = [await nll(path.join(MODELS, "stories260K-mha")), await nll(out)];
    assert.ok(Math.abs(conv - orig) <= 1e-5, `converted ${conv} vs original ${orig}`);
    const { model, tokenizer, config } = loadModel(out, { backend: make() });
    const ids = Int32Array.from(tokenizer.encode("Once upon a time", { addSpecialTokens: true }));
    const full = model.forward(ids).toArray();
    const cache = model.newCache();
    model.forward(ids.subarray(0, ids.length - 1), cache);
    const last = model.forward(ids.subarray(ids.length - 1), cache, { absorb: true }).toArray();
    const err = maxAbsDiff(last, full.subarray(full.length - config.vocabSize));
    assert.ok(err <= 1e-4, `absorbed decode: max |Δ| ${err}`);
  });
}
