/**
 * One worker thread of tokenizerWorker.ts, seen from the thread that asks: each request's answer, or
 * why there is none (the worker could not load the caller's files, a request threw, it exited). It
 * keeps the process alive only while a request is out: an idle one kept for later requests must not
 * hold a finished command or a test run open.
 */
import { Worker, type WorkerOptions } from "node:worker_threads";
import type { TokenizerRequest } from "./tokenizerWorker.js";

/**
 * A request's answer, or why the worker gave none; `unstarted` where the worker thread could not even be
 * created (a thread limit, a runtime without workers), so that a caller can do the work itself instead.
 */
export type Outcome<T> = { ok: true; value: T } | { ok: false; why: string; unstarted?: true };

/** How workers are created: a seam for tests, which make it throw as `new Worker` can. */
export const workerStart = { create: (url: URL, options: WorkerOptions) => new Worker(url, options) };

export class TokenizerThread {
  /** Null where it could not be created (its answers say `unstarted`). */
  private readonly worker: Worker | null;
  private readonly pending = new Map<number, (o: Outcome<unknown>) => void>();
  private nextId = 0;
  private endWhenIdle = false;
  /** Why it answers no more, once it does not: every later request gets this. */
  gone: string | null = null;

  /** A worker loading the tokenizer in `dir`, refusing files whose hash is not `filesHash` (where given). */
  constructor(dir: string, filesHash: string | undefined) {
    let worker: Worker;
    try {
      worker = workerStart.create(new URL("./tokenizerWorker.js", import.meta.url), { workerData: { dir, filesHash } });
    } catch (e) {
      // Thrown by the constructor, not emitted: without this a caller that falls back on a failed answer threw instead.
      this.worker = null;
      this.gone = `a tokenizer worker thread could not start: ${(e as Error).message}`;
      return;
    }
    this.worker = worker;
    worker.unref();
    worker.on("message", (m: { id: number; answer: unknown }) => {
      const resolve = this.pending.get(m.id);
      // An answer already failed by end() (posted before the worker was told to stop): the worker is exiting,
      // and idle()'s unref here would undo the ref that keeps the loop alive until its exit (a caller awaiting
      // end() then saw the event loop end first: encodeLong stopped with two workers, one answer in flight).
      if (!resolve) return;
      this.pending.delete(m.id);
      if (this.pending.size === 0) this.idle();
      resolve({ ok: true, value: m.answer });
    });
    worker.on("error", (e) => this.fail(e.message));
    // A message that cannot be deserialized would never be answered, and the lane behind it would wait forever.
    worker.on("messageerror", (e) => void this.end(`a tokenizer worker thread's answer could not be read: ${e.message}`));
    worker.on("exit", (code) => this.fail(`a tokenizer worker thread exited (code ${code}) before answering`));
  }

  /** Whether a request is out. */
  get busy(): boolean {
    return this.pending.size > 0;
  }

  /** The answer to `request` (buffers in `transfer` move to the worker); requests are answered in the order asked. */
  ask<T>(request: TokenizerRequest, transfer: ArrayBuffer[] = []): Promise<Outcome<T>> {
    if (this.gone !== null) return Promise.resolve(this.worker ? { ok: false, why: this.gone } : { ok: false, why: this.gone, unstarted: true });
    const worker = this.worker!; // not gone, so started
    if (this.pending.size === 0) worker.ref();
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.pending.set(id, resolve as (o: Outcome<unknown>) => void);
      try {
        worker.postMessage({ ...request, id }, transfer);
      } catch (e) {
        // Not sent (a value that cannot be cloned): no answer will come, so the worker must not stay busy and held.
        this.pending.delete(id);
        if (this.pending.size === 0) this.idle();
        resolve({ ok: false, why: `a request could not be sent to the tokenizer worker thread: ${(e as Error).message}` });
      }
    });
  }

  /** Ends the worker now; requests still out get no answer (why: `why`). */
  end(why = "the tokenizer worker thread was ended"): Promise<void> {
    this.fail(why);
    // terminate() refs the worker until its exit; the message handler leaves it so (see there).
    return this.worker ? this.worker.terminate().then(() => undefined) : Promise.resolve();
  }

  /** Ends the worker once the requests out are answered (now, where none is). */
  retire(): void {
    if (this.pending.size === 0) void this.end();
    else this.endWhenIdle = true;
  }

  private idle(): void {
    if (this.gone !== null) return;  // ending or ended: its ref until exit stays
    if (this.endWhenIdle) void this.end();
    else this.worker?.unref();
  }

  private fail(why: string): void {
    if (this.gone !== null) return;
    this.gone = why;
    const waiting = [...this.pending.values()];
    this.pending.clear();
    for (const resolve of waiting) resolve({ ok: false, why });
  }
}
