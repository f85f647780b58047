#!/usr/bin/env node
/** The `mha2mla` command: parses arguments and calls one library function per command. */
import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import { isMlaError, MlaError } from "../errors.js";
import { refuseOutOverInputs, type InputPath } from "../io/outGuard.js";
import { resolveModel } from "../io/modelDir.js";
import { abandonAll } from "../io/atomicDir.js";
import { inspectCommand } from "./inspect.js";
import { evalCommand } from "./eval.js";
import { synthCommand } from "./synth.js";
import { studyCommand } from "./study.js";
import { generateCommand } from "./generate.js";
import { serveCommand } from "./serve.js";
import { convertCommand } from "./convert.js";
import { exportCommand } from "./export.js";
import { finetuneCommand } from "./finetune.js";
import { reportCommand } from "./report.js";
import { pipelineCommand } from "./pipeline.js";
import { installSignalHandlers } from "./signals.js";
import { reportFiles } from "../eval/report/report.js";

const debug = process.argv.includes("--debug");
const COMMAND_MODULES = [inspectCommand, evalCommand, synthCommand, studyCommand, generateCommand, serveCommand, convertCommand, exportCommand, finetuneCommand, reportCommand, pipelineCommand];
/** The command names, for the hint under a refused command line. */
const COMMANDS = COMMAND_MODULES.map((c) => String(c.command).split(" ")[0]!);

function fail(e: unknown): never {
  abandonAll();
  if (isMlaError(e)) process.stderr.write(`error: ${e.message}\n`);
  else process.stderr.write(`error: internal error: ${(e as Error)?.message ?? String(e)}\n  hint: this is a bug; re-run with --debug and report the stack\n`);
  if (debug && e instanceof Error) process.stderr.write(`${e.stack}\n`);
  process.exit(1);
}

installSignalHandlers();
// A reader that stops early (`mha2mla inspect … | head`) closes stdout: nothing is left to say.
process.stdout.on("error", (e: NodeJS.ErrnoException) => {
  if (e.code === "EPIPE") process.exit(0);
  throw e;
});

/** The command line after `node main.js`. */
const ARGS = process.argv.slice(2);
/** The first word that is not a flag: the command as typed (maybe misspelt). */
const TYPED_COMMAND = ARGS.find((a) => !a.startsWith("-"));

/** The text the user typed for --key (yargs turns a non-number into NaN before the handlers see it); null when none. */
function typed(key: string): string | null {
  for (let i = 0; i < ARGS.length; i++) {
    if (ARGS[i]!.startsWith(`--${key}=`)) return ARGS[i]!.slice(key.length + 3);
    if (ARGS[i] === `--${key}` && i + 1 < ARGS.length && !ARGS[i + 1]!.startsWith("--")) return ARGS[i + 1]!;
  }
  return null;
}

/** What yargs knows of the options the command being parsed declares (getOptions is missing from its types). */
interface DeclaredOptions {
  array: string[];
  string: string[];
  key: Record<string, unknown>;
  alias: Record<string, string[]>;
}
type WithOptions = { getOptions(): DeclaredOptions };

const camel = (name: string) => name.replace(/-+([^-])/g, (_m, c: string) => c.toUpperCase());

/** The flags on the command line (before `--`) that `o` does not declare, as yargs's strict mode names them. */
function unknownFlags(o: DeclaredOptions): string[] {
  const known = new Set<string>();
  for (const k of [...Object.keys(o.key), ...Object.values(o.alias).flat()]) known.add(k).add(camel(k));
  const isKnown = (name: string): boolean => known.has(name) || known.has(camel(name)) || (name.startsWith("no-") && isKnown(name.slice(3)));
  const end = ARGS.includes("--") ? ARGS.indexOf("--") : ARGS.length;
  const names = ARGS.slice(0, end).flatMap((a) => (a.startsWith("--") ? [a.slice(2).split("=")[0]!] : /^-[^-\d.]/.test(a) ? [...a.slice(1).split("=")[0]!] : []));
  return [...new Set(names.filter((n) => !isKnown(n)))];
}

/**
 * yargs's message for a command line it refuses. It checks positionals and required options before
 * unknown flags, and an unknown flag takes the next word as its value, so `inspect --bogus MODEL`
 * would read "Not enough non-option arguments": an unknown flag is named first, as it is the mistake.
 */
function refusal(msg: string, y: WithOptions): string {
  const unknown = unknownFlags(y.getOptions());
  return unknown.length ? `Unknown argument${unknown.length > 1 ? "s" : ""}: ${unknown.join(", ")}` : msg;
}

/** Levenshtein distance, for "did you mean" (flag names are short). */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = row;
  }
  return prev[b.length]!;
}

/** Where the usage of the command typed is: "see mha2mla convert --help". */
const seeHelp = () => `see mha2mla ${TYPED_COMMAND && COMMANDS.includes(TYPED_COMMAND) ? `${TYPED_COMMAND} ` : ""}--help`;

/** The hint under a refused command line: the declared flag an unknown one was probably meant to be, else where the usage is. */
function refusalHint(msg: string, o: DeclaredOptions): string {
  const help = seeHelp();
  if (/^Did you mean /.test(msg)) return `${msg.replace(/^Did/, "did")} (${help})`;
  const guesses = unknownFlags(o).flatMap((u) => {
    const best = Object.keys(o.key)
      .filter((k) => k.length > 1)
      .map((k) => ({ k, d: editDistance(u, k) }))
      .sort((x, y) => x.d - y.d)[0];
    return best && best.d <= (u.length >= 4 ? 2 : 1) ? [`--${best.k} for --${u}`] : [];
  });
  if (guesses.length) return `did you mean ${guesses.join(", ")}? (${help})`;
  const missing = /^Missing required arguments?: (.+)$/m.exec(msg);
  if (missing) return `add ${missing[1]!.split(", ").map((f) => `--${f} …`).join(" ")} (${help})`;
  return help;
}

/** Text options whose flag alone means something: `--json` with no file prints the JSON to stdout. */
const BARE_OK = new Set(["json"]);

/**
 * A text option given with no value (`generate --prompt` at the end of the line, or before another
 * flag) is refused: yargs reads it as "" (`--calib` then names no file, `--out` the working folder) or,
 * for a repeatable one, keeps the default (`--prompt` continued "Once upon a time"), so the run went
 * on with something the user never wrote. An empty value written out (`--prompt=`) is kept: it was asked for.
 */
function checkBareStrings(o: DeclaredOptions): void {
  const end = ARGS.includes("--") ? ARGS.indexOf("--") : ARGS.length;
  for (const key of new Set(o.string)) {
    if (BARE_OK.has(key) || !(key in o.key)) continue;
    const names = new Set([key, camel(key), ...(o.alias[key] ?? [])]);
    for (let i = 0; i < end; i++) {
      const name = ARGS[i]!.startsWith("--") ? ARGS[i]!.slice(2) : null;
      if (name === null || !names.has(name)) continue;
      // What yargs takes as the value: the next word unless it reads as a flag (a negative number does not).
      const next = ARGS[i + 1];
      if (next === undefined || i + 1 >= end || /^-(?!\d|\.\d)/.test(next))
        throw new MlaError("BAD_ARGUMENT", `--${name} was given without a value (it takes the word after it)`, `write --${name} VALUE (quoted if it holds spaces), or drop --${name} (${seeHelp()})`);
    }
  }
}

/**
 * Flags a command declares as one value must come once and, when numeric, be numbers: yargs would
 * otherwise pass an array ("--rank 4 --rank 5" → "4,5") or NaN on to the command, whose message then
 * blames the wrong thing.
 */
function checkFlagValues(argv: Record<string, unknown>, y: WithOptions): void {
  const o = y.getOptions();
  checkBareStrings(o);
  const arrays = new Set(o.array);
  for (const key of Object.keys(o.key)) {
    const v = argv[key];
    // Counted on the command line: yargs may fold a repeated number into one value (--ctx 64 --ctx 1 → 65).
    const given = ARGS.filter((a) => a === `--${key}` || a.startsWith(`--${key}=`)).length;
    if (!arrays.has(key) && (given > 1 || Array.isArray(v))) throw new MlaError("BAD_ARGUMENT", `--${key} was given ${Math.max(given, Array.isArray(v) ? v.length : 0)} times${Array.isArray(v) ? ` (${v.join(", ")})` : ""}`, `give --${key} once`);
    if (typeof v === "number" && Number.isNaN(v)) {
      const text = typed(key);
      // Token counts read as people write them: --tokens 20M, --eval-tokens 50k.
      const count = key.endsWith("tokens") && text !== null ? /^(\d+(?:\.\d+)?)([kMG])$/.exec(text) : null;
      if (count) {
        const n = Math.round(Number(count[1]) * { k: 1e3, M: 1e6, G: 1e9 }[count[2] as "k" | "M" | "G"]);
        argv[key] = n;
        argv[camel(key)] = n;
        continue;
      }
      throw new MlaError("BAD_ARGUMENT", text === null ? `--${key} needs a number` : `--${key} ${text} is not a number`, key.endsWith("tokens") ? `give --${key} a number, e.g. 20000000 or 20M (k, M and G count thousands, millions, billions)` : `give --${key} a number`);
    }
  }
  checkFileOutputs(argv);
}

/**
 * A file a command writes (--json; report's --out and its .md twin) must not be an input or lie inside
 * one (`eval MODEL --json MODEL/config.json` replaced the model's config). Checked before any work.
 */
function checkFileOutputs(argv: Record<string, unknown>): void {
  const files = (k: string) => (argv[k] === undefined ? [] : ([] as unknown[]).concat(argv[k]).filter((x): x is string => typeof x === "string" && x !== ""));
  const inputs: InputPath[] = [];
  for (const spec of files("model")) {
    try {
      inputs.push({ name: "the input model folder", path: resolveModel(spec).dir });
    } catch {
      // the command reports a model it cannot find
    }
  }
  for (const k of ["text", "calib", "eval-text", "data", "like", "distill", "data-dir", "results", "train-log", "finetune-data"]) for (const f of files(k)) inputs.push({ name: k === "results" ? "an input" : `--${k}`, path: f });
  const json = files("json").filter((f) => f !== "-");
  for (const f of json) refuseOutOverInputs("--json", f, inputs);
  if (argv["_"] && (argv["_"] as unknown[])[0] === "report")
    for (const f of files("out")) for (const out of Object.values(reportFiles(f))) refuseOutOverInputs("--out", out, inputs);
}

// Kept to read the options of the command being parsed: yargs fills this instance with them.
const cli = yargs(hideBin(process.argv));
try {
  await cli
    .scriptName("mha2mla")
    .usage("$0 <command> [options]\n\nConvert Llama-style MHA/GQA checkpoints into multi-head latent attention (MLA).")
    .command(inspectCommand)
    .command(convertCommand)
    .command(exportCommand)
    .command(evalCommand)
    .command(finetuneCommand)
    .command(reportCommand)
    .command(pipelineCommand)
    .command(generateCommand)
    .command(serveCommand)
    .command(synthCommand)
    .command(studyCommand)
    .option("debug", { type: "boolean", describe: "print stack traces on errors", global: true })
    // yargs calls a middleware with the parsed arguments and its instance (its types name only the first).
    .middleware(checkFlagValues as unknown as (argv: unknown) => void)
    .demandCommand(1, "name a command; see --help")
    .strict()
    .fail((msg, err) => {
      if (err) fail(err);
      // The error and a hint, as every other refusal: the whole --help above it buried the one line that mattered.
      const o = cli as unknown as WithOptions;
      const said = /^Did you mean /.test(msg) ? `unknown command ${TYPED_COMMAND}` : refusal(msg, o);
      process.stderr.write(`error: ${said}\n  hint: ${refusalHint(msg, o.getOptions())}\n`);
      process.exit(1);
    })
    .recommendCommands()
    .help()
    .wrap(Math.min(110, process.stdout.columns ?? 100))
    .parseAsync();
} catch (e) {
  fail(e);
}
