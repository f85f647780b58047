/**
 * A worker thread started for one answer: the first message it posts, or undefined where it fails or
 * exits without one (the caller then does the work on its own thread). It is ended once it answers.
 */
import { Worker } from "node:worker_threads";

export function oneShotWorker<T>(script: URL, workerData: unknown, transferList: ArrayBuffer[] = []): Promise<T | undefined> {
  return new Promise((resolve) => {
    const w = new Worker(script, { workerData, transferList });
    w.once("message", (answer: T) => {
      resolve(answer);
      void w.terminate();
    });
    w.once("error", () => resolve(undefined));
    w.once("exit", () => resolve(undefined));
  });
}
