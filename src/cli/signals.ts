/**
 * SIGINT/SIGTERM: by default the CLI removes its temporary output folders and exits at once. A
 * command that can stop cleanly (finetune, pipeline, study) asks for a graceful stop instead: the
 * first signal sets a flag the work polls; a second one exits at once. A command whose library call
 * takes an AbortSignal (export) asks for one that the first signal aborts (abortOnStop).
 */
import { abandonAll } from "../io/atomicDir.js";
import { MlaError } from "../errors.js";

/** What a graceful command tells the user on each signal; each command's re-run differs. */
export interface StopMessages {
  /** What the first signal makes the command do before it stops. */
  stopping: string;
  /** What a second signal (an exit at once) leaves for the next run. */
  kept: string;
}

const FINETUNE_STOP: StopMessages = {
  stopping: "finishing this step, saving a checkpoint, then stopping; before the first step (tokenizing, the first validation), at the next piece or window, with nothing to save",
  kept: "the run folder keeps its last checkpoint, if one was saved: the same command with --resume continues from it",
};

let graceful: { flag: boolean; say: StopMessages; onStop?: (sig: string) => void } | null = null;

export function installSignalHandlers(): void {
  for (const sig of ["SIGINT", "SIGTERM"] as const)
    process.on(sig, () => {
      if (graceful && !graceful.flag) {
        graceful.flag = true;
        process.stderr.write(`\n${sig}: ${graceful.say.stopping} (send again to quit at once)\n`);
        graceful.onStop?.(sig);
        return;
      }
      abandonAll();
      // A resumable command (graceful) works in its run folder, which stays for the next run.
      process.stderr.write(graceful ? `\ninterrupted (${sig}) at once: ${graceful.say.kept}\n` : `\ninterrupted (${sig}): no partial output was left behind\n`);
      process.exit(130);
    });
}

export function gracefulStop(say: StopMessages = FINETUNE_STOP, onStop?: (sig: string) => void): { requested: () => boolean; release: () => void } {
  const g = { flag: false, say, onStop };
  graceful = g;
  return { requested: () => g.flag, release: () => void (graceful = null) };
}

/**
 * Runs `work` with a signal the first SIGINT/SIGTERM aborts (the library stops at its next safe point,
 * removing its temporary folder); a second one exits at once as usual. Returns the work's result, or
 * null when it stopped for the signal (exit code 130 set, `stopped` said on stderr).
 */
export async function abortOnStop<T>(say: StopMessages & { stopped: string }, work: (signal: AbortSignal) => Promise<T>): Promise<T | null> {
  const c = new AbortController();
  const stop = gracefulStop(say, (sig) => c.abort(new Error(sig)));
  try {
    return await work(c.signal);
  } catch (e) {
    if (!(c.signal.aborted && e instanceof MlaError && e.code === "INTERRUPTED")) throw e;
    process.stderr.write(`stopped (${(c.signal.reason as Error).message}): ${say.stopped}\n`);
    process.exitCode = 130;
    return null;
  } finally {
    stop.release();
  }
}
