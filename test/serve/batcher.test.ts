/**
 * Continuous batching (Batcher): each sequence comes out as generate() gives it alone, whatever joins
 * or leaves the batch around it; places and the cache budget bound what runs; cancels free places.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { loadModel } from "../../src/model/llama.js";
import { generate } from "../../src/model/generate.js";
import { Batcher, type SequenceEnd, type SequenceSpec } from "../../src/serve/batcher.js";
import { kvBytesPerToken, kvElemsPerToken } from "../../src/model/config.js";
import { MODELS } from "../helpers.js";
import { MlaError } from "../../src/errors.js";

const { model, tokenizer } = loadModel(path.join(MODELS, "stories260K"));
const texts = ["Once upon a time", "The cat", "Lily and Tom went to the park. They", "One day", "Sam had a big red ball"];
const prompts = texts.map((t) => tokenizer.encode(t, { addSpecialTokens: true }));

interface Run {
  ids: number[];
  end: Promise<SequenceEnd>;
}

function submit(b: Batcher, spec: Omit<SequenceSpec, "onToken" | "onEnd">, onToken?: (ids: number[]) => boolean): Run & { cancel: () => void } {
  const ids: number[] = [];
  let done!: (e: SequenceEnd) => void;
  const end = new Promise<SequenceEnd>((r) => (done = r));
  const h = b.submit({ ...spec, onToken: (id) => (ids.push(id), onToken ? onToken(ids) : true), onEnd: done });
  return { ids, end, cancel: h.cancel };
}

test("sequences joining and leaving a batch of 2 each decode as generate() alone, greedy and sampled", async () => {
  const b = new Batcher(model, { maxBatch: 2, kvCache: "f32" });
  const limits = [3, 24, 9, 17, 12];
  let most = 0;
  const greedy = prompts.map((p, i) => submit(b, { prompt: p, maxTokens: limits[i]!, sampling: { temperature: 0 }, seed: 0 }, () => ((most = Math.max(most, b.stats().running)), true)));
  const sampled = prompts.map((p, i) => submit(b, { prompt: p, maxTokens: 10, sampling: { temperature: 0.9, topK: 40, topP: 0.95 }, seed: 100 + i }));
  const ends = await Promise.all([...greedy, ...sampled].map((r) => r.end));
  assert.ok(most <= 2, `at most 2 running, saw ${most}`);
  prompts.forEach((p, i) => {
    const want = generate(model, p, { maxTokens: limits[i]!, stopAtEos: true }).ids.filter((t) => t !== model.config.eosTokenId);
    assert.deepEqual(greedy[i]!.ids, want, `greedy prompt ${i}`);
    const wantS = generate(model, p, { maxTokens: 10, temperature: 0.9, topK: 40, topP: 0.95, seed: 100 + i }).ids.filter((t) => t !== model.config.eosTokenId);
    assert.deepEqual(sampled[i]!.ids, wantS, `sampled prompt ${i}`);
  });
  for (const e of ends) assert.ok(e.reason === "length" || e.reason === "stop");
  assert.equal(ends[0]!.reason, "length");
  assert.equal(ends[0]!.newTokens, 3);
  const s = b.stats();
  assert.equal(s.running + s.waiting, 0);
  assert.equal(s.ended.length + s.ended.stop, 10);
  assert.ok(s.decodeSteps > 0 && s.decodeSteps <= s.decodeTokens, "a step decodes one token of each running sequence");
  assert.equal(s.replayedSteps, 0, "the CPU backend records no steps");
  await b.whenIdle();
});

test("a sequence whose onToken says stop ends there; cancels end waiting and running sequences", async () => {
  const b = new Batcher(model, { maxBatch: 1, kvCache: "f32" });
  const stopped = submit(b, { prompt: prompts[0]!, maxTokens: 30, sampling: { temperature: 0 }, seed: 0 }, (ids) => ids.length < 4);
  const running = submit(b, { prompt: prompts[1]!, maxTokens: 200, sampling: { temperature: 0 }, seed: 0 }, (ids) => {
    if (ids.length === 5) running.cancel();
    return true;
  });
  const waiting = submit(b, { prompt: prompts[2]!, maxTokens: 5, sampling: { temperature: 0 }, seed: 0 });
  waiting.cancel();
  assert.equal((await waiting.end).reason, "cancelled");
  assert.equal(waiting.ids.length, 0);
  const e1 = await stopped.end;
  assert.equal(e1.reason, "stop");
  assert.equal(stopped.ids.length, 4);
  const e2 = await running.end;
  assert.equal(e2.reason, "cancelled");
  assert.ok(running.ids.length >= 5 && running.ids.length < 10, `cancelled soon after: ${running.ids.length} tokens`);
  assert.deepEqual(b.stats().ended, { stop: 1, length: 0, cancelled: 2, error: 0 });
});

test("the KV budget bounds the sequences admitted together, each reserving prompt + max_tokens", async () => {
  const per = kvBytesPerToken(model.config, "f32");
  const need = (prompts[0]!.length + 8) * per;
  const b = new Batcher(model, { maxBatch: 8, kvCache: "f32", kvBudgetBytes: 2.5 * need });
  let most = 0;
  const runs = [0, 1, 2, 3].map(() => submit(b, { prompt: prompts[0]!, maxTokens: 8, sampling: { temperature: 0 }, seed: 0 }, () => ((most = Math.max(most, b.stats().running)), true)));
  await Promise.all(runs.map((r) => r.end));
  assert.equal(most, 2, "room for two in the budget");
  for (const r of runs) assert.deepEqual(r.ids, runs[0]!.ids);
  assert.throws(() => b.submit({ prompt: prompts[0]!, maxTokens: 40, sampling: { temperature: 0 }, seed: 0, onToken: () => true, onEnd: () => {} }), (e: unknown) => e instanceof MlaError && /more than the server's whole KV budget/.test(e.message) && new RegExp(`send max_tokens ≤ ${Math.floor(2.5 * need / b.cacheBytes(1)) - prompts[0]!.length}, or shorten`).test(e.message));
  // A budget under a megabyte is shown with the digits that tell it from the reservation.
  const tiny = new Batcher(model, { maxBatch: 1, kvCache: "f32", kvBudgetBytes: 10_000 });
  assert.throws(() => tiny.submit({ prompt: prompts[0]!, maxTokens: 40, sampling: { temperature: 0 }, seed: 0, onToken: () => true, onEnd: () => {} }), (e: unknown) => e instanceof MlaError && /take 0\.\d\d+ MB, more than the server's whole KV budget of 0\.0095 MB/.test(e.message));
  // A budget under two tokens admits nothing: refused when the server starts, not request by request with "at most -1 tokens".
  assert.throws(() => new Batcher(model, { maxBatch: 1, kvCache: "f32", kvBudgetBytes: b.cacheBytes(1) + 1 }), (e: unknown) => e instanceof MlaError && /holds 1 token of this model's f32 cache \(\d+ bytes held in memory per token\): no request fits\n  hint: start the server with a budget .*--kv-budget-mb \d+ for 4,096 tokens \(from a script, kvBudgetBytes \d+\)/.test(e.message));
});

test("the KV budget counts the bytes the caches hold: int8 rows held as float32 on the CPU admit as many sequences as f32, not ~3.8× more; a budget under two held tokens is refused naming them", async () => {
  const held = 4 * kvElemsPerToken(model.config); // float32 rows on the host, whatever the dtype
  const nominal = kvBytesPerToken(model.config, "int8");
  assert.ok(held > 3.5 * nominal, `${held} held against ${nominal} nominal bytes per token`);
  const maxTokens = 8, need = (prompts[0]!.length + maxTokens) * held;
  for (const kvCache of ["f32", "int8"] as const) {
    const k = 3;
    const b = new Batcher(model, { maxBatch: 16, kvCache, kvBudgetBytes: k * need });
    const s0 = b.stats();
    assert.deepEqual([s0.kvBytesPerToken, s0.kvHeldBytesPerToken], [kvBytesPerToken(model.config, kvCache), held], `${kvCache}: the dtype's bytes reported, the held ones counted`);
    assert.equal(b.cacheBytes(1), held);
    assert.equal(b.fitsTokens(), Math.floor((k * need) / held));
    let most = 0, mostReserved = 0;
    const runs = Array.from({ length: 8 }, () =>
      submit(b, { prompt: prompts[0]!, maxTokens, sampling: { temperature: 0 }, seed: 0 }, () => {
        const s = b.stats();
        most = Math.max(most, s.running);
        mostReserved = Math.max(mostReserved, s.kvReservedBytes);
        return true;
      }),
    );
    await Promise.all(runs.map((r) => r.end));
    assert.equal(most, k, `${kvCache}: a budget of exactly ${k} sequences' float32 rows admits ${k} (the dtype's bytes would admit ${Math.floor((k * need) / ((prompts[0]!.length + maxTokens) * kvBytesPerToken(model.config, kvCache)))})`);
    assert.equal(mostReserved, k * need);
    // What a sequence reserves is what its cache holds.
    const cache = model.newCache(kvCache, { capacity: prompts[0]!.length + maxTokens });
    assert.equal(cache.heldBytes, b.cacheBytes(prompts[0]!.length + maxTokens));
    cache.dispose();
  }
  // 1.5 held tokens: 5 tokens at int8's own size, which the old count would have taken.
  const budget = 1.5 * held;
  assert.ok(budget >= 2 * nominal);
  assert.throws(
    () => new Batcher(model, { maxBatch: 1, kvCache: "int8", kvBudgetBytes: budget }),
    (e: unknown) => e instanceof MlaError && e.message.startsWith(`a KV-cache budget of `) && e.message.includes(`holds 1 token of this model's int8 cache (${held} bytes held in memory per token, not the ${nominal} of int8: the ${model.backend.name} backend holds int8 cache rows on the host, as float32): no request fits\n  hint: start the server with a budget for the prompts and replies it should serve, e.g. --kv-budget-mb ${Math.ceil((4096 * held) / 2 ** 20)} for 4,096 tokens (from a script, kvBudgetBytes ${Math.ceil((4096 * held) / 2 ** 20) * 2 ** 20})`),
  );
  // The prefix cache counts the same held bytes: a kept prompt's entry is its float32 rows and its logits.
  const pb = new Batcher(model, { maxBatch: 1, kvCache: "int8", prefixCacheBytes: 1 << 24 });
  const long = [...prompts[2]!, ...prompts[2]!];
  await submit(pb, { prompt: long, maxTokens: 1, sampling: { temperature: 0 }, seed: 0 }).end;
  const pc = pb.stats().prefixCache!;
  assert.equal(pc.entries, 1);
  assert.equal(pc.bytes, long.length * held + model.config.vocabSize * Float32Array.BYTES_PER_ELEMENT);
});

test("kvCachedBytes counts the tokens cached so far at the dtype's size (kvHeldBytes, its old name, the same); the memory held is kvReservedBytes", async () => {
  const nominal = kvBytesPerToken(model.config, "int8"), held = 4 * kvElemsPerToken(model.config);
  const b = new Batcher(model, { maxBatch: 1, kvCache: "int8" });
  const prompt = prompts[0]!, maxTokens = 5;
  const seen: { cached: number; old: number; reserved: number }[] = [];
  await submit(b, { prompt, maxTokens, sampling: { temperature: 0 }, seed: 0 }, () => {
    const s = b.stats();
    seen.push({ cached: s.kvCachedBytes, old: s.kvHeldBytes, reserved: s.kvReservedBytes });
    return true;
  }).end;
  // At each token the cache holds the prompt and the tokens before it, at int8's bytes per token.
  assert.deepEqual(seen.map((x) => x.cached), seen.map((_, i) => (prompt.length + i) * nominal));
  assert.ok(seen.every((x) => x.old === x.cached), "kvHeldBytes is kvCachedBytes under its old name");
  assert.ok(seen.every((x) => x.reserved === (prompt.length + maxTokens) * held), "the memory held: prompt + max_tokens float32 rows from admission");
  const idle = b.stats();
  assert.deepEqual([idle.kvCachedBytes, idle.kvHeldBytes, idle.kvReservedBytes], [0, 0, 0]);
});

test("a sequence that can never start is refused before it queues", () => {
  const b = new Batcher(model, { maxBatch: 2, kvCache: "f32" });
  const spec = { sampling: { temperature: 0 }, seed: 0, onToken: () => true, onEnd: () => {} };
  assert.throws(() => b.submit({ ...spec, prompt: prompts[0]!, maxTokens: model.config.maxPositions }), /pass the model's 512 positions[^]*send max_tokens ≤ 507, or shorten the prompt/);
  assert.throws(() => b.submit({ ...spec, prompt: [], maxTokens: 4 }), /no tokens/);
  assert.throws(() => b.submit({ ...spec, prompt: prompts[0]!, maxTokens: 1.5 }), /max_tokens 1.5 is not a token count/);
  // From a script: ids a typed array would truncate or wrap (1.5 → 1), or that the vocabulary lacks.
  for (const [bad, shown] of [[1.5, "1.5"], [-1, "-1"], [512, "512"], [Number.NaN, "NaN"]] as const)
    assert.throws(() => b.submit({ ...spec, prompt: [1, bad], maxTokens: 4 }), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && e.message === `the prompt's token 1 is ${shown}, not a token id\n  hint: token ids are whole numbers from 0 to 511 (the model's vocabulary)`, shown);
  assert.throws(() => b.submit({ ...spec, prompt: [1], maxTokens: 4, stopTokenIds: [2, 2.5] }), /stop token id 1 is 2\.5, not a token id/);
  assert.throws(() => b.check({ ...spec, prompt: [1, 0.5], maxTokens: 4 }), /token 1 is 0\.5/, "check() refuses what submit() would");
  assert.equal(b.check({ ...spec, prompt: [1, 2], maxTokens: 4 }), b.cacheBytes(6), "check() queues nothing and gives the bytes reserved");
  // All or none: the second's refusal (by its index, as the caller words it) queues neither.
  assert.throws(() => b.submitAll([{ ...spec, prompt: [1], maxTokens: 4 }, { ...spec, prompt: [], maxTokens: 4 }], (i, e) => new Error(`${i}: ${(e as Error).message}`)), /^Error: 1: the prompt has no tokens/);
  assert.throws(() => new Batcher(model, { maxBatch: 0, kvCache: "f32" }), /new Batcher\(\): option maxBatch 0 is not a number of sequences/);
  assert.equal(b.stats().waiting, 0);
  assert.equal(b.stats().ended.cancelled, 0);
});

test("prefill gives the last row of forward's logits, and fills the cache as forward does", () => {
  const a = model.newCache("f32"), b = model.newCache("f32");
  const ids = Int32Array.from(prompts[2]!);
  const last = model.prefill(ids, a).toArray();
  const all = model.forward(ids, b).toArray();
  const V = model.config.vocabSize;
  assert.equal(last.length, V);
  assert.deepEqual(Array.from(last), Array.from(all.subarray(all.length - V)));
  assert.equal(a.length, b.length);
  const next = Int32Array.of(42);
  assert.deepEqual(Array.from(model.forward(next, a).toArray()), Array.from(model.forward(next, b).toArray()));
});

test("a cache cloned to its first tokens, with room for more, continues like the cache of those tokens alone", () => {
  const full = model.newCache("f32");
  const ids = Int32Array.from(prompts[2]!);
  model.forward(ids, full);
  const cut = full.clone({ tokens: 5, capacity: 40 });
  assert.equal(cut.length, 5);
  assert.equal(cut.capacity, 40);
  assert.equal(full.length, ids.length, "the original is left as it was");
  const alone = model.newCache("f32");
  model.forward(ids.subarray(0, 5), alone);
  const next = Int32Array.of(42, 7);
  assert.deepEqual(Array.from(model.forward(next, cut).toArray()), Array.from(model.forward(next, alone).toArray()));
  assert.throws(() => full.clone({ tokens: ids.length + 1 }), /clone: \d+ tokens of a cache holding/);
});

test("the prefix cache: prompts sharing a beginning prefill only the rest and decode as without it; a repeated prompt prefills nothing; old entries leave within the budget", async () => {
  const system = tokenizer.encode("Once upon a time, in a small town by the sea, there lived a kind old man who had a little dog.", { addSpecialTokens: true });
  assert.ok(system.length >= 20);
  const asks = [" The dog", " One day, the man", " One day, the man"].map((t) => [...system, ...tokenizer.encode(t, { addSpecialTokens: false })]);
  const per = kvBytesPerToken(model.config, "f32");
  // Room for one of these prompts at a time, not two.
  const room = Math.ceil(1.5 * Math.max(...asks.map((a) => a.length))) * per;
  const b = new Batcher(model, { maxBatch: 1, kvCache: "f32", prefixCacheBytes: room });
  const outs: number[][] = [];
  for (const p of asks) {
    const r = submit(b, { prompt: p, maxTokens: 12, sampling: { temperature: 0 }, seed: 0 });
    await r.end;
    outs.push(r.ids);
  }
  asks.forEach((p, i) => assert.deepEqual(outs[i], generate(model, p, { maxTokens: 12 }).ids.filter((t) => t !== model.config.eosTokenId), `prompt ${i}`));
  const s = b.stats().prefixCache!;
  assert.equal(s.hits, 2, "the second and third prompts started from a kept one");
  let shared = 0;
  while (asks[0]![shared] === asks[1]![shared]) shared++;
  assert.ok(shared >= system.length);
  assert.equal(s.reusedTokens, shared + asks[2]!.length - 1, "the second reused the shared beginning, the third (a repeat, kept as the beginning of the second's finished sequence) all of itself but its last token, prefilled again for the logits");
  // The first was dropped for the second, whose prompt was replaced by its finished sequence.
  assert.equal(s.entries, 1);
  assert.ok(s.bytes <= room);
  b.clearPrefixCache();
  assert.equal(b.stats().prefixCache!.entries, 0);
});

test("scored prompts (lm-eval's choices of one question) reuse a kept scored prompt's scores for the beginning they share, and score as alone; unscored kept prompts are not used for them", async () => {
  const context = tokenizer.encode("Once upon a time, in a small town by the sea, there lived a kind old man who had a little", { addSpecialTokens: true });
  const choices = [" dog", " cat named Tom", " boat"].map((t) => [...context, ...tokenizer.encode(t, { addSpecialTokens: false })]);
  /** Prompt `p` scored with `top` alternatives by batcher `b`; its scores and how much of it the prefix cache gave. */
  const score = async (b: Batcher, p: number[], top: number) => {
    let scored: unknown[] = [];
    const before = b.stats().prefixCache?.reusedTokens ?? 0;
    const r = submit(b, { prompt: p, maxTokens: 0, sampling: { temperature: 0 }, seed: 0, promptLogprobs: top, onPrompt: (x: unknown[]) => (scored = x) });
    const end = await r.end;
    assert.equal(end.reason, "length");
    assert.equal(end.newTokens, 0, "max_tokens 0: the prompt scored alone");
    return { scored, reused: (b.stats().prefixCache?.reusedTokens ?? 0) - before };
  };
  const alone = new Batcher(model, { maxBatch: 1, kvCache: "f32" });
  const want = await Promise.all(choices.map((p) => score(alone, p, 2)));
  for (const [i, w] of want.entries()) {
    assert.equal(w.scored.length, choices[i]!.length - 1, "one score per token after the first");
    assert.equal(w.reused, 0);
  }
  const b = new Batcher(model, { maxBatch: 1, kvCache: "f32", prefixCacheBytes: 2 ** 24 });
  // An unscored kept prompt of the same context cannot give scores: the first scored prompt prefills whole.
  await submit(b, { prompt: context, maxTokens: 1, sampling: { temperature: 0 }, seed: 0 }).end;
  const first = await score(b, choices[0]!, 2);
  assert.equal(first.reused, 0);
  assert.deepEqual(first.scored, want[0]!.scored);
  for (const i of [1, 2]) {
    const got = await score(b, choices[i]!, 2);
    assert.deepEqual(got.scored, want[i]!.scored, `choice ${i} scores as alone`);
    let shared = 0;
    while (choices[0]![shared] === choices[i]![shared]) shared++;
    assert.equal(got.reused, shared - 1, `choice ${i}: the shared beginning less its last token, whose row scores the choice's own first token`);
  }
  // Fewer alternatives: the kept scores, cut; a repeat prefills nothing.
  const fewer = await score(b, choices[1]!, 1);
  assert.deepEqual(fewer.scored, (want[1]!.scored as { logprob: number; top: unknown[] }[]).map((x) => ({ logprob: x.logprob, top: x.top.slice(0, 1) })));
  assert.equal(fewer.reused, choices[1]!.length, "a repeat of a kept scored prompt prefills nothing");
  // More alternatives than were kept: scored afresh.
  assert.equal((await score(b, choices[2]!, 3)).reused, 0);
});

test("the prefix cache keeps a prompt once: one that a kept sequence begins with is not copied again, and a repeat of it prefills its last token; entries count the bytes their copies hold", async () => {
  const { PrefixCache } = await import("../../src/serve/prefixCache.js");
  const long = [...prompts[2]!, ...prompts[2]!, ...prompts[2]!];
  const short = long.slice(0, 20);
  const fill = (ids: number[]) => {
    const c = model.newCache("int8");
    const logits = model.prefill(Int32Array.from(ids), c).toArray();
    return { c, logits };
  };
  const per = kvBytesPerToken(model.config, "int8");
  const pc = new PrefixCache(1 << 30, per);
  const a = fill(long), b = fill(short);
  assert.equal(pc.store(long, a.c, null), true);
  assert.equal(pc.store(short, b.c, b.logits), true, "kept already, as the beginning of long");
  assert.equal(pc.stats().entries, 1);
  const seed = pc.seed(short, 40)!;
  assert.deepEqual([seed.tokens, seed.logits], [19, null], "long has no logits after short: its last token is prefilled again");
  const whole = pc.seed(long, long.length + 8)!;
  assert.deepEqual([whole.tokens, whole.logits], [long.length - 1, null], "nor after itself (a finished sequence's entry)");
  const st = pc.stats();
  // int8 rows are held as float32 on the host: the entries count that, not int8's nominal size.
  assert.ok(st.bytes >= long.length * per * 3, `${st.bytes} bytes counted for ${long.length * per} nominal`);
});

test("a finished sequence is kept, prompt and reply: a chat's next turn starting with both prefills only its new tokens, and decodes as without it", async () => {
  const first = tokenizer.encode("Once upon a time, in a small town by the sea, there lived a kind old man.", { addSpecialTokens: true });
  const b = new Batcher(model, { maxBatch: 2, kvCache: "f32", prefixCacheBytes: 1 << 24 });
  const one = submit(b, { prompt: first, maxTokens: 10, sampling: { temperature: 0 }, seed: 0, stopAtEos: false });
  await one.end;
  const next = [...first, ...one.ids, ...tokenizer.encode(" The dog said", { addSpecialTokens: false })];
  const two = submit(b, { prompt: next, maxTokens: 8, sampling: { temperature: 0 }, seed: 0, stopAtEos: false });
  await two.end;
  const s = b.stats().prefixCache!;
  assert.equal(s.hits, 1);
  assert.equal(s.reusedTokens, first.length + one.ids.length - 1, "the whole first turn but its last token (no step fed it)");
  assert.deepEqual(two.ids, generate(model, next, { maxTokens: 8 }).ids);
});

test("chunked prefill: a long prompt is prefilled a chunk per step while the batch decodes, and decodes as generate() alone", async () => {
  const long = tokenizer.encode("Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine with her dog, Max. One day, they went to the park.", { addSpecialTokens: true });
  assert.ok(long.length > 40);
  const b = new Batcher(model, { maxBatch: 4, kvCache: "f32", prefillChunk: 7 });
  const order: string[] = [];
  const a = submit(b, { prompt: prompts[1]!, maxTokens: 30, sampling: { temperature: 0 }, seed: 0 }, () => (order.push("a"), true));
  // B arrives once A decodes.
  await new Promise((r) => setTimeout(r, 0));
  while (a.ids.length < 2) await new Promise((r) => setImmediate(r));
  const bRun = submit(b, { prompt: long, maxTokens: 6, sampling: { temperature: 0 }, seed: 0 }, () => (order.push("b"), true));
  await Promise.all([a.end, bRun.end]);
  const aBeforeB = order.indexOf("b") - order.indexOf("a");
  assert.ok(aBeforeB >= Math.floor(long.length / 7) - 1, `A kept decoding while B's ${long.length} prompt tokens went in 7 at a time (${aBeforeB} of A's tokens before B's first)`);
  assert.deepEqual(bRun.ids, generate(model, long, { maxTokens: 6 }).ids.filter((t) => t !== model.config.eosTokenId));
  assert.deepEqual(a.ids, generate(model, prompts[1]!, { maxTokens: 30 }).ids.filter((t) => t !== model.config.eosTokenId));
  assert.throws(() => new Batcher(model, { maxBatch: 1, kvCache: "f32", prefillChunk: -1 }), /new Batcher\(\): option prefillChunk -1 is not a token count/);
});

test("a request's other choices hold their places while its first is prefilled: a later request does not pass them", async () => {
  const prompt = tokenizer.encode("Once upon a time, in a small town by the sea, there lived a kind old man.", { addSpecialTokens: true });
  assert.ok(prompt.length >= 16);
  const b = new Batcher(model, { maxBatch: 2, kvCache: "f32", prefixCacheBytes: 1 << 20, prefillChunk: 4 });
  const order: string[] = [];
  const spec = { prompt, maxTokens: 8, sampling: { temperature: 0 }, seed: 0, stopAtEos: false };
  const a0 = submit(b, spec, () => (order.push("a0"), true));
  const a1 = submit(b, spec, () => (order.push("a1"), true));
  const later = submit(b, { ...spec, prompt: prompts[1]!, maxTokens: 8 }, () => (order.push("b"), true));
  await Promise.all([a0.end, a1.end, later.end]);
  assert.ok(order.indexOf("a1") < order.indexOf("b"), `the sibling started first: ${order.join(" ")}`);
  assert.deepEqual(a1.ids, a0.ids);
  assert.equal(b.stats().prefixCache!.hits, 1, "the sibling started from the first's kept prompt");
});
