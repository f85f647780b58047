/**
 * Output folders appear whole or not at all: work goes into a hidden `.OUT.tmp-XXXX` beside the
 * target and is renamed into place at the end. An interrupted run leaves no half-written OUT: on
 * SIGINT/SIGTERM the CLI removes its temporary folder (`abandonAll`); after SIGKILL the next run
 * that writes beside it sweeps it (`sweepStale`).
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError, ioError } from "../errors.js";
import { makeDirs } from "./makeDirs.js";
import { requireWritableAncestor } from "./diskRoom.js";
import { entriesBesideLock, processAlive } from "./outLock.js";

const live = new Set<string>();

/** Why --force cannot replace a file at an output folder's path: said wherever one is refused, unless a command says more. */
const FILE_AS_OUT_HINT = "--out names the output folder, and --force replaces only an earlier output folder: choose another --out, or move the file away";

/**
 * What `st` is where it is neither a file nor a folder ("a character device": /dev/null, /dev/stdout
 * on a terminal; "a named pipe (FIFO)": a pipe, <(…) or mkfifo's), or null for a file or a folder.
 * Such a path is something to write into, never to replace or move away.
 */
export function specialFileKind(st: fs.Stats): string | null {
  if (st.isFile() || st.isDirectory()) return null;
  if (st.isCharacterDevice()) return "a character device";
  if (st.isBlockDevice()) return "a block device";
  if (st.isFIFO()) return "a named pipe (FIFO)";
  if (st.isSocket()) return "a socket";
  return "not a regular file";
}

/**
 * An output folder whose path holds something else than a folder (a file, a link to one) is refused
 * whatever --force says: --force replaces an earlier output folder, and a file there is something
 * else the user keeps (`--out notes.txt --force` replaced notes.txt with the converted model).
 * Every command's output folder is checked here (the CLI up front, each library entry before its
 * work); `flag` names another folder flag (--token-cache), `hint` says what the command's folder holds.
 */
export function refuseFileAsOutDir(out: string, how: { flag?: string; hint?: string } = {}): void {
  const flag = how.flag ?? "--out";
  const asOutput = () => new MlaError("BAD_ARGUMENT", `${flag} ${out} is a file, not a folder`, how.hint ?? FILE_AS_OUT_HINT);
  const onTheWay = (file: string) => new MlaError("BAD_ARGUMENT", `${flag} ${out}: ${file} is a file, not a folder`, "choose a path whose parents are folders");
  let st: fs.Stats;
  try {
    st = fs.statSync(out);
  } catch (e) {
    // A file used as a folder on the way, as the system walks the path (`notes.txt/../model`: path.resolve
    // would drop the `..` and with it the file, and the folder's creation would fail after the work).
    if ((e as NodeJS.ErrnoException).code === "ENOTDIR") {
      const parts = out.split(path.sep);
      for (let i = 1; i < parts.length; i++) {
        const prefix = parts.slice(0, i).join(path.sep);
        if (!prefix) continue;
        let isDir = true;
        try {
          isDir = fs.statSync(prefix).isDirectory();
        } catch {
          break; // the first missing part: what lies past it cannot be a file
        }
        if (isDir) continue;
        // `notes.txt/`: the path itself names the file.
        throw parts.slice(i).every((p) => p === "") ? asOutput() : onTheWay(prefix);
      }
    }
    // Nothing there (or a dangling link, which the rename replaces): the nearest thing above it must be a
    // folder (a file there refused the run only when its folder was made, after the work).
    for (let dir = path.dirname(path.resolve(out)); ; dir = path.dirname(dir)) {
      let above: fs.Stats | null = null;
      try {
        above = fs.statSync(dir);
      } catch {
        // not there either: look further up
      }
      if (above) {
        if (!above.isDirectory()) throw onTheWay(dir);
        return;
      }
      if (path.dirname(dir) === dir) return;
    }
  }
  const special = specialFileKind(st);
  // A device or a pipe (--out /dev/null): not a file to move away, and a folder cannot be written into it.
  if (special) throw new MlaError("BAD_ARGUMENT", `${flag} ${out} is ${special}, not a folder`, `${flag} names a folder to write (it is made if missing): choose a folder path, e.g. ${flag} ./out`);
  if (!st.isDirectory()) throw asOutput();
}

/** Refuses an output folder that exists, unless `force` (then only a folder: refuseFileAsOutDir). */
export function refuseExisting(out: string, force: boolean): void {
  refuseFileAsOutDir(out);
  if (fs.existsSync(out) && !force) throw new MlaError("EXISTS", `output ${out} already exists`, "pass --force to replace it, or choose another --out");
  refuseForeignFolder(out, force, isEarlierModelOutput, "model this tool wrote (no mla_conversion.json; a config.json without synth's or a conversion's mark)");
}

/**
 * Whether the model folder `dir` (holding `entries`) is one this tool wrote: a conversion or export
 * (mla_conversion.json), or synth's checkpoint (its config.json's "_synth"). A pretrained model's
 * folder is none, so --force never replaces the original a conversion was made from.
 */
export function isEarlierModelOutput(dir: string, entries: readonly string[]): boolean {
  if (entries.includes("mla_conversion.json")) return true;
  if (!entries.includes("config.json")) return false;
  try {
    const config = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")) as Record<string, unknown> | null;
    return !!config && typeof config === "object" && ("_synth" in config || "mha2mla" in config);
  } catch {
    return false;
  }
}

/**
 * Refuses --force over a folder that holds files but none of `marks` (what an earlier output of this
 * kind has at its top level; or a test of the folder): --force replaces an earlier output, never a folder of other files, such
 * as the ~/models a user took for the parent of --out. An empty folder may be replaced.
 */
export function refuseForeignFolder(out: string, force: boolean, marks: readonly string[] | ((dir: string, entries: readonly string[]) => boolean), what: string, flag = "--out"): void {
  if (!force) return;
  let entries: string[];
  try {
    if (!fs.statSync(out).isDirectory()) return;
    entries = entriesBesideLock(out);
  } catch {
    return; // absent (or unreadable: the write that follows names it)
  }
  if (entries.length === 0 || (typeof marks === "function" ? marks(out, entries) : marks.some((m) => entries.includes(m)))) return;
  const held = entries.slice(0, 3).join(", ") + (entries.length > 3 ? `, … (${entries.length} entries)` : "");
  // Never "empty it" for a model folder: it is likely the original a conversion reads; and the new name
  // goes beside it, not inside it (a folder of other things, such as ~/models, takes the output inside).
  const model = entries.includes("config.json");
  const empty = model ? "" : ", or empty that folder first";
  const example = model ? `${path.resolve(out)}-NAME` : path.join(out, "NAME");
  throw new MlaError("EXISTS", `${flag} ${out} is a folder that holds no ${what}: it holds ${held}, and --force replaces only an earlier output`, `choose a new folder's name for ${flag} (e.g. ${example})${empty}`);
}

/** Written by versions before the owner's pid went into the folder's name; still read when sweeping. */
const LEGACY_OWNER_FILE = ".mha2mla-owner";

function tmpPrefix(out: string): string {
  return "." + path.basename(out) + ".tmp-";
}

/**
 * The pid that owns a temporary folder: from its name (`.NAME.tmp-<pid>-XXXXXX`), which exists the
 * moment the folder does, so a run killed between creating the folder and stamping it cannot leave
 * one that looks owned (an empty owner file once read as pid 0, which `kill(0, 0)` calls alive).
 */
function ownerOf(dir: string, suffix: string): number {
  const named = /^(\d+)-/.exec(suffix);
  if (named) return Number(named[1]);
  const legacy = path.join(dir, LEGACY_OWNER_FILE);
  return fs.existsSync(legacy) ? Number(fs.readFileSync(legacy, "utf8").trim() || NaN) : NaN;
}

/**
 * Removes the temporary folders in `parent` named `prefix<pid>-XXXXXX` (or, from earlier versions,
 * `prefix` and a legacy owner file) whose owner process is gone: left by a run killed outright
 * (SIGKILL, power loss).
 */
export function sweepStaleTemps(parent: string, prefix: string): void {
  if (!fs.existsSync(parent)) return;
  for (const name of fs.readdirSync(parent)) {
    if (!name.startsWith(prefix)) continue;
    const dir = path.join(parent, name);
    const owner = ownerOf(dir, name.slice(prefix.length));
    // A pid of ours on a folder this process did not make is a dead run's whose pid was reused.
    const owned = live.has(dir) || (Number.isInteger(owner) && owner > 0 && owner !== process.pid && processAlive(owner));
    if (!owned) fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The process's umask, read once (reading it sets it back, so not from several threads at once). */
let umask: number | undefined;
/** The mode a file (0o666) or folder (0o777) made with this process's umask has. */
export function defaultMode(base: 0o666 | 0o777): number {
  umask ??= process.umask();
  return base & ~umask;
}

/**
 * Creates `parent/prefix<pid>-XXXXXX`: owned by this process from the moment it exists
 * (sweepStaleTemps). mkdtemp makes it 0700, which it would keep as the output: a model other users
 * or a serving container cannot read. It gets the mode mkdir would give.
 */
export function makeOwnedTemp(parent: string, prefix: string): string {
  const dir = fs.mkdtempSync(path.join(parent, `${prefix}${process.pid}-`));
  fs.chmodSync(dir, defaultMode(0o777));
  return dir;
}

/** Copies a file with the mode a new file gets, not the source's (a read-only tokenizer copy could not be edited). */
export function copyFileFresh(src: string, dst: string): void {
  fs.copyFileSync(src, dst);
  fs.chmodSync(dst, defaultMode(0o666));
}

/** Removes the hidden `.NAME.tmp-*` siblings of `out` whose owner process is gone. */
export function sweepStale(out: string): void {
  sweepStaleTemps(path.dirname(path.resolve(out)), tmpPrefix(out));
}

/**
 * Refuses an `out` that beginOutDir could not create because the nearest existing folder above it is
 * not writable, in beginOutDir's words: checked with the other --out refusals, before the work (a
 * conversion calibrated and factored first; a dry run approved it).
 */
export function requireWritableParent(out: string): void {
  // A file there is refused by name elsewhere.
  requireWritableAncestor(out, `cannot create a folder beside ${out}`, (e) => ioError("cannot create a folder beside", out, e));
}

/**
 * Creates the hidden temporary sibling folder of `out` (owned by this process) and returns its path.
 * The caller has already refused an `out` over its inputs or the working folder (refuseOutOverInputs;
 * checkOutDir in the converters), before its work: checked here too, it ran twice per command.
 */
export function beginOutDir(out: string, force: boolean): string {
  refuseExisting(out, force);
  const parent = path.dirname(path.resolve(out));
  try {
    makeDirs(parent, "the output's folder");
    sweepStale(out);
    const tmp = makeOwnedTemp(parent, tmpPrefix(out));
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

/**
 * Writes a small file atomically (temp file + rename). A device or a pipe there (`--json /dev/null`,
 * /dev/stdout, a FIFO) is written in place: a rename would replace it with a plain file. A link to a
 * file replaces the file it leads to, beside it, and stays a link: the checks before (an earlier result,
 * an earlier report) looked at that file, and the rename replaced the link itself (`--json /dev/stdout
 * > out.json` run as root left /dev/stdout a plain file).
 */
export function writeFileAtomic(file: string, data: string | Uint8Array): void {
  try {
    if (fs.lstatSync(file).isSymbolicLink()) file = fs.realpathSync(file);
  } catch {
    // absent, a dangling link or a link loop: written (or named) as before
  }
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(file, { throwIfNoEntry: false });
  } catch {
    st = undefined; // a link loop: the write below names it
  }
  if (st && !st.isFile() && !st.isDirectory()) {
    try {
      fs.writeFileSync(file, data);
      return;
    } catch (e) {
      throw ioError("cannot write", file, e);
    }
  }
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw ioError("cannot write", file, e);
  }
}
