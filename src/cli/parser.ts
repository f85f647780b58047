/**
 * The `mha2mla` command line: the yargs parser with every command, the checks it does not make
 * (flagChecks.ts), the outputs checked before any work, and the two-line refusal (error, hint).
 * Built from the words and the command modules it is given, so tests parse without running a command.
 */
import fs from "node:fs";
import path from "node:path";
import yargs, { type Argv, type CommandModule } from "yargs";
import { MlaError } from "../errors.js";
import { nearestName } from "../util/nearest.js";
import { refuseOutOverInputs, type InputPath } from "../io/outGuard.js";
import { refuseFileAsOutDir } from "../io/atomicDir.js";
import { resolveModel } from "../io/modelDir.js";
import { defaultDeepseekOut, defaultExportOut, defaultOut } from "../convert/plan.js";
import { deepseekShape } from "../deepseek/export.js";
import { readHfConfig } from "../io/hfConfig.js";
import { reportFiles, checkReportOut } from "../eval/report/report.js";
import { checkJsonTarget, MODEL_FILES, RUN_RECORDS } from "./output.js";
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
import { checkFlagValues, checkGivenValues, joinStdoutDash, unknownFlags, type DeclaredOptions, type WithOptions } from "./flagChecks.js";

/** A command of any arguments: yargs's CommandModule is invariant in them, so one list of commands needs `any` here. */
type AnyCommand = CommandModule<any, any>;

/** Every command, in the order --help lists them. */
export const COMMAND_MODULES: readonly AnyCommand[] = [inspectCommand, convertCommand, exportCommand, evalCommand, finetuneCommand, reportCommand, pipelineCommand, generateCommand, serveCommand, synthCommand, studyCommand];

/** The commands whose --out is a file (report.html), not a folder. */
const FILE_OUT_COMMANDS = new Set(["report"]);

/** What the CLI does with a command line it refuses (yargs's own refusals; an MlaError from the checks is thrown). */
export type OnRefusal = (error: string, hint: string) => never;

/** A flag's name as typed: -z, --bogus. */
const dashed = (name: string) => (name.length === 1 ? `-${name}` : `--${name}`);

/** Flags whose value may be left out (--json alone writes to stdout): the word after them is taken as the value. */
const OPTIONAL_VALUE_FLAGS = ["--json"];

/**
 * The yargs parser of `words` (the command line after `node main.js`), with `commands` (tests pass
 * them with handlers that do nothing). `onRefusal` gets yargs's refusals as an error line and a hint.
 */
export function buildParser(words: readonly string[], onRefusal: OnRefusal, commands: readonly AnyCommand[] = COMMAND_MODULES): Argv {
  const args = joinStdoutDash(words);
  const names = commands.map((c) => String(c.command).split(" ")[0]!);
  /** The first word that is not a flag: the command as typed (maybe misspelt). */
  const typedCommand = args.find((a) => !a.startsWith("-"));
  /** Where the usage of the command typed is: "see mha2mla convert --help". */
  const seeHelp = `see mha2mla ${typedCommand && names.includes(typedCommand) ? `${typedCommand} ` : ""}--help`;

  /**
   * yargs's message for a command line it refuses. It checks positionals and required options before
   * unknown flags, and an unknown flag takes the next word as its value, so `inspect --bogus MODEL`
   * would read "Not enough non-option arguments": an unknown flag is named first, as it is the mistake.
   */
  function refusal(msg: string, o: DeclaredOptions): string {
    if (/^Did you mean /.test(msg) || strayCommand(msg, o)) return `unknown command ${typedCommand}`;
    const unknown = unknownFlags(args, o);
    if (unknown.length) return `unknown flag${unknown.length > 1 ? "s" : ""} ${unknown.map(dashed).join(", ")}`;
    // A word past the command's arguments, in yargs's words for an unknown flag.
    const stray = /^Unknown arguments?: (.+)$/.exec(msg);
    if (stray) return `unexpected argument${stray[1]!.includes(", ") ? "s" : ""} ${stray[1]}`;
    const invalid = invalidChoices(msg);
    if (invalid) return invalid;
    const took = swallowed(o);
    const short = missingPositionals(msg);
    if (!short) return msg;
    return took.length ? `${short} (${took.map(([flag, word]) => `${flag} took ${word} as its value`).join(", ")})` : short;
  }

  /**
   * yargs's "Not enough non-option arguments: got 0, need at least 1" said as what is missing, by the
   * names in the command's usage ("inspect <model>": MODEL); null for any other message.
   */
  function missingPositionals(msg: string): string | null {
    const m = /^Not enough non-option arguments: got (\d+), need at least (\d+)/.exec(msg);
    if (!m) return null;
    const usage = String(commands.find((c) => String(c.command).split(" ")[0] === typedCommand)?.command ?? "");
    const wanted = [...usage.matchAll(/<([^>.]+)(\.\.)?>/g)].map(([, name, many]) => `${name!.toUpperCase()}${many ? " …" : ""}`);
    const missing = wanted.slice(Number(m[1]));
    return missing.length ? `${typedCommand} needs ${missing.join(" ")}${Number(m[1]) ? ` after its ${m[1]} argument${m[1] === "1" ? "" : "s"}` : ""}` : msg;
  }

  /**
   * Flags whose value may be left out that took the word after them ([flag, word]): `inspect --json
   * MODEL` gives MODEL to --json (as its file; alone it means stdout), so the positional seems missing,
   * and the refusal should say where it went.
   */
  function swallowed(o: DeclaredOptions): [string, string][] {
    return args.flatMap((a, i): [string, string][] => {
      const next = args[i + 1];
      return OPTIONAL_VALUE_FLAGS.includes(a) && o.string.includes(a.slice(2)) && next !== undefined && !next.startsWith("-") ? [[a, next]] : [];
    });
  }

  /** A first word that is no command, which yargs refuses as a stray argument when no command is near it ("frobnicate"). */
  function strayCommand(msg: string, o: DeclaredOptions): boolean {
    return typedCommand !== undefined && !names.includes(typedCommand) && /^Unknown arguments?: /.test(msg) && unknownFlags(args, o).length === 0;
  }

  /** The hint under a refused command line: the declared flag an unknown one was probably meant to be, else where the usage is. */
  function refusalHint(msg: string, o: DeclaredOptions): string {
    if (/^Did you mean /.test(msg)) return `${msg.replace(/^Did/, "did")} (${seeHelp})`;
    if (strayCommand(msg, o)) return `the commands are ${names.join(", ")} (${seeHelp})`;
    const unknown = unknownFlags(args, o);
    const guesses = unknown.flatMap((u): [string, string][] => {
      const best = nearestName(u, Object.keys(o.key).filter((k) => k.length > 1));
      return best ? [[`--${best}`, dashed(u)]] : [];
    });
    if (guesses.length === 1 && unknown.length === 1) return `did you mean ${guesses[0]![0]}? (${seeHelp})`;
    if (guesses.length) return `did you mean ${guesses.map(([best, u]) => `${best} for ${u}`).join(", ")}? (${seeHelp})`;
    const took = swallowed(o);
    if (took.length && /^Not enough non-option arguments/.test(msg)) return `put ${typedCommand}'s arguments before ${took.map(([f]) => f).join(" and ")}, or give it a file (--json out.json) (${seeHelp})`;
    const missing = /^Missing required arguments?: (.+)$/m.exec(msg);
    if (missing) return `add ${missing[1]!.split(", ").map((f) => `--${f} …`).join(" ")} (${seeHelp})`;
    return seeHelp;
  }

  /**
   * Before yargs's validation, which would otherwise speak first of a bare required flag
   * ("Missing required argument: rank" for `--rank` with no value). An unknown flag is left to the
   * validation, which names it: it may have swallowed the word after it.
   */
  function checkTyped(_argv: unknown, y: WithOptions): void {
    const o = y.getOptions();
    if (unknownFlags(args, o).length === 0) checkGivenValues(args, o, seeHelp);
  }

  function checkParsed(argv: Record<string, unknown>, y: WithOptions): void {
    checkFlagValues(args, argv, y.getOptions());
    checkOutputs(argv);
  }

  const cli = yargs([...args]);
  cli
    // English whatever LANG says: the refusals above read yargs's English messages (under LANG=de_DE a
    // misspelt command read "error: Meintest du convert?", a missing --out lost its hint), and every
    // other word the tool prints is English.
    .locale("en")
    .scriptName("mha2mla")
    .usage("$0 <command> [options]\n\nConvert Llama-style MHA/GQA checkpoints into multi-head latent attention (MLA).");
  for (const c of commands) cli.command(c);
  return (
    cli
      .option("debug", { type: "boolean", describe: "print stack traces on errors", global: true })
      // yargs calls a middleware with the parsed arguments and its instance (its types name only the first).
      .middleware(checkTyped as unknown as (argv: unknown) => void, true)
      .middleware(checkParsed as unknown as (argv: unknown) => void)
      .demandCommand(1, "name a command; see --help")
      .strict()
      .fail((msg, err) => {
        // A YError is yargs's own refusal (a parse error); anything else was thrown by a check or a handler.
        if (err && err.name !== "YError") throw err;
        // The error and a hint, as every other refusal: the whole --help above it buried the one line that mattered.
        const o = (cli as unknown as WithOptions).getOptions();
        onRefusal(refusal(msg, o), refusalHint(msg, o));
      })
      .recommendCommands()
      .help()
      .wrap(Math.min(110, process.stdout.columns ?? 100))
  );
}

/**
 * yargs's refusal of a value outside a flag's choices, on one line: it wrote three ("Invalid values:",
 * then "Argument: dtype, Given: "f8", Choices: "bf16", …" under it, without the flag's dashes), where
 * every other refusal is one error line and its hint. Null for any other message.
 */
function invalidChoices(msg: string): string | null {
  if (!/^Invalid values:/.test(msg)) return null;
  const unquote = (list: string) => list.replace(/"([^"]*)"/g, "$1");
  const each = [...msg.matchAll(/Argument: (.+?), Given: (.+?), Choices: (.+)$/gm)].map(([, key, given, choices]) => `--${key} ${unquote(given!)} is not one of ${unquote(choices!)}`);
  return each.length ? each.join("; ") : null;
}

/**
 * Outputs checked before any work. A file a command writes (--json; report's --out and its .md twin)
 * must be a file path, and not an input or inside one (`eval MODEL --json MODEL/config.json` replaced
 * the model's config). A folder a command writes (every other --out) must not be a file: --force
 * replaces an earlier output folder, never a file that happens to have the name.
 */
function checkOutputs(argv: Record<string, unknown>): void {
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
  for (const f of files("json").filter((f) => f !== "-")) {
    // The inputs between: "the input model" says more than "a model's own file".
    checkJsonTarget(f, () => refuseOutOverInputs("--json", f, inputs));
  }
  const command = (argv["_"] as unknown[] | undefined)?.[0];
  if (typeof command === "string" && FILE_OUT_COMMANDS.has(command)) {
    for (const f of files("out")) {
      for (const out of Object.values(reportFiles(f))) {
        if (fs.existsSync(out) && fs.statSync(out).isDirectory()) throw new MlaError("BAD_ARGUMENT", `--out ${out} is a folder, not a file`, "give --out a file path, e.g. --out report.html (its Markdown twin is written beside it)");
        refuseOutOverInputs("--out", out, inputs);
      }
      checkReportOut(f);
    }
  } else {
    for (const f of files("out")) refuseFileAsOutDir(f);
    refuseJsonOverOut(command, argv, files("json").filter((j) => j !== "-"));
  }
}

/** Where convert and export write without --out (their defaults), for the check below. */
function outOf(command: unknown, argv: Record<string, unknown>): string | null {
  if (typeof argv["out"] === "string" && argv["out"]) return argv["out"];
  const model = typeof argv["model"] === "string" ? argv["model"] : null;
  if (!model) return null;
  if (command === "convert" && typeof argv["rank"] === "number") return argv["format"] === "deepseek" ? deepseekOutOf(model, argv["rank"], argv) : defaultOut(model, argv["rank"]);
  if (command === "export") return defaultExportOut(model);
  return null;
}

/**
 * convert --format deepseek's default: named after --kv-lora-rank where it sets the cache in --rank's
 * place, which takes the model's shape to tell (null where the run will refuse the model or its widths).
 */
function deepseekOutOf(model: string, rank: number, argv: Record<string, unknown>): string | null {
  const given = (k: string) => (typeof argv[k] === "number" ? argv[k] : undefined);
  if (given("kv-lora-rank") === undefined) return defaultOut(model, rank, "deepseek");
  try {
    const shape = deepseekShape(readHfConfig(resolveModel(model).dir), { rank, ropePairs: given("rope-pairs"), ropeDim: given("rope-dim"), kvLoraRank: given("kv-lora-rank") });
    return defaultDeepseekOut(model, shape.rank, shape.kvLoraRank);
  } catch (e) {
    if (e instanceof MlaError) return null;
    throw e;
  }
}

/**
 * A result at the output folder itself, or at one of the files the command writes there (a model's
 * config, a run's records, a conversion's report): refused before the work, which it would otherwise
 * end by refusing (the file then exists) or by replacing. Any other name inside the folder is fine:
 * the result is written after the folder, and a fine-tuning run keeps it through --resume.
 */
function refuseJsonOverOut(command: unknown, argv: Record<string, unknown>, jsons: readonly string[]): void {
  const out = outOf(command, argv);
  if (!out) return;
  const o = path.resolve(out);
  for (const j of jsons) {
    const r = path.resolve(j);
    const own = (path.dirname(r) === o && [MODEL_FILES, RUN_RECORDS, REPORTS, WEIGHT_FILES].some((re) => re.test(path.basename(r)))) || r.startsWith(path.join(o, "checkpoint") + path.sep);
    if (r === o || own)
      throw new MlaError("BAD_ARGUMENT", `--json ${j} is ${r === o ? `--out ${out}` : `one of the files this command writes in --out ${out}`}`, `write the result beside it or under another name, e.g. --json ${r === o ? `${o}.json` : path.join(o, "result.json")}`);
  }
}

/** Beside a model's own files and a run's records: a conversion's or export's report, a fine-tune's log. */
const REPORTS = /^(report\.(json|md)|train_log\.jsonl)$/;
/** A model folder's files that are not JSON: its weights (any shard) and a copied SentencePiece tokenizer. */
const WEIGHT_FILES = /\.safetensors$|^tokenizer\.model$/;
