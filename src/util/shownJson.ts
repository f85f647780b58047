/**
 * A value from a user's file or request as a refusal shows it: JSON cut to SHOWN_CHARS, but a number
 * as itself. JSON.parse reads an overflowing literal (1e400) as Infinity, which JSON.stringify writes
 * as null: "max_tokens null is not …" named another value than the one sent. A value nested deeper
 * than JSON.stringify's stack (JSON.parse takes [[[…]]] 5,000 deep) is named by its kind.
 */

/** Characters of a refused value a message shows (a 4 MB string sent as max_tokens is not echoed whole). */
const SHOWN_CHARS = 60;

export function shownJson(v: unknown): string {
  if (typeof v === "number") return String(v);
  let s: string | undefined;
  try {
    s = JSON.stringify(v);
  } catch {
    return `${Array.isArray(v) ? "a list" : "an object"} nested too deeply to show`;
  }
  if (s === undefined) return String(v);
  return s.length > SHOWN_CHARS ? `${s.slice(0, SHOWN_CHARS)}…` : s;
}
