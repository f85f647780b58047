import assert from "node:assert/strict";
import { test } from "node:test";
import { activeLinalg, chosenLinalg, linalgScope, useLinalg, type Linalg } from "../../src/backends/native/linalg.js";

const fake = (name: string): Linalg => ({
  name,
  gram: () => new Float64Array(),
  eigen: () => ({ values: new Float64Array(), vectors: new Float64Array() }),
  matmul: () => new Float64Array(),
});
const tick = () => new Promise<void>((r) => setImmediate(r));

// Each conversion picks its float64 route in a scope of its own: two running at once in one process
// (interleaved at every await) must not see each other's, nor change the process default.
test("linalg routes: each scope keeps its own across awaits; the process default is set only outside a scope", async () => {
  const a = fake("a"), b = fake("b"), process = fake("process");
  useLinalg(process);
  try {
    const seen: string[] = [];
    await Promise.all([
      linalgScope(async () => {
        assert.equal(activeLinalg(), process, "a new scope starts from the process default");
        useLinalg(a);
        for (let i = 0; i < 3; i++) {
          await tick();
          seen.push(`a:${activeLinalg()?.name}`);
        }
      }),
      linalgScope(async () => {
        useLinalg(b);
        for (let i = 0; i < 3; i++) {
          await tick();
          seen.push(`b:${activeLinalg()?.name}`);
        }
        useLinalg(null);
        await tick();
        assert.equal(activeLinalg(), null, "null in a scope is the TypeScript route, not the default");
      }),
    ]);
    assert.deepEqual(seen.sort(), ["a:a", "a:a", "a:a", "b:b", "b:b", "b:b"]);
    assert.equal(chosenLinalg(), process, "the scopes left the process default alone");
  } finally {
    useLinalg(undefined);
  }
  assert.equal(chosenLinalg(), undefined);
});
