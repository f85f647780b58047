/** ByteBudget: reads run ahead of writes in order, never more than the budget in memory, and failures surface. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ByteBudget } from "../../src/io/byteBudget.js";

const tick = () => new Promise<void>((r) => setTimeout(r, 1));

function harness(sizes: number[], made: Set<number>, budget: number, failRead = -1, failWrite = -1) {
  let held = 0;
  let peak = 0;
  const started: number[] = [];
  const items = sizes.map((bytes, i) => ({
    bytes,
    read: made.has(i)
      ? null
      : async () => {
          started.push(i);
          held += bytes;
          peak = Math.max(peak, held);
          await tick();
          if (i === failRead) throw new Error(`read ${i} failed`);
          return new Uint8Array(bytes).fill(i);
        },
  }));
  const io = new ByteBudget(items, budget);
  const written: number[] = [];
  const write = (i: number, data: Uint8Array): Promise<void> =>
    (async () => {
      await tick();
      if (i === failWrite) throw new Error(`write ${i} failed`);
      written.push(data[0]!);
      if (!made.has(i)) held -= data.length;
    })();
  return { io, items, written, started, peak: () => peak, write };
}

test("reads run ahead in order, within the budget, and every item is written in order", async () => {
  const sizes = [40, 10, 30, 50, 20, 20, 60, 10];
  const made = new Set([2, 5]);
  const h = harness(sizes, made, 100);
  let chain = Promise.resolve();
  for (let i = 0; i < sizes.length; i++) {
    const data = made.has(i) ? new Uint8Array(sizes[i]!).fill(i) : await h.io.take(i);
    assert.equal(data[0], i);
    chain = chain.then(() => h.write(i, data));
    h.io.wrote(data.length, chain, made.has(i));
  }
  await chain;
  await h.io.drain();
  assert.deepEqual(h.written, sizes.map((_, i) => i));
  assert.deepEqual(h.started, [0, 1, 3, 4, 6, 7]);
  assert.ok(h.peak() <= 100, `peak ${h.peak()} within the budget`);
});

test("a tensor larger than the budget is still read (alone)", async () => {
  const h = harness([500, 10], new Set(), 100);
  assert.equal((await h.io.take(0)).length, 500);
  h.io.wrote(500, h.write(0, new Uint8Array(500)), false);
  assert.equal((await h.io.take(1)).length, 10);
});

test("a failed read surfaces at take; a failed write surfaces to the next waiter", async () => {
  const r = harness([10, 10, 10], new Set(), 100, 1);
  await r.io.take(0);
  await assert.rejects(r.io.take(1), /read 1 failed/);
  await r.io.drain();

  const w = harness([60, 60, 60], new Set(), 100, -1, 0);
  const d = await w.io.take(0);
  w.io.wrote(d.length, w.write(0, d), false);
  await assert.rejects(w.io.take(1), /write 0 failed/);
  await w.io.drain();
});
