/**
 * SIGINT/SIGTERM: by default the CLI removes its temporary output folders and exits at once. A
 * command that can stop cleanly (finetune) asks for a graceful stop instead: the first signal sets
 * a flag the work polls; a second one exits at once.
 */
import { abandonAll } from "../io/atomicDir.js";

let graceful: { flag: boolean } | null = null;

export function installSignalHandlers(): void {
  for (const sig of ["SIGINT", "SIGTERM"] as const)
    process.on(sig, () => {
      if (graceful && !graceful.flag) {
        graceful.flag = true;
        process.stderr.write(`\n${sig}: finishing this step, saving a checkpoint, then stopping (send again to quit at once)\n`);
        return;
      }
      abandonAll();
      // A resumable command (graceful) works in its run folder, which stays for the next run.
      process.stderr.write(graceful ? `\ninterrupted (${sig}) at once: the run folder keeps its last checkpoint, if one was saved; re-running the same command resumes from it\n` : `\ninterrupted (${sig}): no partial output was left behind\n`);
      process.exit(130);
    });
}

export function gracefulStop(): { requested: () => boolean; release: () => void } {
  const g = { flag: false };
  graceful = g;
  return { requested: () => g.flag, release: () => void (graceful = null) };
}
