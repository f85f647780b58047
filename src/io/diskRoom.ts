/**
 * Disk room for what a command is about to write: checked before the long work (calibration,
 * factoring, training), so a full disk costs a clear error at the start instead of the work.
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError } from "../errors.js";

/** `dir`, or its nearest existing ancestor. */
function existingAncestor(dir: string): string {
  let d = path.resolve(dir);
  while (!fs.existsSync(d) && path.dirname(d) !== d) d = path.dirname(d);
  return d;
}

/** The file system of `dir`'s nearest existing folder: that folder, and its statistics (null where the platform cannot say). */
function diskOf(dir: string): { folder: string; stats: fs.StatsFs | null } {
  const folder = existingAncestor(dir);
  try {
    return { folder, stats: fs.statfsSync(folder) };
  } catch {
    return { folder, stats: null };
  }
}

/** A file system that stores no files (/proc, /sys: no blocks at all). */
function holdsNoFiles(stats: fs.StatsFs | null): boolean {
  return stats !== null && Number(stats.blocks) === 0;
}

/** Bytes free to this user on a file system; null where the platform cannot say. */
function freeOn(stats: fs.StatsFs | null): number | null {
  // Test hook: a disk this small, so the tests reach the no-room paths.
  const forced = process.env["MHA2MLA_TEST_FREE_BYTES"];
  if (forced !== undefined) return Number(forced);
  return stats ? Number(stats.bavail) * Number(stats.bsize) : null;
}

/**
 * The nearest existing folder of `dir` where it lies on a virtual file system that stores no files
 * (/proc, /sys), else null. Such a folder passes a write-access check for root, and then a command
 * failed after its work, or read as a full disk.
 */
export function virtualFsFolder(dir: string): string | null {
  const { folder, stats } = diskOf(dir);
  return holdsNoFiles(stats) ? folder : null;
}

/** The refusal of a path on a virtual file system: `what` names the culprit ("--json x.json", "cannot create a folder beside out"). */
export function virtualFsError(what: string, folder: string): MlaError {
  return new MlaError("IO", `${what}: ${folder} is not on a disk (a virtual file system, which holds no files)`, "choose a path on a disk");
}

/**
 * Refuses, before the work, a file or folder to be written at `target` that could not be: the nearest
 * existing folder above it lies on a virtual file system (refused as `virtualWhat`), or this user cannot
 * write in it (`cannotWrite`'s error). Returns without a word where a file stands there instead, which
 * the caller names in its own way (`fileWhat`, when given, is that refusal).
 */
export function requireWritableAncestor(target: string, virtualWhat: string, cannotWrite: (e: unknown, folder: string) => MlaError, fileWhat?: (folder: string) => MlaError): void {
  const folder = existingAncestor(path.dirname(path.resolve(target)));
  if (!fs.statSync(folder).isDirectory()) {
    if (fileWhat) throw fileWhat(folder);
    return;
  }
  if (virtualFsFolder(folder)) throw virtualFsError(virtualWhat, folder);
  try {
    fs.accessSync(folder, fs.constants.W_OK | fs.constants.X_OK);
  } catch (e) {
    throw cannotWrite(e, folder);
  }
}

/** Bytes free to this user on the file system holding `dir` (or its nearest existing ancestor); null where the platform cannot say. */
export function freeBytes(dir: string): number | null {
  return freeOn(diskOf(dir).stats);
}

/** Bytes of the weight files (*.safetensors) of the checkpoint folder `dir`. */
export function weightFileBytes(dir: string): number {
  return fs.readdirSync(dir).filter((f) => f.endsWith(".safetensors")).reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);
}

/** n bytes for a message: GB from 1 GB, else MB, else kB (decimal units, as disks are sold). */
export function formatBytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e3).toFixed(1)} kB`;
}

/** Refuses, before any work, to write `bytes` (`what`) into `out` when its disk has less free. */
export function requireRoom(out: string, bytes: number, what: string): void {
  const { folder, stats } = diskOf(out);
  if (holdsNoFiles(stats)) throw virtualFsError(`cannot write ${out}`, folder);
  const free = freeOn(stats);
  if (free !== null && free < bytes) throw new MlaError("IO", `${what} takes about ${formatBytes(bytes)} and the disk of ${out} has ${formatBytes(free)} free`, "free disk space or choose an --out on a larger disk (refused before the work, so nothing is lost)");
}
