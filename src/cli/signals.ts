/**
 * SIGINT/SIGTERM: by default the CLI removes its temporary output folders and exits at once. A
 * command that can stop cleanly (finetune, pipeline, study) asks for a graceful stop instead: the
 * first signal sets a flag the work polls; a second one exits at once.
 */
import { abandonAll } from "../io/atomicDir.js";

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

let graceful: { flag: boolean; say: StopMessages } | null = null;

export function installSignalHandlers(): void {
  for (const sig of ["SIGINT", "SIGTERM"] as const)
    process.on(sig, () => {
      if (graceful && !graceful.flag) {
        graceful.flag = true;
        process.stderr.write(`\n${sig}: ${graceful.say.stopping} (send again to quit at once)\n`);
        return;
      }
      abandonAll();
      // A resumable command (graceful) works in its run folder, which stays for the next run.
      process.stderr.write(graceful ? `\ninterrupted (${sig}) at once: ${graceful.say.kept}\n` : `\ninterrupted (${sig}): no partial output was left behind\n`);
      process.exit(130);
    });
}

export function gracefulStop(say: StopMessages = FINETUNE_STOP): { requested: () => boolean; release: () => void } {
  const g = { flag: false, say };
  graceful = g;
  return { requested: () => g.flag, release: () => void (graceful = null) };
}
