/**
 * Where a native library is loaded from: the file its environment variable names, else the one
 * `npm run build:native` built. The built one may well be missing or unloadable (no compiler, no CUDA
 * stack), and the caller then falls back to another backend. A file the user named is one they mean
 * to run with: failing to load it is an error, not a fallback they would notice only by the device line.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { MlaError, type MlaErrorCode } from "../../errors.js";
import { packageRoot } from "../../io/modelDir.js";

export interface LibraryFile {
  /** The file to load (a named one resolved from the working folder, as a check that it exists is). */
  path: string;
  /** The variable that named it, with its value as given; null for the built library. */
  named: { variable: string; value: string } | null;
  /** The library `npm run build:native` writes, which an unset variable falls back to. */
  built: string;
}

/** The library file for `variable` (unset or empty: the built `builtName`). */
export function libraryFile(variable: string, builtName: string, env: Readonly<Record<string, string | undefined>> = process.env): LibraryFile {
  const built = path.join(packageRoot(), "build", "native", builtName);
  const value = env[variable];
  // dlopen searches the library path for a name without a slash: resolved, it loads the file that was checked.
  return value ? { path: path.resolve(value), named: { variable, value }, built } : { path: built, named: null, built };
}

function refuseNamed(lib: LibraryFile, code: MlaErrorCode, reason: string): void {
  if (!lib.named) return;
  const { variable, value } = lib.named;
  throw new MlaError(code, `${variable}=${value}: ${reason}`, `point ${variable} at a library built by \`npm run build:native\`, or unset it to use the built one (${lib.built})`);
}

/** Why a missing library cannot be used (`buildNote`: how the built one comes to exist); an error when the user named it. */
export function missingLibrary(lib: LibraryFile, buildNote: string): string {
  refuseNamed(lib, "NOT_FOUND", "no such file");
  return `${lib.path} does not exist (${buildNote})`;
}

/** sha256 (first 16 hex digits) of native/include/mla.h, the C interface this code calls; null where the header is not there to read. */
export function interfaceHash(): string | null {
  try {
    return crypto.createHash("sha256").update(fs.readFileSync(path.join(packageRoot(), "native", "include", "mla.h"))).digest("hex").slice(0, 16);
  } catch {
    return null;
  }
}

/**
 * Why the built library cannot be used although it exists: `npm run build:native` records the C
 * interface it built against (`abi` in LIBRARY.json), and a library left from an older checkout would
 * be called with the arguments of another one (an argument added at the end is silently ignored: an
 * optimizer step without its gradient scale). Null where it matches, or where there is nothing to
 * check against (no record, no header; a library the user named is theirs to vouch for).
 */
export function staleLibrary(lib: LibraryFile, current: string | null = interfaceHash()): string | null {
  if (lib.named || current === null) return null;
  let abi: unknown;
  try {
    abi = (JSON.parse(fs.readFileSync(`${lib.path}.json`, "utf8")) as { abi?: unknown }).abi;
  } catch {
    return null;
  }
  return abi === current ? null : `${lib.path} was built against another native/include/mla.h than this code calls (an older checkout): run \`npm run build:native\``;
}

/** Why a library that would not load cannot be used (`reason`: the loader's); an error when the user named it. */
export function unloadableLibrary(lib: LibraryFile, reason: string): string {
  const why = `${lib.path} cannot be loaded: ${reason}`;
  refuseNamed(lib, "UNSUPPORTED", why);
  return why;
}
