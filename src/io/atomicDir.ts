/**
 * Output folders appear whole or not at all: work goes into `OUT.tmp-XXXX` beside the target and is
 * renamed into place at the end. An interrupted run leaves no half-written OUT, and removes its
 * temporary folder when it can (SIGINT/SIGTERM handlers in the CLI call `abandonAll`).
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError, ioError } from "../errors.js";

const live = new Set<string>();

export function refuseExisting(out: string, force: boolean): void {
  if (fs.existsSync(out) && !force) throw new MlaError("EXISTS", `output ${out} already exists`, "pass --force to replace it, or choose another --out");
}

/** Creates the temporary sibling folder of `out` and returns its path. */
export function beginOutDir(out: string, force: boolean): string {
  refuseExisting(out, force);
  const parent = path.dirname(path.resolve(out));
  try {
    fs.mkdirSync(parent, { recursive: true });
    const tmp = fs.mkdtempSync(path.join(parent, path.basename(out) + ".tmp-"));
    live.add(tmp);
    return tmp;
  } catch (e) {
    throw ioError("cannot create a folder beside", out, e);
  }
}

/** Moves the finished temporary folder into place, replacing an old `out` only now (with force). */
export function commitOutDir(tmp: string, out: string, force: boolean): void {
  refuseExisting(out, force);
  try {
    if (fs.existsSync(out)) {
      const old = fs.mkdtempSync(path.resolve(out) + ".old-");
      fs.renameSync(out, path.join(old, "x"));
      fs.renameSync(tmp, out);
      fs.rmSync(old, { recursive: true, force: true });
    } else {
      fs.renameSync(tmp, out);
    }
    live.delete(tmp);
  } catch (e) {
    throw ioError("cannot move the finished output into", out, e);
  }
}

export function abandonOutDir(tmp: string): void {
  fs.rmSync(tmp, { recursive: true, force: true });
  live.delete(tmp);
}

export function abandonAll(): void {
  for (const t of [...live]) abandonOutDir(t);
}

/** Writes a small file atomically (temp file + rename). */
export function writeFileAtomic(file: string, data: string | Uint8Array): void {
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw ioError("cannot write", file, e);
  }
}
