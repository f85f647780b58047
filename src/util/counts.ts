import { MlaError } from "../errors.js";

/** Refuses a count option that is not a whole number ≥ 1; undefined (left out) means all of it. */
export function requireCount(flag: string, v: number | undefined): void {
  if (v !== undefined && !(Number.isInteger(v) && v > 0)) throw new MlaError("BAD_ARGUMENT", `${flag} ${v} is not a positive count`, `pass a whole number ≥ 1, or leave ${flag} out for all of it`);
}

/** "1 window", "3 windows": n and the noun, plural unless n is 1 (`plural` for nouns not made with an s). */
export function countOf(n: number, noun: string, plural = `${noun}s`): string {
  return `${n} ${n === 1 ? noun : plural}`;
}
