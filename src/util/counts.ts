import { MlaError } from "../errors.js";

/** Refuses a count option that is not a whole number ≥ 1; undefined (left out) means all of it. */
export function requireCount(flag: string, v: number | undefined): void {
  if (v !== undefined && !(Number.isInteger(v) && v > 0)) throw new MlaError("BAD_ARGUMENT", `${flag} ${v} is not a positive count`, `pass a whole number ≥ 1, or leave ${flag} out for all of it`);
}
