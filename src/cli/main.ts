#!/usr/bin/env node
/** The `mha2mla` command: parses arguments and calls one library function per command. */
import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import { isMlaError } from "../errors.js";
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
