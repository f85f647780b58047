/**
 * Checks of the command line that yargs does not make: a flag with no value or an empty one, a
 * one-value flag given twice, a number that is not one, a flag no command declares. Each takes the
 * command line as typed (`args`) beside what yargs parsed, since yargs hides what was typed: a bare
 * numeric flag reads as its default (`--batch` trained with batch 16) or as absent, `--rank ""` as 0.
 */
import { MlaError } from "../errors.js";

/** What yargs knows of the options the command being parsed declares (getOptions is missing from its types). */
export interface DeclaredOptions {
  array: string[];
  boolean: string[];
  number: string[];
  string: string[];
  count: string[];
  choices: Record<string, unknown[]>;
  narg: Record<string, number>;
  default: Record<string, unknown>;
  key: Record<string, unknown>;
  alias: Record<string, string[]>;
}
export type WithOptions = { getOptions(): DeclaredOptions };

export const camel = (name: string) => name.replace(/-+([^-])/g, (_m, c: string) => c.toUpperCase());

/** A word yargs-parser takes as a flag's value: one that does not start with "-", or a negative number (its own test). */
const NEGATIVE = /^-([0-9]+(\.[0-9]+)?|\.[0-9]+)$/;
const isValue = (word: string) => !word.startsWith("-") || NEGATIVE.test(word);

/** Where the flags end: at `--`, after which every word is a positional. */
const flagsEnd = (args: readonly string[]) => (args.includes("--") ? args.indexOf("--") : args.length);

/**
 * `--json -` (stdout) as `--json=-`: yargs takes no word that starts with "-" as a value, so it read
 * the "-" as a stray positional and strict mode refused it ("Unknown argument: -"). Only --json writes
 * to stdout; no other flag takes "-" (checkGivenValues says so). A free text starting with a dash is
 * joined to its flag the same way (FREE_TEXT).
 */
export function joinStdoutDash(args: readonly string[]): string[] {
  const out: string[] = [];
  const end = flagsEnd(args);
  for (let i = 0; i < args.length; i++) {
    const [flag, next] = [args[i]!, args[i + 1]];
    if (i + 1 < end && next !== undefined && ((flag === "--json" && next === "-") || (FREE_TEXT.has(flag) && dashText(next)))) {
      out.push(`${flag}=${next}`);
      i++;
    } else out.push(flag);
  }
  return out;
}

/**
 * Flags whose value is free text, which may start with "-": `--prompt "- item one"` read as the short
 * flags d, a, s, h… ("Unknown arguments"). Taken as the value when it cannot be a flag: one dash, then
 * more than one character or a space (this project's short flags are one letter).
 */
const FREE_TEXT = new Set(["--prompt", "--system"]);
const dashText = (word: string) => /^-[^-]/.test(word) && (word.length > 2 || /\s/.test(word));

/** Every value `--key` was given on the command line, as typed (`--key=v` or `--key v`). */
function typedAll(args: readonly string[], key: string): string[] {
  return args.flatMap((a, i) => (a.startsWith(`--${key}=`) ? [a.slice(key.length + 3)] : a === `--${key}` && i + 1 < args.length && !args[i + 1]!.startsWith("--") ? [args[i + 1]!] : []));
}

/** The text the user typed for --key (yargs turns a non-number into NaN before the handlers see it); null when none. */
export function typed(args: readonly string[], key: string): string | null {
  return typedAll(args, key)[0] ?? null;
}

/** The flags on the command line (before `--`) that `o` does not declare, as yargs's strict mode names them. */
export function unknownFlags(args: readonly string[], o: DeclaredOptions): string[] {
  const known = new Set<string>();
  for (const k of [...Object.keys(o.key), ...Object.values(o.alias).flat()]) known.add(k).add(camel(k));
  const isKnown = (name: string): boolean => known.has(name) || known.has(camel(name)) || (name.startsWith("no-") && isKnown(name.slice(3)));
  const names = args.slice(0, flagsEnd(args)).flatMap((a) => (a.startsWith("--") ? [a.slice(2).split("=")[0]!] : /^-[^-\d.]/.test(a) ? [...a.slice(1).split("=")[0]!] : []));
  return [...new Set(names.filter((n) => !isKnown(n)))];
}

/** Flags whose bare form means something: `--json` with no file prints the JSON to stdout. */
const BARE_OK = new Set(["json"]);
/** Flags whose value is a text where an empty one is asked for: `--prompt ""` continues BOS alone, `--system ""` is an empty system message. */
const EMPTY_OK = new Set(["prompt", "system"]);

/** What flag `key` takes, for the message that says it was not given (`empty`: given as ""): "a number", "one of: a, b", … */
function takes(key: string, o: DeclaredOptions, empty = false): string {
  const choices = o.choices[key];
  if (choices?.length) return `one of: ${choices.join(", ")}`;
  if (o.number.includes(key)) return "a number";
  if (key === "json") return "a file path, or - for stdout";
  if (empty) return "a non-empty value";
  if (o.array.includes(key) && o.narg[key] !== 1) return "one or more words after it";
  return "the word after it";
}

/** The placeholder of a hint's "write --flag X": N, a|b|c, VALUE. */
function placeholder(key: string, o: DeclaredOptions): string {
  const choices = o.choices[key];
  if (choices?.length) return choices.join("|");
  return o.number.includes(key) ? "N" : "VALUE";
}

/** Each time the declared option `key` is given before `--`: the name as typed and the words yargs takes as its values. */
function usesOf(args: readonly string[], key: string, o: DeclaredOptions): { name: string; values: string[]; next: string | undefined }[] {
  const names = new Set([key, camel(key), ...(o.alias[key] ?? [])]);
  const many = o.array.includes(key) && o.narg[key] !== 1;
  const end = flagsEnd(args);
  const uses: { name: string; values: string[]; next: string | undefined }[] = [];
  for (let i = 0; i < end; i++) {
    if (!args[i]!.startsWith("--")) continue;
    const eq = args[i]!.indexOf("=");
    const name = eq < 0 ? args[i]!.slice(2) : args[i]!.slice(2, eq);
    if (!names.has(name)) continue;
    if (eq >= 0) {
      uses.push({ name, values: [args[i]!.slice(eq + 1)], next: undefined });
      continue;
    }
    const values: string[] = [];
    for (let j = i + 1; j < end && isValue(args[j]!) && (many || values.length === 0); j++) values.push(args[j]!);
    uses.push({ name, values, next: i + 1 < end ? args[i + 1] : undefined });
  }
  return uses;
}

/**
 * A flag that takes a value (a number, a choice, a text or file) given with none, or with an empty
 * one, is refused naming it and what it takes: yargs read a bare one as its default or as absent
 * (`finetune --batch` trained with batch 16, `--device` ran on auto) and an empty number as 0
 * (`--rank ""` was reported as "--rank 0"), so the run went on with something the user never wrote.
 * A text flag alone read "" (`--out` the working folder). Exceptions: BARE_OK, EMPTY_OK.
 */
export function checkGivenValues(args: readonly string[], o: DeclaredOptions, seeHelp: string): void {
  for (const key of Object.keys(o.key)) {
    if (o.boolean.includes(key) || o.count.includes(key)) continue;
    for (const use of usesOf(args, key, o)) {
      const flag = `--${use.name}`;
      if (use.values.length === 0 && !BARE_OK.has(key)) {
        if (use.next === "-") throw new MlaError("BAD_ARGUMENT", `${flag} was given "-", which stands for standard output (it takes ${takes(key, o)})`, `only --json writes to standard output; write ${flag} ${placeholder(key, o)} (./- for a file named -) (${seeHelp})`);
        throw new MlaError("BAD_ARGUMENT", `${flag} was given without a value (it takes ${takes(key, o)})`, `write ${flag} ${placeholder(key, o)}${o.string.includes(key) ? " (quoted if it holds spaces)" : ""}, or drop ${flag}${o.default[key] !== undefined ? ` for its default (${String(o.default[key])})` : ""} (${seeHelp})`);
      }
      if (use.values.some((v) => v.trim() === "") && !EMPTY_OK.has(key))
        throw new MlaError(
          "BAD_ARGUMENT",
          `${flag} was given an empty value (it takes ${takes(key, o, true)})`,
          key === "json" ? `write --json FILE, or --json alone or --json - to print the JSON to stdout (${seeHelp})` : `write ${flag} ${placeholder(key, o)}, or drop ${flag}${o.default[key] !== undefined ? ` for its default (${String(o.default[key])})` : ""} (${seeHelp})`,
        );
    }
  }
}

/** A number as people write one: digits, an optional sign, an optional fraction (`64`, `-1`, `0.95`, `.5`). */
const DECIMAL = /^[+-]?(\d+(\.\d*)?|\.\d+)$/;
/** The same with a power of ten (`1e-3`, `2E-4`), the way learning rates and weight decays are written (the docs' `--lr 2e-4`). */
const SCIENTIFIC = /^[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?$/i;
/** The flags that take SCIENTIFIC: small real factors. Counts, sizes and ids take DECIMAL (and token counts a suffix). */
const SCIENTIFIC_FLAGS = new Set(["lr", "weight-decay"]);
/** A token count with a suffix (--tokens 20M, --eval-tokens 50k): the number and how many it counts. */
const COUNT = /^(\d+(?:\.\d+)?)([kMG])$/;
const takesCount = (key: string) => key.endsWith("tokens");
/** The hint for a count flag given something else: a reply's length is not written in millions. */
function countHint(key: string): string {
  if (key === "max-tokens") return "give --max-tokens a whole number of tokens to generate, e.g. 256";
  // The range depends on the model, which is not read yet: convert names it once the number parses.
  if (key === "rank") return "give --rank a whole number of latent dims per KV head, e.g. --rank 64 (the paper's for Llama-2-7B)";
  if (key === "rope-pairs") return "give --rope-pairs a whole number of rotary pairs kept per KV head, e.g. --rope-pairs 8 (0 keeps none)";
  return takesCount(key) ? `give --${key} a number, e.g. 20000000 or 20M (k, M and G count thousands, millions, billions)` : `give --${key} a number`;
}

/**
 * A numeric flag's value spelt otherwise than DECIMAL (SCIENTIFIC, COUNT where the flag takes them)
 * is refused naming the flag and the value: yargs reads `--rank 0x4` as 4, `--rank 1e2` as 100,
 * `--seed 0b11` as 3, `--rank Infinity` as Infinity (refused later by a range check that printed
 * "Infinity", not what was typed), so a slip ran with a number the user never wrote.
 */
function checkNumberSpelling(args: readonly string[], key: string, o: DeclaredOptions): void {
  for (const use of usesOf(args, key, o)) {
    for (const text of use.values) {
      if (text.trim() === "" || DECIMAL.test(text) || (SCIENTIFIC_FLAGS.has(key) && SCIENTIFIC.test(text)) || (takesCount(key) && COUNT.test(text))) continue;
      const n = Number(text);
      // Not a number at all (`--rank four`): checkFlagValues says so in its words.
      if (Number.isNaN(n)) continue;
      const shown = /\s/.test(text) ? JSON.stringify(text) : text;
      const spelt = Number.isFinite(n) ? ` (it would be read as ${n})` : "";
      const forms = `${takesCount(key) ? ", or with k, M or G for thousands, millions, billions (20M)" : ""}${SCIENTIFIC_FLAGS.has(key) ? ", or with a power of ten (1e-3)" : ""}`;
      throw new MlaError("BAD_ARGUMENT", `--${use.name} ${shown} is not a decimal number${spelt}`, `write --${use.name} in decimal digits${Number.isFinite(n) && Math.abs(n) <= Number.MAX_SAFE_INTEGER && DECIMAL.test(String(n)) ? `, e.g. --${use.name} ${n}` : ""}${forms}`);
    }
  }
}

/**
 * Flags a command declares as one value must come once and, when numeric, be numbers written in
 * decimal (checkNumberSpelling): yargs would otherwise pass an array ("--rank 4 --rank 5" → "4,5"),
 * NaN or a number read from hex or an exponent on to the command, whose message then blames the
 * wrong thing. Token counts may be written 20M, 50k: those are read here into `argv`.
 */
export function checkFlagValues(args: readonly string[], argv: Record<string, unknown>, o: DeclaredOptions): void {
  const arrays = new Set(o.array);
  for (const key of Object.keys(o.key)) {
    const v = argv[key];
    // Counted on the command line: yargs may fold a repeated number into one value (--ctx 64 --ctx 1 → 65).
    const given = args.filter((a) => a === `--${key}` || a.startsWith(`--${key}=`)).length;
    if (!arrays.has(key) && (given > 1 || Array.isArray(v))) {
      // The values as typed: yargs's parse of them shows 2k as NaN, or folds repeated numbers into one.
      const values = typedAll(args, key);
      throw new MlaError("BAD_ARGUMENT", `--${key} was given ${Math.max(given, Array.isArray(v) ? v.length : 0)} times${values.length ? ` (${values.join(", ")})` : ""}`, `give --${key} once`);
    }
    if (o.number.includes(key)) checkNumberSpelling(args, key, o);
    // yargs reads any `--force=maybe` as false: a switch takes no value but true or false.
    if (o.boolean.includes(key))
      for (const a of args.filter((a) => a.startsWith(`--${key}=`) || a.startsWith(`--no-${key}=`))) {
        const value = a.slice(a.indexOf("=") + 1);
        if (value !== "true" && value !== "false") throw new MlaError("BAD_ARGUMENT", `${a.slice(0, a.indexOf("="))}=${value}: a switch is on or off, not ${JSON.stringify(value)}`, `write ${a.slice(0, a.indexOf("="))} alone to turn it on${a.startsWith("--no-") ? "" : `, or --no-${key} to turn it off`}`);
      }
    if (typeof v === "number" && Number.isNaN(v)) {
      const text = typed(args, key);
      // Token counts read as people write them: --tokens 20M, --eval-tokens 50k.
      const count = takesCount(key) && text !== null ? COUNT.exec(text) : null;
      if (count) {
        const n = Math.round(Number(count[1]) * { k: 1e3, M: 1e6, G: 1e9 }[count[2] as "k" | "M" | "G"]);
        argv[key] = n;
        argv[camel(key)] = n;
        continue;
      }
      throw new MlaError("BAD_ARGUMENT", text === null ? `--${key} needs a number` : `--${key} ${text} is not a number`, countHint(key));
    }
    // Past 2^53 a number no longer counts exactly (1e20 tokens ran with an ETA of 138888888888888h): no
    // flag of ours takes one, whole or not.
    if (typeof v === "number" && Math.abs(v) > Number.MAX_SAFE_INTEGER)
      throw new MlaError("BAD_ARGUMENT", `--${key} ${typed(args, key) ?? v} is beyond 2^53, past what a number counts exactly`, key === "seed" ? "give --seed a whole number below 2^32 (4294967296), e.g. --seed 0" : `give --${key} a number of at most 9007199254740991 (a realistic one is far smaller)`);
  }
}
