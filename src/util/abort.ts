/**
 * Stopping a long library call (convert, evaluate, …) through an AbortSignal. The work checks it where
 * it already gives the event loop a turn (between layers, windows, items), so an abort from a timer or
 * a signal handler is seen within one unit of work. It throws the library's one error type, with the
 * signal's reason as `cause`; the work's usual cleanup (temporary folders) runs on the way out.
 */
import { MlaError } from "../errors.js";

/** `hint`: what is left and what calling again does, for work that resumes (pipeline, study) rather than starts over. */
export function throwIfAborted(signal: AbortSignal | undefined, hint = "no partial output is left; call it again to redo the work"): void {
  if (!signal?.aborted) return;
  const r: unknown = signal.reason;
  const why = r instanceof Error ? r.message : String(r);
  throw new MlaError("INTERRUPTED", `stopped: the AbortSignal was aborted (${why})`, hint, { cause: r });
}

/**
 * The same stop asked for by polling (finetune's `shouldStop`: the CLI's SIGINT handler sets a flag
 * it reads). The work that throws it stops as for an aborted signal; finetune, which passes it down
 * to its tokenizing and first validation, turns it into a clean stop before training.
 */
export function throwIfStopped(shouldStop: (() => boolean) | undefined): void {
  if (shouldStop?.()) throw new MlaError("INTERRUPTED", "stopped: a stop was asked for (shouldStop)", "no partial output is left; call it again to redo the work");
}

/** One turn of the event loop (timers and signal handlers run), then the signal's check and shouldStop's. */
export async function nextTurn(signal?: AbortSignal, shouldStop?: () => boolean): Promise<void> {
  await new Promise((r) => setImmediate(r));
  throwIfAborted(signal);
  throwIfStopped(shouldStop);
}

/**
 * One step of work that resumes by steps (a pipeline's phase, a study's run), under `signal`: the step
 * stops itself (convert, evaluate: INTERRUPTED; finetune: a checkpoint and stoppedEarly), then the
 * caller stops with `hint`, which says what is kept and that the same call resumes. A step that
 * finished as the signal came stops the caller too, its result kept.
 */
export async function resumableStep<T>(signal: AbortSignal | undefined, hint: string, step: () => Promise<T>): Promise<T> {
  throwIfAborted(signal, hint);
  let r: T;
  try {
    r = await step();
  } catch (e) {
    if (e instanceof MlaError && e.code === "INTERRUPTED") throwIfAborted(signal, hint);
    throw e;
  }
  throwIfAborted(signal, hint);
  return r;
}
