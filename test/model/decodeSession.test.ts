/**
 * DecodeSession on a backend without step recording (the CPU ones): steps equal decodeBatch, it says
 * why it runs op by op, and checks its input; DecodeCache.truncate forgets tokens (what a refused
 * recording relies on); generateBatch decodes several prompts as each would alone; when the session
 * records again (a fake recording backend). The recorded (CUDA graph) path itself is tested on the GPU
 * (test/backends/cuda.test.ts).
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { loadModel, type LlamaModel } from "../../src/model/llama.js";
import type { DecodeCache } from "../../src/model/kvCache.js";
import { DecodeSession } from "../../src/model/decodeSession.js";
import { generate, generateBatch } from "../../src/model/generate.js";
import { fastCpu, MODELS, maxAbsDiff } from "../helpers.js";
import { MlaError } from "../../src/errors.js";

const prompts = [Int32Array.of(1, 400, 300, 200), Int32Array.of(1, 55)];

test("a decode session on the CPU steps like decodeBatch, says why it does not record, and refuses bad tokens", () => {
  const { model, config } = loadModel(path.join(MODELS, "stories260K"));
  const fill = () => prompts.map((p) => { const c = model.newCache(); model.forward(p, c); return c; });
  const mine = fill(), theirs = fill();
  const session = new DecodeSession(model, mine);
  assert.match(session.why ?? "", /has no step recording/);
  let next = Int32Array.of(17, 23);
  for (let step = 0; step < 4; step++) {
    const got = session.step(next).toArray();
    const want = model.decodeBatch(next, theirs).toArray();
    assert.equal(maxAbsDiff(got, want), 0);
    assert.equal(session.graphed, false);
    next = Int32Array.of(30 + step, 40 + step);
  }
  assert.deepEqual(mine.map((c) => c.length), [8, 6]);
  assert.throws(() => session.step(Int32Array.of(1)), (e: unknown) => e instanceof MlaError && /1 tokens for 2 sequences/.test(e.message));
  assert.throws(() => session.step(Int32Array.of(1, config.vocabSize)), (e: unknown) => e instanceof MlaError && /outside the vocabulary/.test(e.message));
  assert.throws(() => new DecodeSession(model, [mine[0]!, mine[0]!]), /same cache twice/);
  session.dispose();
});

test("truncate forgets a cache's last tokens: decoding after it equals decoding a cache that never held them", () => {
  const { model } = loadModel(path.join(MODELS, "stories260K"));
  const a = model.newCache(), b = model.newCache();
  model.forward(Int32Array.of(1, 400, 300, 200, 9, 8), a);
  model.forward(Int32Array.of(1, 400, 300, 200), b);
  a.truncate(4);
  assert.equal(a.length, 4);
  assert.equal(a.elements, b.elements);
  assert.equal(maxAbsDiff(model.forward(Int32Array.of(17), a).toArray(), model.forward(Int32Array.of(17), b).toArray()), 0);
  assert.throws(() => a.truncate(6), /truncate: 6 tokens of a cache holding 5/);
});

test("generateBatch continues several prompts together as each would alone (greedy and sampled), a sequence that stops leaves the batch, and bad input names the prompt", () => {
  const { model, config } = loadModel(path.join(MODELS, "stories260K"));
  const prompts = [[1, 400, 300, 200], [1, 55], [1, 9, 8, 7, 6, 5]];
  for (const opts of [{ maxTokens: 10 }, { maxTokens: 10, temperature: 0.8, seed: 3 }]) {
    const together = generateBatch(model, prompts, opts);
    assert.equal(together.decodeTokens, 3 * 9, "the first new token of each comes from its prompt's prefill");
    assert.match(together.steps, /op by op/);
    prompts.forEach((p, i) => assert.deepEqual(together.sequences[i]!.ids, generateBatch(model, [p], { ...opts, seed: (opts.seed ?? 0) + i }).sequences[0]!.ids, `prompt ${i}`));
    assert.deepEqual(generate(model, prompts[0]!, opts).ids, together.sequences[0]!.ids);
    // onToken hears each token as it is picked (what generate streams from), in each sequence's order.
    const heard: number[][] = prompts.map(() => []);
    generateBatch(model, prompts, { ...opts, onToken: (i, t) => heard[i]!.push(t) });
    assert.deepEqual(heard, together.sequences.map((s) => s.ids));
  }
  // A sequence that meets EOS stops there; the others go on.
  const eos = config.eosTokenId ?? -1;
  const short = generateBatch(model, prompts, { maxTokens: 40 });
  for (const s of short.sequences) {
    const at = s.ids.indexOf(eos);
    assert.ok(at < 0 ? s.ids.length === 40 : at === s.ids.length - 1, "ends at its EOS or after 40 tokens");
  }
  assert.deepEqual(generateBatch(model, prompts, { maxTokens: 0 }).sequences.map((s) => s.ids), [[], [], []]);
  assert.throws(() => generateBatch(model, [[1, 2], []], { maxTokens: 3 }), /prompt 2 has no tokens/);
  assert.throws(() => generateBatch(model, [], { maxTokens: 3 }), /no prompts/);
});

test("a recording session (a fake backend that records) replays from the third step; a route switched mid-session or new weights mean one op-by-op step and a new recording; a route whose recording is refused runs op by op until the route changes back; a refused route value is an error", () => {
  let routes = "gemv=4", decodes = 0, captures = 0, launches = 0, disposed = 0;
  const logits = (tag: string) => ({ tag, dispose() {} });
  const backend = {
    name: "fake",
    routes() {
      if (routes.includes("bad")) throw new MlaError("BAD_ARGUMENT", `${routes} is not a route`, "unset it");
      return routes;
    },
    captureStep(_ids: Int32Array, _positions: Int32Array, run: () => unknown) {
      captures++;
      // As the CUDA backend refuses the cuBLAS decode route: before the step's work, nothing recorded.
      if (routes === "cublas") throw new MlaError("UNSUPPORTED", "decode attention on this cache takes the cuBLAS route", "use the kernel route");
      return { result: run(), graph: { launch() { launches++; }, dispose() { disposed++; } } };
    },
  };
  const buffer = {};
  const cache = { length: 4, capacity: 100, replayBuffers: () => [buffer], commitStep() { this.length++; }, truncate(n: number) { this.length = n; } };
  const model = {
    backend,
    config: { vocabSize: 50, attention: { kind: "mla" } },
    weightsVersion: 0,
    decodeBatch() {
      decodes++;
      cache.length++;
      return logits(`step ${decodes}`);
    },
  };
  const session = new DecodeSession(model as unknown as LlamaModel, [cache as unknown as DecodeCache]);
  const step = () => {
    session.step(Int32Array.of(7));
    return { graphed: session.graphed, decodes, captures, launches, disposed };
  };
  assert.deepEqual(step(), { graphed: false, decodes: 1, captures: 0, launches: 0, disposed: 0 }, "the first step warms up op by op");
  assert.deepEqual(step(), { graphed: true, decodes: 2, captures: 1, launches: 0, disposed: 0 }, "the second is recorded");
  assert.deepEqual(step(), { graphed: true, decodes: 2, captures: 1, launches: 1, disposed: 0 }, "the third replays");
  routes = "gemv=0";
  assert.deepEqual(step(), { graphed: false, decodes: 3, captures: 1, launches: 1, disposed: 1 }, "a new route: the graph goes, one op-by-op step");
  assert.deepEqual(step(), { graphed: true, decodes: 4, captures: 2, launches: 1, disposed: 1 }, "then a recording with the new route");
  assert.deepEqual(step(), { graphed: true, decodes: 4, captures: 2, launches: 2, disposed: 1 });
  model.weightsVersion++;
  assert.deepEqual(step(), { graphed: false, decodes: 5, captures: 2, launches: 2, disposed: 2 }, "new weights: the same");
  assert.deepEqual(step(), { graphed: true, decodes: 6, captures: 3, launches: 2, disposed: 2 });
  assert.equal(cache.length, 12);
  routes = "cublas";
  assert.deepEqual(step(), { graphed: false, decodes: 7, captures: 3, launches: 2, disposed: 3 }, "a route that cannot be recorded: one op-by-op step");
  assert.deepEqual(step(), { graphed: false, decodes: 8, captures: 4, launches: 2, disposed: 3 }, "its recording is refused: op by op");
  assert.match(session.why ?? "", /cuBLAS route/);
  assert.deepEqual(step(), { graphed: false, decodes: 9, captures: 4, launches: 2, disposed: 3 }, "and stays refused while the route does");
  routes = "gemv=4";
  assert.deepEqual(step(), { graphed: false, decodes: 10, captures: 4, launches: 2, disposed: 3 }, "back to a recordable route: one op-by-op step");
  assert.equal(session.why, undefined);
  assert.deepEqual(step(), { graphed: true, decodes: 11, captures: 5, launches: 2, disposed: 3 }, "then it records again");
  assert.equal(cache.length, 17);
  routes = "bad";
  assert.throws(() => session.step(Int32Array.of(7)), (e: unknown) => e instanceof MlaError && /bad is not a route/.test(e.message));
  assert.equal(cache.length, 17, "a refused step leaves the cache as it was");
  session.dispose();
  assert.equal(disposed, 4);

  // A server makes a session at every change of its batch: a shape this model has stepped op by op
  // (same weights, same routes) records at once; another batch size warms up first.
  routes = "gemv=4";
  const other = { ...cache, length: 30, capacity: 100 };
  const again = new DecodeSession(model as unknown as LlamaModel, [other as unknown as DecodeCache]);
  const stepAgain = () => (again.step(Int32Array.of(7)), { graphed: again.graphed, decodes, captures });
  assert.deepEqual(stepAgain(), { graphed: true, decodes: 12, captures: 6 }, "a warm shape: the first step is recorded");
  again.dispose();
  const two = [{ ...cache, length: 3 }, { ...cache, length: 9 }].map((c) => ({ ...c, commitStep() { c.length++; } }));
  const pair = new DecodeSession(model as unknown as LlamaModel, two as unknown as DecodeCache[]);
  pair.step(Int32Array.of(7, 8));
  assert.deepEqual({ graphed: pair.graphed, decodes, captures }, { graphed: false, decodes: 13, captures: 6 }, "two sequences: a new shape warms up op by op");
  pair.dispose();
  model.weightsVersion++;
  const stale = new DecodeSession(model as unknown as LlamaModel, [other as unknown as DecodeCache]);
  stale.step(Int32Array.of(7));
  assert.deepEqual({ graphed: stale.graphed, decodes, captures }, { graphed: false, decodes: 14, captures: 6 }, "new weights: the shape is cold again");
  stale.dispose();
  // A first step whose recording is refused (warm only from another session) is not a refusal for good:
  // it runs op by op, and the next step, warm from this session's own, tries again.
  const refusedOnce = new DecodeSession(model as unknown as LlamaModel, [other as unknown as DecodeCache]);
  let fail = true;
  const capture = backend.captureStep;
  backend.captureStep = (ids, positions, run) => {
    if (fail) {
      fail = false;
      captures++;
      throw new MlaError("UNSUPPORTED", "not warm enough", "it runs op by op");
    }
    return capture(ids, positions, run);
  };
  refusedOnce.step(Int32Array.of(7));
  assert.deepEqual({ graphed: refusedOnce.graphed, why: refusedOnce.why }, { graphed: false, why: undefined }, "refused on a first step: op by op, not refused for good");
  refusedOnce.step(Int32Array.of(7));
  assert.equal(refusedOnce.graphed, true, "the next step records");
  refusedOnce.dispose();
});

test("a prompt longer than one prefill chunk (2,048 tokens) continues as the whole prompt prefilled at once does, with a turn between chunks", async () => {
  const { generateBatchAsync } = await import("../../src/model/generate.js");
  // fastCpu(): two prefills of 2,100 tokens take ~20 s on the reference backend.
  const { model } = loadModel(path.join(MODELS, "stories260K"), { weights: "f32", ...fastCpu() });
  const prompt = Array.from({ length: 2100 }, (_, i) => 1 + ((i * 37) % 500));
  const cache = model.newCache();
  const first = model.prefill(Int32Array.from(prompt), cache).toArray();
  const whole = [first.indexOf(Math.max(...first))];
  for (let k = 0; k < 3; k++) {
    const l = model.decodeBatch(Int32Array.of(whole[k]!), [cache]).toArray();
    whole.push(l.indexOf(Math.max(...l)));
  }
  let steps = 0;
  const r = await generateBatchAsync(model, [prompt], { maxTokens: 4, yieldMs: 0, onStep: () => steps++ });
  assert.deepEqual(r.sequences[0]!.ids, whole);
  assert.ok(steps >= 4 + 1, "a yield between the prefill chunks");
});

test("generation frees its caches when it returns, throws, or is aborted between steps", async () => {
  const { generateBatchAsync } = await import("../../src/model/generate.js");
  const { model } = loadModel(path.join(MODELS, "stories260K"));
  const made: { disposed: boolean }[] = [];
  const newCache = model.newCache.bind(model);
  model.newCache = ((...args: Parameters<LlamaModel["newCache"]>) => {
    const c = newCache(...args);
    const mark = { disposed: false };
    made.push(mark);
    const dispose = c.dispose.bind(c);
    c.dispose = () => {
      mark.disposed = true;
      dispose();
    };
    return c;
  }) as LlamaModel["newCache"];
  const r = generateBatch(model, prompts.map((p) => [...p]), { maxTokens: 3 });
  assert.ok(r.sequences.every((s) => s.cacheBytes > 0), "sizes read before the caches are freed");
  assert.deepEqual(made.map((m) => m.disposed), [true, true], "returned");
  made.length = 0;
  const stop = new AbortController();
  await assert.rejects(
    generateBatchAsync(model, [[...prompts[0]!]], { maxTokens: 50, yieldMs: 0, signal: stop.signal, onStep: () => stop.abort() }),
    (e: unknown) => e instanceof MlaError && e.code === "INTERRUPTED",
  );
  assert.deepEqual(made.map((m) => m.disposed), [true], "aborted between steps");
  made.length = 0;
  assert.throws(() => generateBatch(model, [[1, 2], [1, 100000]], { maxTokens: 3 }));
  assert.ok(made.length === 2 && made.every((m) => m.disposed), `threw in the prefill: ${JSON.stringify(made)}`);
  made.length = 0;
  let calls = 0;
  const counting = model.newCache;
  model.newCache = ((...args: Parameters<LlamaModel["newCache"]>) => {
    if (++calls === 2) throw new Error("out of device memory");
    return counting(...args);
  }) as LlamaModel["newCache"];
  assert.throws(() => generateBatch(model, [[1, 2], [1, 3]], { maxTokens: 2 }), /out of device memory/);
  assert.ok(made.length === 1 && made[0]!.disposed, "the cache made before the failing one is freed");
});
