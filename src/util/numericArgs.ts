/**
 * Checks of the low-level exports' numeric arguments (sizes, counts, typed arrays), for JavaScript
 * callers: a NaN or a string size made an empty or NaN-filled result, a negative one a RangeError
 * from a typed array, a Float32Array where float64 goes was read as other numbers. Each check is
 * O(1) and allocates nothing, so the entries that call them stay as cheap as before.
 */
import { MlaError } from "../errors.js";
import { describe } from "./optionTypes.js";

/** `v` in words, short for arrays: a weight matrix's thousands of numbers are not printed. */
export function shown(v: unknown): string {
  if (ArrayBuffer.isView(v) && !(v instanceof DataView)) return `a ${v.constructor.name} of ${(v as unknown as ArrayLike<unknown>).length}`;
  if (Array.isArray(v) && v.length > 8) return `an array of ${v.length}`;
  return describe(v);
}

/** Refuses `v` unless it is a whole number ≥ `min`; `what` names it ("kvHeads"), `hint` says what to pass. */
export function checkWholeArg(where: string, what: string, v: unknown, min: number, hint: string): void {
  if (typeof v === "number" && Number.isInteger(v) && v >= min) return;
  throw new MlaError("BAD_ARGUMENT", `${where}: ${what} is ${shown(v)}, not a whole number ≥ ${min}`, hint);
}

/** Refuses `v` unless it is an even whole number ≥ 2, as a head dimension is (its halves are the rotary pairs); `hint` says what to pass. */
export function checkHeadDimArg(where: string, what: string, v: unknown, hint: string): void {
  checkWholeArg(where, what, v, 2, hint);
  if ((v as number) % 2 !== 0) throw new MlaError("BAD_ARGUMENT", `${where}: ${what} ${v} is odd`, `${hint}: its halves are the rotary pairs`);
}

type FloatType = Float32ArrayConstructor | Float64ArrayConstructor;

/** Refuses `v` unless it is a `type` of exactly `length` numbers (its shape's product). */
export function checkFloatsArg(where: string, what: string, v: unknown, type: FloatType, length: number, hint: string): void {
  if (v instanceof type && v.length === length) return;
  throw new MlaError("BAD_ARGUMENT", `${where}: ${what} is ${shown(v)}, not a ${type.name} of ${length}`, hint);
}

/** Refuses `v` unless it is an object (not null, not an array); `what` names it, `hint` says what goes there. */
export function checkObjectArg(where: string, what: string, v: unknown, hint: string): asserts v is Record<string, unknown> {
  if (typeof v === "object" && v !== null && !Array.isArray(v)) return;
  throw new MlaError("BAD_ARGUMENT", `${where}: ${what} ${what.endsWith("s") ? "are" : "is"} ${shown(v)}, not an object`, hint);
}

/** Refuses `v` unless it is a compute backend (selectBackend's), known by its methods: a test's stand-in passes. */
export function checkBackendArg(where: string, v: unknown): void {
  const b = v as Record<string, unknown> | null;
  if (typeof v === "object" && b !== null && typeof b["upload"] === "function" && typeof b["download"] === "function") return;
  throw new MlaError("BAD_ARGUMENT", `${where}: the backend is ${shown(v)}, not a compute backend`, "pass selectBackend(\"auto\"), referenceBackend, or a loaded model's model.backend");
}
