#!/usr/bin/env node
/** The `mha2mla` command: parses arguments and calls one library function per command. */
import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import { isMlaError, MlaError } from "../errors.js";
import { abandonAll } from "../io/atomicDir.js";
import { inspectCommand } from "./inspect.js";
import { evalCommand } from "./eval.js";
import { synthCommand } from "./synth.js";
import { studyCommand } from "./study.js";
import { generateCommand } from "./generate.js";
import { convertCommand } from "./convert.js";
import { exportCommand } from "./export.js";
import { finetuneCommand } from "./finetune.js";
import { reportCommand } from "./report.js";
import { pipelineCommand } from "./pipeline.js";
import { installSignalHandlers } from "./signals.js";

const debug = process.argv.includes("--debug");

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

/** The text the user typed for --key (yargs turns a non-number into NaN before the handlers see it); null when none. */
function typed(key: string): string | null {
  const args = process.argv.slice(2);
  for (let i = 0; i < args.length; i++) {
    if (args[i]!.startsWith(`--${key}=`)) return args[i]!.slice(key.length + 3);
    if (args[i] === `--${key}` && i + 1 < args.length && !args[i + 1]!.startsWith("--")) return args[i + 1]!;
  }
  return null;
}

/**
 * Flags a command declares as one value must come once and, when numeric, be numbers: yargs would
 * otherwise pass an array ("--rank 4 --rank 5" → "4,5") or NaN on to the command, whose message then
 * blames the wrong thing.
 */
function checkFlagValues(argv: Record<string, unknown>, y: { getOptions(): { array: string[]; key: Record<string, unknown> } }): void {
  const o = y.getOptions();
  const arrays = new Set(o.array);
  for (const key of Object.keys(o.key)) {
    const v = argv[key];
    if (Array.isArray(v) && !arrays.has(key)) throw new MlaError("BAD_ARGUMENT", `--${key} was given ${v.length} times (${v.join(", ")})`, `give --${key} once`);
    if (typeof v === "number" && Number.isNaN(v)) {
      const text = typed(key);
      throw new MlaError("BAD_ARGUMENT", text === null ? `--${key} needs a number` : `--${key} ${text} is not a number`, `give --${key} a number`);
    }
  }
}

try {
  await yargs(hideBin(process.argv))
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
    .command(synthCommand)
    .command(studyCommand)
    .option("debug", { type: "boolean", describe: "print stack traces on errors", global: true })
    // yargs calls a middleware with the parsed arguments and its instance (its types name only the first).
    .middleware(checkFlagValues as unknown as (argv: unknown) => void)
    .demandCommand(1, "name a command; see --help")
    .strict()
    .fail((msg, err, y) => {
      if (err) fail(err);
      process.stderr.write(`${y.help()}\n\nerror: ${msg}\n`);
      process.exit(1);
    })
    .help()
    .wrap(Math.min(110, process.stdout.columns ?? 100))
    .parseAsync();
} catch (e) {
  fail(e);
}
