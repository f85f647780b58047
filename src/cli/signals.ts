/**
 * SIGINT/SIGTERM: by default the CLI removes its temporary output folders and exits at once. A
 * command that can stop cleanly asks for a graceful stop instead: the first signal sets a flag the
 * work polls (finetune, serve); a second one exits at once. A command whose library call takes an
 * AbortSignal (export, pipeline, study) asks for one that the first signal aborts (abortOnStop).
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

// A stop during a validation pass (periodic or final) ends it after its current window; the checkpoint is the last step's.
const FINETUNE_STOP: StopMessages = {
  stopping: "finishing this step (or validation window), saving the last step's checkpoint, then stopping; before the first step (tokenizing, the first validation), at the next piece or window, with nothing to save",
  kept: "the run folder keeps its last checkpoint, if one was saved: the same command with --resume continues from it",
};

let graceful: { flag: boolean; at: number; say: StopMessages; onStop?: (sig: string) => void } | null = null;

/**
 * A second signal this soon after the first is the same stop delivered twice, not a second Ctrl-C:
 * `timeout -s INT` signals the command and then its process group, and a wrapper may forward the
 * terminal's Ctrl-C that its child had already. Quitting at once for it lost a fine-tune's steps.
 */
const REPEAT_MS = 1000;

export function installSignalHandlers(): void {
  // SIGHUP: a closed terminal or a dropped SSH session stops the run as Ctrl-C does (it left a hidden,
  // half-written output folder behind, gigabytes for a 7B model, until a later run at the same --out).
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(sig, () => stop(sig));
  // A reader of stderr that stops early (`mha2mla convert … 2>&1 | head`) closes it: the next log line
  // failed with EPIPE, an unhandled stream error that crashed the run with exit 1 and left its hidden
  // temporary output folder behind. Node ignores SIGPIPE, so the closed pipe stops the run as SIGHUP
  // does. A stream reports its error once: later lines go nowhere without another stop.
  process.stderr.on("error", (e: NodeJS.ErrnoException) => {
    if (e.code !== "EPIPE") throw e;
    stop("SIGPIPE");
  });
}

/** The first stop of a graceful command asks it to stop; any other exits at once, removing the temporary output folders. */
function stop(sig: string): void {
  // After SIGHUP the terminal may be gone: a failed write must not stop the stop.
  const say = (line: string) => {
    try {
      process.stderr.write(line);
    } catch {
      // nowhere to say it
    }
  };
  if (graceful && !graceful.flag) {
    graceful.flag = true;
    graceful.at = performance.now();
    say(`\n${sig}: ${graceful.say.stopping} (send again to quit at once)\n`);
    graceful.onStop?.(sig);
    return;
  }
  if (graceful && performance.now() - graceful.at < REPEAT_MS) return;
  abandonAll();
  // A resumable command (graceful) works in its run folder, which stays for the next run.
  say(graceful ? `\ninterrupted (${sig}) at once: ${graceful.say.kept}\n` : `\ninterrupted (${sig}): no partial output was left behind\n`);
  process.exit(130);
}

export function gracefulStop(say: StopMessages = FINETUNE_STOP, onStop?: (sig: string) => void): { requested: () => boolean; release: () => void } {
  const g = { flag: false, at: 0, say, onStop };
  graceful = g;
  return { requested: () => g.flag, release: () => void (graceful = null) };
}

/** What a command that stops on an AbortSignal says: the messages of each signal, and what a stop kept. */
export interface AbortStopMessages extends StopMessages {
  /** Said after "stopped (SIGNAL): " once the work stopped for the first signal. */
  stopped: string;
  /**
   * Where that line goes: stderr (the default, beside the progress: export, whose result alone is
   * stdout's), or stdout (pipeline, study: what a stopped resumable run kept is its result).
   */
  stoppedTo?: "stdout" | "stderr";
}

/**
 * Runs `work` with a signal the first SIGINT/SIGTERM aborts (the library stops at its next safe point,
 * removing its temporary folder, or keeping a resumable run's whole steps); a second one exits at once
 * as usual. Returns the work's result, or null when it stopped for the signal (MlaError INTERRUPTED):
 * then `stopped` is said, and the exit code is 130 (128 + SIGINT's number, what a shell reports for a
 * command it interrupted, as finetune's Ctrl-C). Any other error, or one not caused by the signal, is thrown.
 */
export async function abortOnStop<T>(say: AbortStopMessages, work: (signal: AbortSignal) => Promise<T>): Promise<T | null> {
  const c = new AbortController();
  const stop = gracefulStop(say, (sig) => c.abort(new Error(sig)));
  try {
    return await work(c.signal);
  } catch (e) {
    if (!(c.signal.aborted && e instanceof MlaError && e.code === "INTERRUPTED")) throw e;
    (say.stoppedTo === "stdout" ? process.stdout : process.stderr).write(`stopped (${(c.signal.reason as Error).message}): ${say.stopped}\n`);
    process.exitCode = 130;
    return null;
  } finally {
    stop.release();
  }
}
