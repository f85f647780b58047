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

/**
 * The nearest existing folder of `dir` where it lies on a virtual file system that stores no files
 * (/proc, /sys: no blocks at all), else null. Such a folder passes a write-access check for root, and
 * then a command failed after its work, or read as a full disk.
 */
export function virtualFsFolder(dir: string): string | null {
  const d = existingAncestor(dir);
  try {
    return Number(fs.statfsSync(d).blocks) === 0 ? d : null;
  } catch {
    return null;
  }
}

/** The refusal of a path on a virtual file system: `what` names the culprit ("--json x.json", "cannot create a folder beside out"). */
export function virtualFsError(what: string, folder: string): MlaError {
  return new MlaError("IO", `${what}: ${folder} is not on a disk (a virtual file system, which holds no files)`, "choose a path on a disk");
}

/** Bytes free to this user on the file system holding `dir` (or its nearest existing ancestor); null where the platform cannot say. */
export function freeBytes(dir: string): number | null {
  // Test hook: a disk this small, so the tests reach the no-room paths.
  const forced = process.env["MHA2MLA_TEST_FREE_BYTES"];
  if (forced !== undefined) return Number(forced);
  const d = existingAncestor(dir);
  try {
    const s = fs.statfsSync(d);
    return Number(s.bavail) * Number(s.bsize);
  } catch {
    return null;
  }
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
  const virtual = virtualFsFolder(out);
  if (virtual) throw virtualFsError(`cannot write ${out}`, virtual);
  const free = freeBytes(out);
  if (free !== null && free < bytes) throw new MlaError("IO", `${what} takes about ${formatBytes(bytes)} and the disk of ${out} has ${formatBytes(free)} free`, "free disk space or choose an --out on a larger disk (refused before the work, so nothing is lost)");
}
