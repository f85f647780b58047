/**
 * The shape check of an options object at a library entry (convert, evaluate, finetune, …). The types
 * hold for TypeScript callers; a JavaScript caller can pass a string where a number goes, an option
 * with a typo, or no object at all, which would otherwise surface as a TypeError deep inside or, worse,
 * as a default silently used. The tables are typed from the options' interfaces (OptionKinds), so an
 * option added to an interface without its kind, or with the wrong one, does not compile.
 */
import { MlaError } from "../errors.js";
import { nearestName } from "./nearest.js";

type Kind<T> = T extends readonly string[]
  ? "string[]"
  : T extends readonly number[]
    ? "number[]"
    : T extends number
      ? "number"
      : T extends string
        ? "string"
        : T extends boolean
          ? "boolean"
          : T extends (...args: never[]) => unknown
            ? "function"
            : "object";

/** For each option of T, the JavaScript type its value must have. */
export type OptionKinds<T> = { readonly [K in keyof T]-?: Kind<NonNullable<T[K]>> };

type AnyKind = "number" | "string" | "boolean" | "function" | "object" | "string[]" | "number[]";

const EXPECTED: Record<AnyKind, string> = {
  number: "a number",
  string: "a string",
  boolean: "true or false",
  function: "a function",
  object: "an object",
  "string[]": "an array of strings",
  "number[]": "an array of numbers",
};

function hasKind(v: unknown, kind: AnyKind): boolean {
  switch (kind) {
    case "string[]":
    case "number[]":
      return Array.isArray(v) && v.every((x) => typeof x === kind.slice(0, -2));
    case "object":
      return typeof v === "object" && !Array.isArray(v);
    default:
      return typeof v === kind;
  }
}

/**
 * The object options every entry names alike, checked for what they are used as: any object passes
 * "object", and a logger without warn() or a progress sink without write() failed deep inside, after
 * the work had started (an OpenAI-style logitBias object failed as "not iterable").
 */
const SHAPES: Record<string, [(v: object) => boolean, string]> = {
  logger: [(v) => typeof (v as { info?: unknown }).info === "function" && typeof (v as { warn?: unknown }).warn === "function", "a logger with info(message) and warn(message)"],
  progress: [(v) => typeof (v as { write?: unknown }).write === "function", "a stream with write(text), e.g. process.stderr (or null for none)"],
  logitBias: [(v) => v instanceof Map, "a Map from token id to the bias added to its logit"],
  // Any object passed "object": a plain {} never aborts, so Ctrl-C from a script silently did nothing.
  signal: [(v) => v instanceof AbortSignal, "an AbortSignal, e.g. new AbortController().signal"],
  // A device name ("cpu") where loadModel's backend goes: selectBackend makes one from it.
  backend: [(v) => typeof (v as { name?: unknown }).name === "string" && typeof (v as { linear?: unknown }).linear === "function", 'a backend, e.g. selectBackend("auto")'],
  collective: [(v) => Number.isInteger((v as { rank?: unknown }).rank) && Number.isInteger((v as { world?: unknown }).world) && typeof (v as { allReduceSum?: unknown }).allReduceSum === "function", "a Collective (rank, world, allReduceSum, allReduceHost), e.g. from ncclCollective"],
};

/** A value as a refusal names it: its text and its type ("\"4\" (a string)", "42 (a number)", "an object"). */
export function describe(v: unknown): string {
  if (v === undefined || v === null) return String(v);
  if (typeof v === "string") return `${JSON.stringify(v)} (a string)`;
  if (Array.isArray(v)) return `[${v.map((x) => (typeof x === "string" ? JSON.stringify(x) : String(x))).join(", ")}] (an array)`;
  if (typeof v === "object") return "an object";
  if (typeof v === "function") return "a function";
  return `${String(v)} (a ${typeof v})`;
}

/**
 * Refuses `o` unless it is an object whose every set option (null and undefined count as unset) has
 * the kind `kinds` gives it, with no option `kinds` does not know, and with every `required` one set.
 * `where` names the options in messages ("convert()", "pipeline()'s finetune"). Only the shape: each
 * option's values are checked where it is used.
 */
export function checkOptionTypes<T>(where: string, o: unknown, kinds: OptionKinds<T>, required: readonly (keyof T & string)[] = []): asserts o is T {
  const table = kinds as unknown as Record<string, AnyKind>;
  if (typeof o !== "object" || o === null || Array.isArray(o))
    throw new MlaError("BAD_ARGUMENT", `${where} takes an options object, got ${describe(o)}`, required.length ? `pass at least { ${required.map((k) => `${k}: …`).join(", ")} }` : "pass {} for the defaults");
  for (const [key, v] of Object.entries(o)) {
    if (v === undefined) continue;
    const kind = table[key];
    if (kind === undefined) {
      // Its case or dashes ("rope_pairs"), else a typo of it ("capacty", "rank" for ranks).
      const flat = (k: string) => k.toLowerCase().replace(/[-_]/g, "");
      const near = Object.keys(table).find((k) => flat(k) === flat(key)) ?? nearestName(key, Object.keys(table));
      throw new MlaError("BAD_ARGUMENT", `${where} has no option ${JSON.stringify(key)}`, near ? `did you mean ${near}?` : `its options are ${Object.keys(table).join(", ")}`);
    }
    const shape = SHAPES[key];
    // An option of a known shape is named by it ("a logger with info(…)"), not as "an object".
    const expected = kind === "object" && shape ? shape[1] : EXPECTED[kind];
    if (v !== null && !hasKind(v, kind)) throw new MlaError("BAD_ARGUMENT", `${where}: option ${key} is ${describe(v)}, not ${expected}`, `pass ${key} as ${expected}`);
    if (v !== null && kind === "object" && shape && !shape[0](v)) throw new MlaError("BAD_ARGUMENT", `${where}: option ${key} is not ${shape[1]}`, `pass ${key} as ${shape[1]}`);
  }
  for (const key of required) {
    const v = (o as Record<string, unknown>)[key];
    if (v === undefined || v === null) throw new MlaError("BAD_ARGUMENT", `${where} needs the option ${key}`, `pass ${key} as ${EXPECTED[table[key]!]}`);
  }
}
