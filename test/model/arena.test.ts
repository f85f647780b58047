/**
 * What a forward leaves behind, on a CPU stand-in for the CUDA backend's arenas
 * (test/model/arenaCheck.ts): the logits of forward and decodeBatch are all a caller gets, and
 * everything else they made is freed by the time they return (on the GPU, memory the collector would
 * otherwise free some time later); no tensor an arena freed is read again.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { loadModel } from "../../src/model/llama.js";
import { MODELS, maxAbsDiff } from "../helpers.js";
import { arenaCheckBackend } from "./arenaCheck.js";

const prompt = Int32Array.of(1, 400, 300, 200, 100, 50, 25, 12);

test("forward (no cache) frees everything but its logits, and its attention arenas free nothing it reads later", () => {
  const checked = arenaCheckBackend();
  const a = loadModel(path.join(MODELS, "stories260K"), { backend: checked.backend }).model;
  const want = loadModel(path.join(MODELS, "stories260K")).model.forward(prompt).toArray();
  const run = () => {
    const y = a.forward(prompt);
    const got = y.toArray();
    y.dispose();
    return got;
  };
  assert.equal(maxAbsDiff(run(), want), 0);
  const live = checked.live();
  assert.equal(maxAbsDiff(run(), want), 0);
  const extra = checked.live() - live;
  assert.equal(extra, 0, `${extra} tensors left behind by a second forward (live by maker: ${JSON.stringify([...checked.liveMakers()])})`);
});

test("a decode step's final hidden states are freed with the step (only the logits are returned)", () => {
  const checked = arenaCheckBackend();
  const a = loadModel(path.join(MODELS, "stories260K"), { backend: checked.backend }).model;
  const cache = a.newCache();
  a.prefill(prompt, cache).dispose();
  const before = checked.liveMakers().get("rmsnorm") ?? 0;
  for (const id of [7, 8, 9]) a.decodeBatch(Int32Array.of(id), [cache]).dispose();
  assert.equal(checked.liveMakers().get("rmsnorm") ?? 0, before, "no normed hidden states left behind");
});

test("cached prefills and absorbed steps run their attention in arenas: no freed tensor is read again (the absorbed matrices are built outside them), the logits equal the plain backend's, and a prefill leaves nothing behind (MHA and MLA)", async () => {
  const { convertFixture } = await import("../convert/helpers.js");
  const mla = await convertFixture("stories260K", { rank: 4, ropePairs: 2, ropeStrategy: "uniform", device: "reference" });
  for (const spec of [path.join(MODELS, "stories260K"), mla]) {
    const checked = arenaCheckBackend();
    const a = loadModel(spec, { backend: checked.backend }).model;
    const b = loadModel(spec).model;
    const run = (m: typeof a, steps: boolean): Float32Array[] => {
      const rows: Float32Array[] = [];
      const take = (t: ReturnType<typeof m.prefill>) => {
        rows.push(Float32Array.from(t.toArray()));
        t.dispose();
      };
      const cache = m.newCache();
      take(m.prefill(prompt.subarray(0, 5), cache));
      take(m.prefill(prompt.subarray(5), cache));
      if (steps) {
        // Two queries at once, absorbed: the first use of the absorbed matrices, inside an arena.
        take(m.forward(Int32Array.of(5, 6), cache, { absorb: true }));
        for (const id of [7, 8, 9]) take(m.forward(Int32Array.of(id), cache, { absorb: true }));
      }
      cache.dispose();
      return rows;
    };
    const want = run(b, true);
    run(a, true).forEach((r, i) => assert.equal(maxAbsDiff(r, want[i]!), 0, `${path.basename(spec)} output ${i}`));
    a.weightsChanged();
    run(a, true).forEach((r, i) => assert.equal(maxAbsDiff(r, want[i]!), 0, `${path.basename(spec)} output ${i} after weightsChanged()`));
    // The steps' decode path reads host caches the reference backend uploads per step: only prefills are counted.
    const live = checked.live();
    run(a, false);
    assert.equal(checked.live() - live, 0, `${path.basename(spec)}: tensors left behind by cached prefills (${JSON.stringify([...checked.liveMakers()])})`);
  }
});
