/**
 * The layer-by-layer fits free what they allocate however they end: LlamaModel.advanceWindows (its
 * states so far and the ones not yet advanced, when a pass throws partway) and the output refit
 * (src/convert/refitOutput.ts) that advances its calibration windows with it, on a stop between
 * windows and on an error in a layer pass.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { referenceBackend } from "../../src/backends/reference/index.js";
import type { Backend } from "../../src/tensor/backend.js";
import { convert } from "../../src/convert/pipeline.js";
import { refitOutputProjections } from "../../src/convert/refitOutput.js";
import { calibrationWindows } from "../../src/ropeSelect/calibrate.js";
import { readText } from "../../src/eval/perplexity.js";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { LlamaModel, loadModel } from "../../src/model/llama.js";
import { MlaError } from "../../src/errors.js";
import { FIXTURES, MODELS, tmpDir } from "../helpers.js";
import { trackLive } from "./liveTensors.js";

const SRC = path.join(MODELS, "stories260K");
const CALIB = path.join(FIXTURES, "text", "tinystories.txt");
const WATCHED = ["embedTokens", "layerForward", "attentionOf"] as const;

/**
 * `base` with the storage of every tensor a backend method returns counted live from its making to its
 * free, except inside the model methods in WATCHED, whose own results are counted instead (a forward's
 * intermediates are left to the garbage collector on the reference backend). `models` collects every
 * model those methods ran on, so what the models own (their weights, refit ones included) is told apart.
 * `hook` runs before each watched call (name, its count so far), and may throw or stop.
 */
function counting(base: Backend) {
  const models = new Set<object>();
  const calls = new Map<string, number>();
  const state = { inside: 0, hook: (_name: string, _n: number): void => {} };
  const { backend, live, add } = trackLive(base, { counted: () => true, inside: () => state.inside > 0 });
  const proto = LlamaModel.prototype as unknown as Record<string, (...a: unknown[]) => unknown>;
  const saved = WATCHED.map((name) => [name, proto[name]!] as const);
  for (const [name, f] of saved)
    proto[name] = function (this: object, ...args: unknown[]) {
      models.add(this);
      const n = (calls.get(name) ?? 0) + 1;
      calls.set(name, n);
      state.hook(name, n);
      state.inside++;
      try {
        return add(f.apply(this, args));
      } finally {
        state.inside--;
      }
    };
  const restore = () => {
    for (const [name, f] of saved) proto[name] = f;
  };
  /** Live storages not owned by a model the watched methods ran on. */
  const leaked = () => {
    const owned = new Set<unknown>();
    const seen = new Set<unknown>();
    const walk = (o: unknown): void => {
      if (!o || typeof o !== "object" || seen.has(o) || o === backend || ArrayBuffer.isView(o)) return;
      seen.add(o);
      if ("storage" in o && "shape" in o) return void owned.add((o as { storage: unknown }).storage);
      const values = o instanceof Map || o instanceof Set ? [...o.values()] : Object.values(o);
      for (const v of values) walk(v);
    };
    for (const m of models) walk(m);
    return [...live].filter((s) => !owned.has(s)).length;
  };
  return { backend, calls, state, leaked, restore };
}

test("advanceWindows frees its states so far and the ones not yet advanced when a layer pass throws partway", () => {
  const c = counting(referenceBackend);
  try {
    const { model, tokenizer } = loadModel(SRC, { backend: c.backend });
    const windows = calibrationWindows(tokenizer, readText(CALIB), 3, 32, 1);
    const hs = windows.map((ids) => model.embedTokens(ids));
    const advanced = model.advanceWindows(0, windows, hs);
    assert.equal(c.leaked(), windows.length, "the advanced states only");
    c.calls.set("layerForward", 0);
    c.state.hook = (name, n) => {
      if (name === "layerForward" && n === 2) throw new Error("pass failed");
    };
    assert.throws(() => model.advanceWindows(1, windows, advanced), /pass failed/);
    assert.equal(c.leaked(), 0);
  } finally {
    c.restore();
  }
});

test("the output refit frees its hidden states and per-window tensors when it ends, on a stop between windows and on an error in a layer pass", async () => {
  const out = path.join(tmpDir(), "mla");
  await convert(SRC, { rank: 2, ropePairs: 1, ropeStrategy: "uniform", out, progress: null });
  const windows = calibrationWindows(loadTokenizer(SRC), readText(CALIB), 3, 32, 1);
  const c = counting(referenceBackend);
  try {
    await refitOutputProjections(SRC, out, windows, c.backend, { progress: null });
    assert.equal(c.leaked(), 0, "a whole run");
    // A stop in layer 1, after its second window.
    const stop = new AbortController();
    c.calls.clear();
    c.state.hook = (name, n) => {
      if (name === "attentionOf" && n === 2 * windows.length + 3) stop.abort(new Error("enough"));
    };
    await assert.rejects(refitOutputProjections(SRC, out, windows, c.backend, { progress: null, signal: stop.signal }), (e) => e instanceof MlaError && e.code === "INTERRUPTED");
    assert.equal(c.leaked(), 0, "a stop");
    // An error in layer 0's advance, at the second window.
    c.calls.clear();
    c.state.hook = (name, n) => {
      if (name === "layerForward" && n === 2) throw new Error("pass failed");
    };
    await assert.rejects(refitOutputProjections(SRC, out, windows, c.backend, { progress: null }), /pass failed/);
    assert.equal(c.leaked(), 0, "an error in a pass");
  } finally {
    c.restore();
  }
});
