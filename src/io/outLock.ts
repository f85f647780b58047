/**
 * The run folders that commands write in place and resume from (finetune, study and pipeline --out)
 * are held by one run at a time: `OUT/.mha2mla.lock`, created exclusively (O_EXCL) for the run's
 * duration and holding { pid, host, command, started }. Two runs into one folder at once both
 * "succeeded" and corrupted it (every log line twice, the model written twice); the second is now
 * refused, naming the first. The file goes when the run ends in any way (success, error, a stop, the
 * process exiting); one left by a run killed outright (SIGKILL, power loss) is taken over, with a
 * warning, when its pid is gone on this machine. A lock from another machine (a shared filesystem),
 * whose process cannot be checked from here, is refused with the path to delete.
 *
 * A call inside a locked run (a pipeline's fine-tune phase, a study's runs) works in a folder of that
 * run and takes no lock of its own; two calls side by side in one process (Promise.all) exclude each
 * other as two processes do. A run's lock holds every folder inside its own: a run into one of them
 * (`finetune --out OUT/finetune` beside the pipeline holding OUT) is refused, naming the nearest lock
 * above it and its holder, and a call nested in a run is refused where a folder between is another
 * run's (a fine-tune started in OUT/finetune before the pipeline took OUT); a pipeline checks its phase
 * folders, and a study its runs' folders, for such a lock before its first phase or run
 * (`refuseLockedInside`). The lock file is not a model file: every check that lists a run folder (is
 * it empty, is it an earlier output) leaves it out (`entriesBesideLock`).
 */
import { AsyncLocalStorage } from "node:async_hooks";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { ioError, MlaError } from "../errors.js";
import type { Logger } from "../util/log.js";
import { makeDirs } from "./makeDirs.js";
import { realPath, within } from "./outGuard.js";

export const LOCK_FILE = ".mha2mla.lock";

/** What the lock file holds. */
interface Holder {
  pid: number;
  host: string;
  command: string;
  started: string;
}

/** An empty or half-written lock file younger than this is a run between creating and writing it, not a crash. */
const DAMAGED_GRACE_MS = 5000;

/** The lock files this process holds, each with its contents (released only while they are still ours). */
const held = new Map<string, string>();
/** The folders locked by the calls the current one runs inside (a pipeline's, for its fine-tune phase). */
const enclosing = new AsyncLocalStorage<readonly string[]>();

let exitHook = false;
/** A process that exits without unwinding (a second Ctrl-C, process.exit) still removes its locks. */
function releaseAllOnExit(): void {
  if (exitHook) return;
  exitHook = true;
  process.on("exit", () => {
    for (const file of [...held.keys()]) releaseFile(file);
  });
}

function releaseFile(file: string): void {
  const mine = held.get(file);
  held.delete(file);
  try {
    // Still ours: not taken over meanwhile by a run that judged this one dead (a pid reused elsewhere).
    if (mine !== undefined && fs.readFileSync(file, "utf8") === mine) fs.unlinkSync(file);
  } catch {
    // gone already (the folder removed with it): nothing to release
  }
}

/** Whether process `pid` runs on this machine (one of another user's counts: EPERM). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** `fs.readdirSync(dir)` without the lock file (nor a stale one being removed): what a run folder holds. */
export function entriesBesideLock(dir: string): string[] {
  return fs.readdirSync(dir).filter((f) => !f.startsWith(LOCK_FILE));
}

/** Makes `dir` (what: as makeDirs names it) if missing, and empties it of everything but the lock (--force, a fresh run). */
export function emptyRunFolder(dir: string, what: string): void {
  makeDirs(dir, what);
  for (const f of entriesBesideLock(dir)) fs.rmSync(path.join(dir, f), { recursive: true, force: true });
}

function parseHolder(text: string): Holder | null {
  try {
    const h = JSON.parse(text) as Partial<Holder> | null;
    if (h && Number.isInteger(h.pid) && h.pid! > 0 && typeof h.host === "string" && typeof h.command === "string" && typeof h.started === "string") return h as Holder;
  } catch {
    // damaged: null
  }
  return null;
}

/** "a finetune run (pid 12, started …)", with the host where it is not this one. */
const describe = (h: Holder, here: boolean) => `a ${h.command} run (pid ${h.pid}${here ? "" : ` on host ${h.host}`}, started ${h.started})`;

/**
 * The lock file `file` as found: null where it is stale (the reason, for the warning), or the refusal
 * naming who holds `dir`. `text` is what was read (compared before a takeover). `where`: the folder
 * holding `file`, where it is not `dir` itself: `above`, one that `dir` lies inside (a pipeline's, for
 * a fine-tune into its OUT/finetune), or `below`, one inside `dir` that the run writes in (the
 * pipeline's OUT/finetune, where a fine-tune started first).
 */
function judge(dir: string, file: string, text: string, where?: { above: string } | { below: string }): { stale: string } | { refusal: MlaError } {
  const retry = `if no run is active there (it was killed on another machine), delete ${file} and run again`;
  const hint =
    where === undefined ? `wait for that run to end; ${retry}`
    : "above" in where ? `wait for that run to end, or choose an --out outside ${where.above} (that run writes in its folder, this one included); ${retry}`
    : `wait for that run to end, or choose another --out (this run writes in ${where.below}); ${retry}`;
  const message = (what: string) =>
    where === undefined ? `--out ${dir} is in use by ${what}`
    : "above" in where ? `--out ${dir} lies inside ${where.above}, which is in use by ${what} (its lock ${file})`
    : `--out ${dir} holds ${where.below}, which is in use by ${what} (its lock ${file})`;
  const refuse = (what: string) => ({ refusal: new MlaError("EXISTS", message(what), hint) });
  const h = parseHolder(text);
  if (!h) {
    let age = Infinity;
    try {
      age = Date.now() - fs.statSync(file).mtimeMs;
    } catch {
      // gone meanwhile: the retry creates it
    }
    if (age > DAMAGED_GRACE_MS) return { stale: `its lock file ${file} was empty or damaged (a run that crashed as it started)` };
    return refuse(`a run that is starting (its lock file ${file}, written ${Math.max(0, Math.round(age / 1000))} s ago, is not complete yet)`);
  }
  if (h.host !== os.hostname()) return refuse(`${describe(h, false)}; another machine's process cannot be checked from here`);
  // This process's pid: another call of this process holds it, or a dead run's pid was reused by this one.
  if (h.pid === process.pid) return held.has(file) ? refuse(`another ${h.command}() call of this process (started ${h.started})`) : { stale: `${describe(h, true)} had the pid this process has now, so it is no longer running` };
  if (processAlive(h.pid)) return refuse(describe(h, true));
  return { stale: `${describe(h, true)} is no longer running` };
}

/** Reads the lock file, or null where it is gone. */
function readLock(file: string): string | null {
  try {
    return fs.readFileSync(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw ioError("cannot read the run folder's lock", file, e);
  }
}

/**
 * Refuses `dir` where another run holds its lock, or the lock of the nearest folder above it that has
 * one (read only: a stale lock passes, taken over by the run's own lock later; one above is left to
 * its owner). For a refusal that would otherwise say only that the folder exists.
 */
export function refuseLocked(dir: string): void {
  const real = realPath(dir);
  const file = path.join(real, LOCK_FILE);
  const text = readLock(file);
  if (text !== null) {
    const j = judge(dir, file, text);
    if ("refusal" in j) throw j.refusal;
  }
  refuseLockedAbove(dir, real);
}

/** The lock file in folder `dir` as read, or null where there is none or it cannot be read (a folder above one's own, not ours to name). */
function peekLock(dir: string): string | null {
  try {
    return fs.readFileSync(path.join(dir, LOCK_FILE), "utf8");
  } catch {
    return null;
  }
}

/**
 * Refuses `dir` (`real`: its real path) where the nearest folder above it that holds a lock (up to
 * the filesystem's root; `stop`: not at or above this folder) is held by another run: a pipeline's
 * lock on OUT held its fine-tune folder OUT/finetune, but `finetune --out OUT/finetune` took its own
 * lock there and trained into it beside the pipeline. A stale lock above passes (its run is gone).
 */
function refuseLockedAbove(dir: string, real: string, stop?: string): void {
  for (let d = path.dirname(real); d !== stop; d = path.dirname(d)) {
    const text = peekLock(d);
    if (text !== null) {
      const j = judge(dir, path.join(d, LOCK_FILE), text, { above: d });
      if ("refusal" in j) throw j.refusal;
      return;
    }
    if (path.dirname(d) === d) return;
  }
}

/**
 * Refuses the run folder `dir` where one of the folders inside it that its run writes in (`inside`: a
 * pipeline's phase folders, a study's runs' folders) holds the lock of another run that is live
 * (`finetune --out OUT/finetune` started before the pipeline into OUT): read only, so that the run is
 * refused before its first phase, not when the phase that writes there starts (withOutLock's check,
 * hours later). A stale lock passes, left to that folder's next run.
 */
export function refuseLockedInside(dir: string, inside: readonly string[]): void {
  for (const sub of inside) {
    const real = realPath(sub);
    const text = peekLock(real);
    if (text === null) continue;
    const j = judge(dir, path.join(real, LOCK_FILE), text, { below: real });
    if ("refusal" in j) throw j.refusal;
  }
}

/**
 * Moves the stale lock `text` aside (an atomic rename: of two runs taking it over, one moves it) and
 * removes it. Where what was moved is not it (a run took it over meanwhile), it is put back.
 */
function removeStale(file: string, text: string): void {
  const aside = `${file}.stale-${process.pid}`;
  try {
    fs.renameSync(file, aside);
  } catch {
    return; // moved by another run: the retry sees what is there now
  }
  if (fs.readFileSync(aside, "utf8") !== text) {
    try {
      fs.linkSync(aside, file);
    } catch {
      // yet another run created one meanwhile: it holds the folder
    }
  }
  fs.rmSync(aside, { force: true });
}

/** Creates the lock file exclusively; false where one is there. */
function create(file: string, contents: string): boolean {
  let fd: number;
  try {
    fd = fs.openSync(file, "wx");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw ioError("cannot create the run folder's lock", file, e);
  }
  try {
    fs.writeSync(fd, contents);
  } catch (e) {
    fs.rmSync(file, { force: true }); // an empty lock would hold the folder for a few seconds after this refusal
    throw ioError("cannot write the run folder's lock", file, e);
  } finally {
    fs.closeSync(fd);
  }
  held.set(file, contents);
  releaseAllOnExit();
  return true;
}

export interface OutLockOptions {
  /** Names the run in the lock ("finetune", "study", "pipeline"). */
  command: string;
  /** Hears the takeover of a stale lock. */
  log: Logger;
  /** Whether a missing `dir` is made (default true); false: a missing one is not locked (the run refuses it: --resume). */
  create?: boolean;
}

/**
 * Runs `work` holding the lock on the run folder `dir` (made if missing; removed again at the end if
 * this call made it and it is empty, so a run refused or stopped before writing leaves nothing). Refuses
 * with EXISTS, before `work` changes anything, where another run holds it or the nearest locked folder
 * above it (up to the filesystem's root). Inside a call that holds `dir` or a folder above it, `work`
 * runs as it is, unless another run holds `dir` or a folder between.
 */
export async function withOutLock<T>(dir: string, o: OutLockOptions, work: () => Promise<T>): Promise<T> {
  const abs = path.resolve(dir);
  const outer = enclosing.getStore() ?? [];
  const real = realPath(abs);
  // The innermost folder a call this one runs inside holds.
  const inside = outer.filter((d) => within(real, d)).sort((a, b) => b.length - a.length)[0];
  if (inside !== undefined) {
    // Inside this call's own run, but not inside another run below it (a fine-tune started in
    // OUT/finetune before this pipeline took OUT): its folder, or one between, locked by that run.
    if (real !== inside) {
      const text = peekLock(real);
      const j = text === null ? null : judge(dir, path.join(real, LOCK_FILE), text);
      if (j && "refusal" in j) throw j.refusal;
      refuseLockedAbove(dir, real, inside);
    }
    return work();
  }
  // Inside a folder another run holds (finetune --out OUT/finetune while a pipeline holds OUT): refused
  // before the folder is made.
  refuseLockedAbove(dir, real);
  const existed = fs.existsSync(abs);
  if (!existed && o.create === false) return work();
  makeDirs(abs, "the run folder");
  // One name per folder (held is keyed by it): a second call naming it through a link is refused, not taken for a stale lock.
  const file = path.join(realPath(abs), LOCK_FILE);
  const contents = JSON.stringify({ pid: process.pid, host: os.hostname(), command: o.command, started: new Date().toISOString() } satisfies Holder) + "\n";
  try {
    for (let tries = 0; !create(file, contents); tries++) {
      if (tries >= 3) throw new MlaError("EXISTS", `--out ${dir}: its lock ${file} keeps changing (runs starting there at once)`, `let one run start there; if no run is active there, delete ${file} and run again`);
      const text = readLock(file);
      if (text === null) continue; // released meanwhile
      const j = judge(dir, file, text);
      if ("refusal" in j) throw j.refusal;
      o.log.warn(`--out ${dir} was locked by an earlier run, taken over: ${j.stale}`);
      removeStale(file, text);
    }
  } catch (e) {
    if (!existed) removeIfEmpty(abs);
    throw e;
  }
  try {
    return await enclosing.run([...outer, realPath(abs)], work);
  } finally {
    releaseFile(file);
    if (!existed) removeIfEmpty(abs);
  }
}

/** Removes the folder `dir` this call made, where it is empty: a run that wrote nothing leaves no folder. */
function removeIfEmpty(dir: string): void {
  try {
    fs.rmdirSync(dir);
  } catch {
    // it holds files (the run's, or another run's lock): kept
  }
}
