/**
 * An unknown flag is named as unknown whatever else yargs finds wrong: it checks positionals and
 * required options first, and the unknown flag swallows the next word as its value
 * (`inspect --bogus MODEL` read "Not enough non-option arguments").
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { ROOT } from "../helpers.js";

const MAIN = path.join(ROOT, "dist", "src", "cli", "main.js");

function cli(args: string[]): { code: number; stderr: string } {
  const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: "utf8" });
  return { code: r.status ?? -1, stderr: r.stderr };
}

/** The error line of stderr (a hint line follows it). */
const said = (args: string[]) => {
  const r = cli(args);
  assert.equal(r.code, 1, `${args.join(" ")}: ${r.stderr}`);
  return r.stderr.split("\n").find((l) => l.startsWith("error: "));
};

test("an unknown flag before a positional, or beside a missing required option, is named as unknown in every command", () => {
  assert.equal(said(["inspect", "--bogus", "stories260K"]), "error: unknown flag --bogus");
  assert.equal(said(["eval", "--bogus", "stories260K", "--text", "x.txt"]), "error: unknown flag --bogus");
  assert.equal(said(["synth", "--bogus", "--arch", "llama2-7b"]), "error: unknown flag --bogus", "not --out missing");
  assert.equal(said(["--bogus"]), "error: unknown flag --bogus", "not a missing command");
  assert.equal(said(["inspect", "--bogus=1", "-z", "stories260K"]), "error: unknown flags --bogus, -z");
});

test("declared flags in any spelling yargs takes are not unknown; without an unknown flag yargs's own message stands", () => {
  assert.equal(said(["inspect"]), "error: inspect needs MODEL");
  assert.equal(said(["report"]), "error: report needs RESULTS …");
  assert.equal(said(["synth", "--arch", "llama2-7b"]), "error: Missing required argument: out");
  // camelCase, --no- negation, --debug (global), and a flag after `--` (not parsed as one).
  assert.equal(said(["convert", "--evalText", "x", "--no-force", "--debug"]), "error: convert needs MODEL");
  assert.equal(said(["inspect", "--", "--bogus"]), "error: inspect needs MODEL");
});

test("--json before the model took it as its file: the refusal says so and where the model goes", () => {
  const lines = (args: string[]) => cli(args).stderr.trimEnd().split("\n");
  assert.deepEqual(lines(["inspect", "--json", "stories260K"]), ["error: inspect needs MODEL (--json took stories260K as its value)", "  hint: put inspect's arguments before --json, or give it a file (--json out.json) (see mha2mla inspect --help)"]);
  assert.match(lines(["eval", "--json", "stories260K", "--text", "x.txt"])[0]!, /\(--json took stories260K as its value\)$/, "--text's value is its own");
});

test("a refused command line is two lines, the error and a hint: the flag or command it was probably meant to be, or the flag to add", () => {
  const lines = (args: string[]) => cli(args).stderr.trimEnd().split("\n");
  assert.deepEqual(lines(["convert", "stories260K", "--rnak", "4"]), ["error: unknown flag --rnak", "  hint: did you mean --rank? (see mha2mla convert --help)"]);
  assert.deepEqual(lines(["convrt", "stories260K"]), ["error: unknown command convrt", "  hint: did you mean convert? (see mha2mla --help)"]);
  // No command near it: the list of them. Two unknown flags: which guess is for which.
  assert.deepEqual(lines(["frobnicate"]), ["error: unknown command frobnicate", "  hint: the commands are inspect, convert, export, eval, finetune, report, pipeline, generate, serve, synth, study (see mha2mla --help)"]);
  assert.deepEqual(lines(["convert", "stories260K", "--rnak", "4", "--otu", "x"]), ["error: unknown flags --rnak, --otu", "  hint: did you mean --rank for --rnak? (see mha2mla convert --help)"]);
  assert.deepEqual(lines(["inspect", "stories260K", "extra", "more"]), ["error: unexpected arguments extra, more", "  hint: see mha2mla inspect --help"]);
  assert.deepEqual(lines(["synth", "--arch", "llama2-7b"]), ["error: Missing required argument: out", "  hint: add --out … (see mha2mla synth --help)"]);
  assert.deepEqual(lines(["inspect", "--bogus", "stories260K"]), ["error: unknown flag --bogus", "  hint: see mha2mla inspect --help"]);
});

test("the refusals read the same under another locale (yargs translated its messages, which the refusals are built from)", () => {
  const lines = (args: string[], env: NodeJS.ProcessEnv = {}) => spawnSync(process.execPath, [MAIN, ...args], { encoding: "utf8", env: { ...process.env, ...env } }).stderr.trimEnd().split("\n");
  const de = { LANG: "de_DE.UTF-8", LC_ALL: "de_DE.UTF-8", LC_MESSAGES: "de_DE.UTF-8", LANGUAGE: "de" };
  for (const args of [["convrt", "stories260K"], ["synth", "--arch", "llama2-7b"], ["inspect", "--json", "stories260K"], ["synth", "--arch", "x", "--out", "y", "--dtype", "f8"]]) assert.deepEqual(lines(args, de), lines(args), args.join(" "));
  assert.deepEqual(lines(["convrt", "stories260K"], de), ["error: unknown command convrt", "  hint: did you mean convert? (see mha2mla --help)"]);
});

test("a value outside a flag's choices is one error line naming the flag, the value and the choices, then the hint (was three lines)", () => {
  const lines = (args: string[]) => cli(args).stderr.trimEnd().split("\n");
  assert.deepEqual(lines(["synth", "--arch", "stories260K", "--out", "x", "--dtype", "f8"]), ["error: --dtype f8 is not one of bf16, f16, f32", "  hint: see mha2mla synth --help"]);
  assert.deepEqual(lines(["study", "--like", "stories260K", "--data", "x.txt", "--tokens", "1", "--out", "x", "--device", "gpu"]), ["error: --device gpu is not one of auto, reference, cpu, cuda", "  hint: see mha2mla study --help"]);
});

test("a text flag given with no value is refused, naming it, not run with the default or an empty value", () => {
  const lines = (args: string[]) => cli(args).stderr.trimEnd().split("\n");
  // Was: the default prompt continued, as if --prompt had not been given.
  assert.deepEqual(lines(["generate", "stories260K", "--prompt"]), ["error: --prompt was given without a value (it takes the word after it)", "  hint: write --prompt VALUE (quoted if it holds spaces), or drop --prompt for its default (Once upon a time) (see mha2mla generate --help)"]);
  // Before another flag, among repeated ones, or before `--`: the same.
  assert.equal(said(["generate", "stories260K", "--prompt", "--max-tokens", "2"]), "error: --prompt was given without a value (it takes the word after it)");
  assert.equal(said(["generate", "stories260K", "--prompt", "Hi", "--prompt"]), "error: --prompt was given without a value (it takes the word after it)");
  assert.equal(said(["generate", "stories260K", "--prompt", "--", "Hi"]), "error: --prompt was given without a value (it takes the word after it)");
  // Other commands' text flags: --out alone was the working folder, --text alone read "nothing to evaluate".
  assert.equal(said(["convert", "stories260K", "--rank", "4", "--dry-run", "--out"]), "error: --out was given without a value (it takes the word after it)");
  assert.equal(said(["eval", "stories260K", "--text", "--json"]), "error: --text was given without a value (it takes the word after it)");
  assert.equal(said(["convert", "stories260K", "--rank", "4", "--evalText"]), "error: --evalText was given without a value (it takes the word after it)", "named as typed");
});

test("a text flag's value that looks like a number, or an empty prompt written out, is taken; --json alone still means stdout", () => {
  const run = (args: string[]) => spawnSync(process.execPath, [MAIN, ...args], { encoding: "utf8" });
  const neg = run(["generate", "stories260K", "--prompt", "-5", "--max-tokens", "1"]);
  assert.equal(neg.status, 0, neg.stderr);
  assert.match(neg.stdout, /^-5/);
  // An empty prompt is asked for: BOS alone is continued.
  const empty = run(["generate", "stories260K", "--prompt=", "--max-tokens", "1"]);
  assert.equal(empty.status, 0, empty.stderr);
  const dry = run(["convert", "stories260K", "--rank", "4", "--dry-run", "--json"]);
  assert.equal(dry.status, 0, dry.stderr);
  assert.equal(JSON.parse(dry.stdout).plan.settings.rank, 4);
});

test("a switch written with a value other than true or false is refused (yargs read --force=maybe as false)", () => {
  assert.equal(said(["inspect", "stories260K", "--debug=maybe"]), 'error: --debug=maybe: a switch is on or off, not "maybe"');
  assert.equal(said(["convert", "stories260K", "--rank", "4", "--out", "/nonexistent-dir/x", "--force=no"]), 'error: --force=no: a switch is on or off, not "no"');
  assert.equal(cli(["inspect", "stories260K", "--debug=false"]).code, 0);
});

test("a refused --out is the only thing convert says: its note about a strategy defaulted for want of --calib waits for the output checks", { skip: process.platform !== "linux" || !procMounted() ? "needs Linux's /proc" : false }, () => {
  assert.deepEqual(cli(["convert", "stories260K", "--rank", "4", "--out", "/proc/mha2mla-x"]).stderr.trimEnd().split("\n"), ["error: cannot create a folder beside /proc/mha2mla-x: /proc is not on a disk (a virtual file system, which holds no files)", "  hint: choose a path on a disk"]);
});

function procMounted(): boolean {
  return existsSync("/proc/self");
}
