/**
 * Stopping a long library call (convert, evaluate, …) through an AbortSignal. The work checks it where
 * it already gives the event loop a turn (between layers, windows, items), so an abort from a timer or
 * a signal handler is seen within one unit of work. It throws the library's one error type, with the
 * signal's reason as `cause`; the work's usual cleanup (temporary folders) runs on the way out.
 */
import { MlaError } from "../errors.js";

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (!signal?.aborted) return;
  const r: unknown = signal.reason;
  const why = r instanceof Error ? r.message : String(r);
  throw new MlaError("INTERRUPTED", `stopped: the AbortSignal was aborted (${why})`, "no partial output is left; call it again to redo the work", { cause: r });
}

/** One turn of the event loop (timers and signal handlers run), then the signal's check. */
export async function nextTurn(signal?: AbortSignal): Promise<void> {
  await new Promise((r) => setImmediate(r));
  throwIfAborted(signal);
}
