#!/usr/bin/env node
/** The `mha2mla` command: parses arguments (parser.ts) and calls one library function per command. */
import { hideBin } from "yargs/helpers";
import { isMlaError } from "../errors.js";
import { abandonAll } from "../io/atomicDir.js";
import { installSignalHandlers } from "./signals.js";
import { buildParser } from "./parser.js";

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

try {
  await buildParser(hideBin(process.argv), (error, hint) => {
    process.stderr.write(`error: ${error}\n  hint: ${hint}\n`);
    process.exit(1);
  }).parseAsync();
} catch (e) {
  fail(e);
}
