/**
 * `mkdir -p` that always ends: fs.mkdirSync(dir, { recursive: true }) loops forever at 100% CPU under
 * /proc (a known Node behaviour; Ctrl-C cannot run its handler meanwhile), and reports a path under a
 * read-only or dangling parent as a bare ENOENT. Here the nearest existing ancestor is found first and
 * must be a folder, then each missing level is made alone, so every failure is an MlaError naming it.
 */
import fs from "node:fs";
import path from "node:path";
import { ioError, MlaError } from "../errors.js";
import { virtualFsError, virtualFsFolder } from "./diskRoom.js";

/** Makes `dir` and any missing parents; `what` names it in a refusal ("the --json file's folder"). */
export function makeDirs(dir: string, what: string): void {
  const missing: string[] = [];
  let at = path.resolve(dir);
  for (;;) {
    let st: fs.Stats | null = null;
    try {
      st = fs.statSync(at);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      // ENOTDIR: a file above; walking up finds and names it. ELOOP (a link that leads back to itself) and the rest stop here.
      if (code !== "ENOENT" && code !== "ENOTDIR") throw ioError(`cannot create ${what}: cannot look at`, at, e);
    }
    if (st) {
      if (!st.isDirectory()) throw new MlaError("BAD_ARGUMENT", `cannot create ${what} ${dir}: ${at} is not a folder`, "choose a path whose parents are folders");
      break;
    }
    const parent = path.dirname(at);
    if (parent === at) break;
    missing.push(at);
    at = parent;
  }
  // /proc and /sys fail each mkdir with ENOENT, "no such file or folder", under a folder that exists.
  const virtual = missing.length ? virtualFsFolder(at) : null;
  if (virtual) throw virtualFsError(`cannot create ${what} ${dir}`, virtual);
  for (const d of missing.reverse()) {
    try {
      fs.mkdirSync(d);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "EEXIST" && fs.statSync(d, { throwIfNoEntry: false })?.isDirectory()) continue; // made meanwhile
      throw ioError(`cannot create ${what}:`, d, e);
    }
  }
}
