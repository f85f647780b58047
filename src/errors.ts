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
  constructor(code: MlaErrorCode, message: string, hint?: string) {
    super(hint ? `${message}\n  hint: ${hint}` : message);
    this.name = "MlaError";
    this.code = code;
  }
}

export function isMlaError(e: unknown): e is MlaError {
  return e instanceof MlaError;
}

/**
 * Wraps a Node file-system error into an MlaError naming the file and the operation. An MlaError
 * (a reader that refused the file's contents) already names the file and says what to do: it is kept.
 */
export function ioError(op: string, path: string, cause: unknown): MlaError {
  if (isMlaError(cause)) return cause;
  const err = cause as NodeJS.ErrnoException;
  const why = err?.code === "ENOENT" ? "no such file or folder" : err?.code === "EACCES" ? "permission denied" : err?.code === "ENOSPC" ? "no space left on the device" : String(err?.message ?? cause);
  const code = err?.code === "ENOENT" ? "NOT_FOUND" : "IO";
  return new MlaError(code, `${op} ${path}: ${why}`, err?.code === "ENOSPC" ? "free disk space or choose another --out" : "check the path and its permissions");
}
