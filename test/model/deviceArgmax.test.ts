/**
 * Greedy decoding on a backend with rowArgmax (the GPU's) takes each step's tokens there, and only
 * where the logits would be picked as they are: generate and serve then decode the same tokens as the
 * host's pick, and sampling, penalties, min_tokens or log-probabilities still bring the logits home.
 * Here a CPU backend with a host rowArgmax stands in for the GPU's (its kernel has a GPU test).
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { loadModel } from "../../src/model/llama.js";
import { generateBatch, type GenerateOptions } from "../../src/model/generate.js";
import { Batcher, type SequenceEnd, type SequenceSpec } from "../../src/serve/batcher.js";
import type { Backend } from "../../src/tensor/backend.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { MODELS } from "../helpers.js";

const dir = path.join(MODELS, "stories260K");
const plain = loadModel(dir).model;

/** The model on a backend whose rowArgmax counts its calls; `broken`: every row reads as holding no number. */
function withArgmax(broken = false) {
  const base = plain.backend;
  const seen = { calls: 0 };
  const rowArgmax = (logits: Tensor): Int32Array => {
    seen.calls++;
    const x = logits.toArray(), V = logits.shape[logits.shape.length - 1]!;
    return Int32Array.from({ length: x.length / V }, (_, t) => {
      let best = -1;
      for (let i = 0; i < V; i++) if (x[t * V + i]! > (best < 0 ? -Infinity : x[t * V + best]!)) best = i;
      return broken ? -1 : best;
    });
  };
  const backend = new Proxy(base, {
    get(target, key) {
      if (key === "rowArgmax") return rowArgmax;
      const v = Reflect.get(target, key, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  }) as Backend;
  return { model: loadModel(dir, { backend }).model, seen };
}

const prompts = [[1, 400, 300, 200], [1, 55], [1, 9, 9]];

test("generateBatch: greedy steps take their tokens from rowArgmax and decode as the host's pick; sampling and penalties do not call it; a row it finds empty is picked on the host", () => {
  const want = generateBatch(plain, prompts, { maxTokens: 12 }).sequences.map((s) => s.ids);
  const fast = withArgmax();
  assert.deepEqual(generateBatch(fast.model, prompts, { maxTokens: 12 }).sequences.map((s) => s.ids), want);
  assert.ok(fast.seen.calls >= 11, `rowArgmax once a step, ${fast.seen.calls} calls`);
  const others: Partial<GenerateOptions>[] = [{ temperature: 0.8, seed: 3 }, { repetitionPenalty: 1.3 }, { logitBias: new Map([[5, 2]]) }];
  for (const opts of others) {
    const other = withArgmax();
    assert.deepEqual(generateBatch(other.model, prompts, { maxTokens: 6, ...opts }).sequences.map((s) => s.ids), generateBatch(plain, prompts, { maxTokens: 6, ...opts }).sequences.map((s) => s.ids));
    assert.equal(other.seen.calls, 0, JSON.stringify(opts));
  }
  const broken = withArgmax(true);
  assert.deepEqual(generateBatch(broken.model, prompts, { maxTokens: 12 }).sequences.map((s) => s.ids), want);
});

function run(b: Batcher, spec: Omit<SequenceSpec, "onToken" | "onEnd">): { ids: number[]; end: Promise<SequenceEnd> } {
  const ids: number[] = [];
  let done!: (e: SequenceEnd) => void;
  const end = new Promise<SequenceEnd>((r) => (done = r));
  b.submit({ ...spec, onToken: (id) => (ids.push(id), true), onEnd: done });
  return { ids, end };
}

test("serve's batcher: a batch of greedy sequences takes rowArgmax's tokens, as the host picks them; one asking log-probabilities or held from its end tokens by min_tokens brings the logits home", async () => {
  const specs: Omit<SequenceSpec, "onToken" | "onEnd">[] = prompts.map((p) => ({ prompt: p, maxTokens: 10, sampling: { temperature: 0 }, seed: 0 }));
  const decode = async (model: typeof plain, list: typeof specs) => {
    const b = new Batcher(model, { maxBatch: 3, kvCache: "f32" });
    const runs = list.map((s) => run(b, s));
    await Promise.all(runs.map((r) => r.end));
    await b.whenIdle();
    return runs.map((r) => r.ids);
  };
  const want = await decode(plain, specs);
  const fast = withArgmax();
  assert.deepEqual(await decode(fast.model, specs), want);
  assert.ok(fast.seen.calls > 0);
  for (const change of [{ logprobs: 2 }, { minTokens: 10 }]) {
    const other = withArgmax();
    const list = specs.map((s, i) => (i === 1 ? { ...s, ...change } : s));
    assert.deepEqual(await decode(other.model, list), await decode(plain, list), JSON.stringify(change));
    assert.equal(other.seen.calls, 0, `${JSON.stringify(change)}: the whole batch's logits come home`);
  }
});
