/**
 * Host time per training step (issue 12: no host-bound steps). A step's host time is its wall time
 * less what the host spent blocked on the device (Backend.hostWaitMs: downloads, the loss, the
 * gradient norm). When it is close to the wall time the device waited for the host: the step is
 * host-bound (dispatch, allocation, garbage collection), not device-bound. Backends without
 * hostWaitMs (the CPU ones, where the host does the work) report no host time.
 */
import type { Backend } from "../tensor/backend.js";

export interface HostShare {
  /** Mean wall time of a step, ms. */
  step_ms: number;
  /** Mean host time of a step, ms. */
  host_ms: number;
}

export class StepTimer {
  private t0 = 0;
  private wait0: number | undefined;
  private steps = 0;
  private sum = { step: 0, host: 0, n: 0 };

  /** `warmup`: steps left out of the mean (the first ones build kernels, plans and pools). */
  constructor(private readonly backend: Backend, private readonly warmup = 2) {}

  start(): void {
    this.t0 = performance.now();
    this.wait0 = this.backend.hostWaitMs?.();
  }

  /** Ends the step begun by start(): its wall time and, where the backend counts waits, its host time (ms). */
  stop(): { stepMs: number; hostMs: number | undefined } {
    const stepMs = performance.now() - this.t0;
    const hostMs = this.wait0 === undefined ? undefined : stepMs - (this.backend.hostWaitMs!() - this.wait0);
    if (hostMs !== undefined && ++this.steps > this.warmup) this.sum = { step: this.sum.step + stepMs, host: this.sum.host + hostMs, n: this.sum.n + 1 };
    return { stepMs, hostMs };
  }

  /** Means over the steps after the warm-up; null when none was measured. */
  summary(): HostShare | null {
    return this.sum.n ? { step_ms: this.sum.step / this.sum.n, host_ms: this.sum.host / this.sum.n } : null;
  }

  /** One line for the log, or null. */
  describe(): string | null {
    const s = this.summary();
    if (!s) return null;
    const pct = (100 * s.host_ms) / s.step_ms;
    return `host time per step: ${s.host_ms.toFixed(1)} of ${s.step_ms.toFixed(1)} ms (${pct.toFixed(0)}%; the rest the host waited for the device${pct > 90 ? ": the step is host-bound" : ""})`;
  }
}
