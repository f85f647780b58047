/** StepTimer: host time = a step's wall time less the backend's counted waits; warm-up steps left out of the mean. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { StepTimer } from "../../src/finetune/stepTimer.js";
import type { Backend } from "../../src/tensor/backend.js";

const busy = (ms: number) => {
  const end = performance.now() + ms;
  while (performance.now() < end);
};

test("host time is the wall time less the waits; the mean leaves out the warm-up; no host time without hostWaitMs", () => {
  let waited = 0;
  const device = { hostWaitMs: () => waited } as unknown as Backend;
  const timer = new StepTimer(device, 1);
  const kept: { stepMs: number; hostMs: number }[] = [];
  for (let i = 0; i < 3; i++) {
    timer.start();
    busy(2); // the host's own work
    const w0 = performance.now();
    busy(3); // a blocking call, counted as a wait
    const w = performance.now() - w0;
    waited += w;
    const { stepMs, hostMs } = timer.stop();
    assert.ok(Math.abs(stepMs - hostMs! - w) < 1e-6, "the wait is exactly what separates them");
    assert.ok(hostMs! >= 2, `host ${hostMs}`);
    if (i >= 1) kept.push({ stepMs, hostMs: hostMs! });
  }
  const s = timer.summary()!;
  const mean = (f: (k: { stepMs: number; hostMs: number }) => number) => kept.reduce((a, k) => a + f(k), 0) / kept.length;
  assert.ok(Math.abs(s.step_ms - mean((k) => k.stepMs)) < 1e-9 && Math.abs(s.host_ms - mean((k) => k.hostMs)) < 1e-9, JSON.stringify(s));
  assert.match(timer.describe()!, /^host time per step: [\d.]+ of [\d.]+ ms \(\d+%; the rest the host waited for the device(: the step is host-bound)?\)$/);

  const cpu = new StepTimer({} as Backend);
  cpu.start();
  assert.equal(cpu.stop().hostMs, undefined);
  assert.equal(cpu.summary(), null);
  assert.equal(cpu.describe(), null);
});
