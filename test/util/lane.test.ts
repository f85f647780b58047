/** Lane: jobs run one at a time in the order asked; a failed job fails its caller only, and the next runs. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Lane } from "../../src/util/lane.js";

test("a lane runs its jobs one at a time, in order; a job that fails does not stop the next", async () => {
  const lane = new Lane();
  const events: string[] = [];
  let running = 0;
  const job = (name: string, ms: number, fail = false) => async () => {
    running++;
    assert.equal(running, 1, "one job at a time");
    events.push(`start ${name}`);
    await new Promise((r) => setTimeout(r, ms));
    events.push(`end ${name}`);
    running--;
    if (fail) throw new Error(`${name} failed`);
    return name;
  };
  const results = await Promise.allSettled([lane.run(job("a", 20)), lane.run(job("b", 5, true)), lane.run(job("c", 1))]);
  assert.deepEqual(events, ["start a", "end a", "start b", "end b", "start c", "end c"]);
  assert.deepEqual(results.map((r) => (r.status === "fulfilled" ? r.value : (r.reason as Error).message)), ["a", "b failed", "c"]);
});
