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
