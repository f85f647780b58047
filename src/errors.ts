/**
 * The one error type of the library. `code` is stable (tests and scripts match on it); the message
 * names the culprit and its value, says what is accepted, and ends with a `hint:`.
 */
export type MlaErrorCode =
  | "BAD_ARGUMENT"
  | "NOT_FOUND"
  | "EXISTS"
  | "BAD_SAFETENSORS"
  | "BAD_CHECKPOINT"
  | "BAD_CONFIG"
  | "UNSUPPORTED"
  | "BAD_TOKENIZER"
  | "BAD_TEXT"
  | "IO"
  | "OUT_OF_MEMORY"
  | "INTERRUPTED";

export class MlaError extends Error {
  readonly code: MlaErrorCode;
  constructor(code: MlaErrorCode, message: string, hint?: string, options?: { cause?: unknown }) {
    super(hint ? `${message}\n  hint: ${hint}` : message, options);
    this.name = "MlaError";
    this.code = code;
  }
}

export function isMlaError(e: unknown): e is MlaError {
  return e instanceof MlaError;
}

/** What a file-system error code means, in words (a folder where a file goes read "EISDIR: illegal operation on a directory, read"). */
const IO_WHY: Partial<Record<string, string>> = {
  ENOENT: "no such file or folder",
  EACCES: "permission denied",
  ENOSPC: "no space left on the device",
  EISDIR: "it is a folder, not a file",
  ENOTDIR: "a part of the path is a file, not a folder",
};

/**
 * Wraps a Node file-system error into an MlaError naming the file and the operation. An MlaError
 * (a reader that refused the file's contents) already names the file and says what to do: it is kept.
 * `hintTail` follows the hint ("nothing was changed").
 */
export function ioError(op: string, path: string, cause: unknown, hintTail?: string): MlaError {
  if (isMlaError(cause)) return cause;
  const err = cause as NodeJS.ErrnoException;
  const why = (err?.code !== undefined ? IO_WHY[err.code] : undefined) ?? String(err?.message ?? cause);
  const code = err?.code === "ENOENT" ? "NOT_FOUND" : "IO";
  const hint = err?.code === "ENOSPC" ? "free disk space or choose another --out" : "check the path and its permissions";
  return new MlaError(code, `${op} ${path}: ${why}`, hintTail ? `${hint}; ${hintTail}` : hint);
}

/** "--a", "--a and --b", "--a, --b and --c". */
function listFlags(flags: readonly string[]): string {
  return flags.length < 2 ? (flags[0] ?? "") : `${flags.slice(0, -1).join(", ")} and ${flags[flags.length - 1]}`;
}

/**
 * Flags given where they do nothing because the flag they work with is missing. Refused rather than
 * warned about: a run that quietly drops a setting the user asked for is the costlier surprise, and the
 * fix (add the other flag, or drop these) is one edit. `needed` is the missing flag as the user would
 * write it, `why` what the flags do; `add` phrases the hint's remedy where "add NEEDED" reads badly.
 */
export function flagsWithout(flags: readonly string[], needed: string, why: string, add = `add ${needed}`): MlaError {
  const names = listFlags(flags);
  return new MlaError("BAD_ARGUMENT", `${names} ${flags.length > 1 ? "have" : "has"} no effect without ${needed} (${why})`, `${add}, or leave ${names} out`);
}

/**
 * The one policy for a setting that cannot take effect beside the others (an "inert" setting): the
 * setting the caller gave is refused, never warned about and dropped. Given means written on the
 * command line, or in a library call any value but undefined or null, the default's own value
 * included: an explicit setting that does nothing is most likely a slip in the command, and a run that
 * drops it leaves a script believing it applied. A default that does not apply (the default windows
 * without --calib, balancing under --svd split) is no one's mistake and passes silently; so a flag
 * that can be inert has no yargs default (the command line could not tell it given). convert, convert
 * --format deepseek, pipeline, fine-tuning's options, eval and generate check through here;
 * `settings` are [flag as written, value], the rest is flagsWithout's.
 */
export function refuseInert(settings: readonly (readonly [flag: string, value: unknown])[], needed: string, why: string, add?: string): void {
  const given = settings.filter(([, v]) => v !== undefined && v !== null).map(([flag]) => flag);
  if (given.length) throw flagsWithout(given, needed, why, add);
}

/** A boolean flag as the user wrote it: `--NAME` for true, `--no-NAME` for false. */
export function booleanFlag(name: string, value: boolean | undefined): string {
  return value === false ? `--no-${name}` : `--${name}`;
}
