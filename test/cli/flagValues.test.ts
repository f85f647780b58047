/**
 * Every flag that takes a value, of every command, given with none or with an empty one, is refused
 * naming it and what it takes (yargs read a bare number as its default or as absent: `finetune
 * --batch` trained with batch 16; `--rank ""` as 0). Parsed in this process with handlers that do
 * nothing: the flags come from the commands' own declarations, so a flag added later is covered.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import type { Argv } from "yargs";
import { MlaError } from "../../src/errors.js";
import { buildParser, COMMAND_MODULES } from "../../src/cli/parser.js";
import type { DeclaredOptions } from "../../src/cli/flagChecks.js";
import { ROOT, tmpDir } from "../helpers.js";

type AnyCommand = (typeof COMMAND_MODULES)[number];

class Refused extends Error {}
/** Thrown by the handlers here with what they were given: it ends the parse before yargs lays out the help it caches after a handler (most of a parse's time). */
class Parsed {
  constructor(readonly argv: Record<string, unknown>) {}
}
const QUIET = COMMAND_MODULES.map((c) => ({
  ...c,
  handler: (a: Record<string, unknown>) => {
    throw new Parsed(a);
  },
}));

/** What the parser made of `words`, the command not run; a refusal (ours or yargs's) is thrown. */
function parse(words: string[]): Record<string, unknown> {
  try {
    buildParser(
      words,
      (error, hint) => {
        throw new Refused(`${error}\n  hint: ${hint}`);
      },
      QUIET,
    ).parse();
  } catch (e) {
    if (e instanceof Parsed) return e.argv;
    throw e;
  }
  throw new Error(`${words.join(" ")}: no command ran`);
}

/** The refusal of `words` (its error line and hint), or null when the parser takes them. */
function refusal(words: string[]): string | null {
  try {
    parse(words);
    return null;
  } catch (e) {
    if (e instanceof MlaError || e instanceof Refused) return e.message;
    throw e;
  }
}

const nameOf = (c: AnyCommand) => String(c.command).split(" ")[0]!;
/** The command's positionals (`<model>`, `<results..>`), a value each. */
const positionalsOf = (c: AnyCommand) => [...String(c.command).matchAll(/<(\w+)(\.\.)?>/g)].map((m) => m[1]!);

const declaredCache = new Map<AnyCommand, ReturnType<typeof readDeclared>>();
/** The options `c` declares, read from yargs inside its builder. */
function declared(c: AnyCommand): ReturnType<typeof readDeclared> {
  if (!declaredCache.has(c)) declaredCache.set(c, readDeclared(c));
  return declaredCache.get(c)!;
}

function readDeclared(c: AnyCommand): DeclaredOptions & { demandedOptions: Record<string, unknown> } {
  let o: (DeclaredOptions & { demandedOptions: Record<string, unknown> }) | undefined;
  const spy = {
    ...c,
    handler: () => {},
    builder: (y: Argv) => {
      const r = (c.builder as (y: Argv) => Argv)(y);
      o = (r as unknown as { getOptions(): typeof o }).getOptions();
      return r;
    },
  };
  try {
    buildParser([nameOf(c)], () => {
      throw new Refused("no positionals");
    }, [spy]).parse();
  } catch {
    // refused without its positionals, or its required flags: the builder ran
  }
  assert.ok(o, `${nameOf(c)}: its builder ran`);
  return o!;
}

/** A value the parser takes for `key` (checked for every flag below). */
function valueFor(key: string, o: DeclaredOptions): string {
  const choices = o.choices[key];
  if (choices?.length) return String(choices[0]);
  return o.number.includes(key) ? "4" : `v-${key}`;
}

interface Case {
  command: string;
  key: string;
  /** The command line up to the flag: command, positionals, the required flags but this one. */
  before: string[];
  takes: RegExp;
  bareOk: boolean;
  emptyOk: boolean;
}

function cases(): Case[] {
  const all: Case[] = [];
  for (const c of COMMAND_MODULES) {
    const o = declared(c);
    const positionals = positionalsOf(c);
    const required = Object.keys(o.demandedOptions).filter((k) => !positionals.includes(k));
    for (const key of Object.keys(o.key)) {
      if (o.boolean.includes(key) || o.count.includes(key) || positionals.includes(key)) continue;
      const before = [nameOf(c), ...positionals.map((p) => (p === "model" ? "stories260K" : `${p}.json`)), ...required.filter((r) => r !== key).flatMap((r) => [`--${r}`, valueFor(r, o)])];
      const choices = o.choices[key];
      const takes = choices?.length ? new RegExp(`one of: ${choices.join(", ")}`) : o.number.includes(key) ? /a number/ : /the word after it|one or more words after it|a file path/;
      all.push({ command: nameOf(c), key, before, takes, bareOk: key === "json", emptyOk: key === "prompt" || key === "system" });
    }
  }
  return all;
}

const CASES = cases();

test("the table covers every command and the flags this audit found dropped", () => {
  const covered = new Set(CASES.map((x) => `${x.command} --${x.key}`));
  for (const c of COMMAND_MODULES) assert.ok(CASES.some((x) => x.command === nameOf(c)), `${nameOf(c)} has flags that take values`);
  for (const f of ["finetune --batch", "convert --rank", "convert --device", "eval --json", "serve --port", "generate --prompt", "study --tokens", "synth --dtype", "report --out", "pipeline --calib-samples"]) assert.ok(covered.has(f), f);
  assert.ok(CASES.length > 100, `${CASES.length} flags`);
});

test("every flag that takes a value is taken with one (so the refusals below are the flag's)", () => {
  for (const x of CASES) {
    const words = [...x.before, `--${x.key}`, valueFor(x.key, declared(COMMAND_MODULES.find((c) => nameOf(c) === x.command)!))];
    assert.equal(refusal(words), null, words.join(" "));
  }
});

test("every flag that takes a value, given bare (last, or before another flag), is refused naming it and what it takes", () => {
  for (const x of CASES) {
    for (const words of [
      [...x.before, `--${x.key}`],
      [...x.before, `--${x.key}`, "--debug"],
    ]) {
      const said = refusal(words);
      if (x.bareOk) {
        assert.equal(said, null, words.join(" "));
        continue;
      }
      assert.ok(said, `${words.join(" ")}: taken`);
      assert.match(said, new RegExp(`^--${x.key} was given without a value \\(it takes `), words.join(" "));
      assert.match(said.split("\n")[0]!, x.takes, words.join(" "));
      assert.match(said, /\n  hint: write --/, words.join(" "));
    }
  }
});

test('every flag that takes a value, given "" or blank (--flag "", --flag=), is refused naming it', () => {
  for (const x of CASES) {
    for (const words of [
      [...x.before, `--${x.key}`, ""],
      [...x.before, `--${x.key}=`],
      [...x.before, `--${x.key}`, " "],
    ]) {
      const said = refusal(words);
      if (x.emptyOk) {
        assert.equal(said, null, words.join(" "));
        continue;
      }
      assert.ok(said, `${JSON.stringify(words)}: taken`);
      assert.match(said, new RegExp(`^--${x.key} was given an empty value \\(it takes `), JSON.stringify(words));
      if (!x.takes.test("the word after it")) assert.match(said.split("\n")[0]!, x.takes, JSON.stringify(words));
    }
  }
});

test('a number flag is no longer read as its default or as 0: finetune --batch, --rank ""', () => {
  const finetune = ["finetune", "stories260K", "--data", "a.txt", "--out", "o", "--seq", "64"];
  assert.equal(parse([...finetune, "--batch", "2"])["batch"], 2);
  assert.match(refusal([...finetune, "--batch"])!, /^--batch was given without a value \(it takes a number\)\n  hint: write --batch N, or drop --batch for its default \(16\)/);
  assert.match(refusal(["convert", "stories260K", "--rank", "", "--dry-run"])!, /^--rank was given an empty value \(it takes a number\)/);
  assert.match(refusal(["convert", "stories260K", "--dry-run", "--rank"])!, /^--rank was given without a value/, "not 'Missing required argument: rank'");
  // An array flag: an empty word among its values.
  assert.match(refusal(["finetune", "stories260K", "--out", "o", "--data", "a.txt", ""])!, /^--data was given an empty value/);
  // A negative number is a value, not a flag.
  assert.equal(parse(["generate", "stories260K", "--presence-penalty", "-1"])["presence-penalty"], -1);
  // An unknown flag is still named first.
  assert.match(refusal(["convert", "stories260K", "--bogus", "--rank"])!, /^unknown flag --bogus/);
});

test("--json - means stdout in every command with --json, as --json alone; another flag given - is refused", () => {
  const withJson = CASES.filter((x) => x.key === "json");
  assert.deepEqual(withJson.map((x) => x.command).sort(), ["convert", "eval", "export", "finetune", "inspect", "synth"]);
  for (const x of withJson) {
    assert.equal(parse([...x.before, "--json", "-"])["json"], "-", x.command);
    assert.equal(parse([...x.before, "--json", "-", "--debug"])["json"], "-", x.command);
    assert.equal(parse([...x.before, "--json"])["json"], "", x.command);
  }
  assert.match(refusal(["convert", "stories260K", "--rank", "4", "--out", "-"])!, /^--out was given "-", which stands for standard output[\s\S]*only --json writes to standard output/);
  const r = spawnSync(process.execPath, [path.join(ROOT, "dist", "src", "cli", "main.js"), "inspect", "stories260K", "--json", "-"], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).params, 260032);
});

test("--json naming a folder says it is a folder and a file path is expected, even the working folder's parent", () => {
  const dir = tmpDir();
  for (const words of [
    ["eval", "stories260K", "--text", "t.txt", "--json", dir],
    ["eval", "stories260K", "--text", "t.txt", "--json", path.dirname(process.cwd())],
    ["inspect", "stories260K", "--json", "."],
  ]) {
    const said = refusal(words)!;
    assert.match(said, /^--json \S+ is a folder, not a file\n  hint: --json takes the path of the file to write, e\.g\. --json \S*result\.json \(or - for stdout\)$/, words.join(" "));
  }
  assert.match(refusal(["report", "a.json", "--out", path.dirname(process.cwd())])!, /^--out \S+ is a folder, not a file\n  hint: give --out a file path/);
});

test("--json replaces only an earlier result: not a text, not another model's weights or config (refused before any work); a JSON result or a new file beside a model's files is fine", () => {
  const dir = tmpDir();
  const other = path.join(dir, "other");
  fs.cpSync(path.join(ROOT, "fixtures", "models", "stories260K"), other, { recursive: true });
  const notes = path.join(dir, "notes.txt");
  fs.writeFileSync(notes, "my notes\n");
  for (const [target, why] of [[notes, /is not JSON/], [path.join(other, "model.safetensors"), /is not JSON/], [path.join(other, "config.json"), /is one of a model folder's own files/]] as const) {
    const before = fs.readFileSync(target);
    assert.match(refusal(["eval", "stories260K", "--text", "t.txt", "--json", target])!, new RegExp(`^--json \\S+ exists and ${why.source}: --json replaces only an earlier result\\n  hint: choose a new file name`), target);
    assert.deepEqual(fs.readFileSync(target), before, "left as it was");
  }
  // The records a run resumes from are JSON too, but never a result's place (finetune --json RUN/finetune.json broke its --resume).
  for (const record of ["finetune.json", "pipeline.json", "study-state.json", "study.json", path.join("checkpoint", "state.json")]) {
    const f = path.join(dir, "run", record);
    fs.mkdirSync(path.dirname(f), { recursive: true });
    fs.writeFileSync(f, "{}");
    assert.match(refusal(["eval", "stories260K", "--text", "t.txt", "--json", f])!, /exists and is (the record a fine-tuning run, pipeline or study resumes from|a training checkpoint's state): --json replaces only an earlier result/, record);
  }
  const earlier = path.join(dir, "result.json");
  fs.writeFileSync(earlier, '{"model": "m", "kv_bytes_per_token": 4, "nll": 1}\n');
  assert.equal(refusal(["eval", "stories260K", "--text", "t.txt", "--json", earlier]), null);
  assert.equal(refusal(["eval", "stories260K", "--text", "t.txt", "--json", path.join(other, "eval.json")]), null);
});

test("an --out that is a file is refused by every command that writes a folder there, with or without --force", () => {
  const file = path.join(tmpDir(), "notes.txt");
  fs.writeFileSync(file, "hi\n");
  const outs = CASES.filter((x) => x.key === "out" && x.command !== "report");
  assert.deepEqual(outs.map((x) => x.command).sort(), ["convert", "export", "finetune", "pipeline", "study", "synth"]);
  for (const x of outs) {
    const o = declared(COMMAND_MODULES.find((c) => nameOf(c) === x.command)!);
    for (const force of o.key["force"] !== undefined ? [[], ["--force"]] : [[]]) {
      const words = [...x.before, "--out", file, ...force];
      assert.match(refusal(words) ?? "taken", /^--out \S+notes\.txt is a file, not a folder\n  hint: --out names the output folder, and --force replaces only an earlier output folder/, words.join(" "));
    }
  }
  assert.equal(fs.readFileSync(file, "utf8"), "hi\n");
});

test("every number flag refuses a value not written in decimal (hex, binary, octal, an exponent, Infinity), naming the flag and the value; --lr and --weight-decay take an exponent, token counts k/M/G", () => {
  const numeric = CASES.filter((x) => declared(COMMAND_MODULES.find((c) => nameOf(c) === x.command)!).number.includes(x.key));
  assert.ok(numeric.length > 50, `${numeric.length} number flags`);
  const exponentOk = new Set(["lr", "weight-decay"]);
  for (const x of numeric) {
    // yargs read these as 4, 100, 3, 7 and Infinity: a number the user never wrote.
    for (const [text, read] of [["0x4", 4], ["1e2", 100], ["0b11", 3], ["0o7", 7], ["Infinity", null], ["-Infinity", null], ["1E2", 100]] as const) {
      if (exponentOk.has(x.key) && /^1e2$/i.test(text)) continue;
      // --flag=VALUE is read by the same code as --flag VALUE: tried once per flag.
      for (const words of text === "0x4" || text === "-Infinity" ? [[...x.before, `--${x.key}`, text], [...x.before, `--${x.key}=${text}`]] : [[...x.before, `--${x.key}`, text]]) {
        const said = refusal(words);
        // "-Infinity" reads as a flag (a word starting with "-"), refused as one before its spelling is looked at.
        if (text === "-Infinity" && words.length === x.before.length + 2) {
          assert.ok(said, `${words.join(" ")}: taken`);
          continue;
        }
        assert.ok(said, `${words.join(" ")}: taken`);
        const line = `--${x.key} ${text} is not a decimal number${read === null ? "" : ` (it would be read as ${read})`}`;
        assert.equal(said.split("\n")[0], line, words.join(" "));
        assert.match(said, new RegExp(`\\n  hint: write --${x.key} in decimal digits${read === null ? "" : `, e\\.g\\. --${x.key} ${read}`}`), words.join(" "));
      }
    }
    // Plain decimals are taken, signed or with a fraction.
    for (const text of ["+4", "4.0", "04"]) assert.equal(refusal([...x.before, `--${x.key}`, text]), null, `${x.command} --${x.key} ${text}`);
  }
  const finetune = ["finetune", "stories260K", "--data", "a.txt", "--out", "o"];
  assert.equal(parse([...finetune, "--lr", "2e-4"])["lr"], 2e-4);
  assert.equal(parse([...finetune, "--weight-decay", "1E-2"])["weight-decay"], 0.01);
  assert.equal(parse([...finetune, "--tokens", "20M"])["tokens"], 20_000_000);
  assert.equal(parse([...finetune, "--tokens", "500k"])["tokens"], 500_000);
  assert.match(refusal([...finetune, "--tokens", "2e7"])!, /^--tokens 2e7 is not a decimal number \(it would be read as 20000000\)\n  hint: write --tokens in decimal digits, e\.g\. --tokens 20000000, or with k, M or G for thousands, millions, billions \(20M\)$/);
  assert.match(refusal([...finetune, "--lr", "0x1"])!, /^--lr 0x1 is not a decimal number[\s\S]*or with a power of ten \(1e-3\)$/);
  assert.match(refusal(["convert", "stories260K", "--rank", " 4"])!, /^--rank " 4" is not a decimal number/);
  // Not a number at all keeps its own words.
  assert.match(refusal(["convert", "stories260K", "--rank", "four"])!, /^--rank four is not a number\n  hint: give --rank a whole number of latent dims per KV head, e\.g\. --rank 64/);
  assert.match(refusal(["convert", "stories260K", "--rank", "4", "--rope-pairs", "x"])!, /^--rope-pairs x is not a number\n  hint: give --rope-pairs a whole number of rotary pairs kept per KV head/);
});

test("a free text starting with a dash is --prompt's or --system's value, not short flags", () => {
  assert.deepEqual(parse(["generate", "m", "--prompt", "- item one", "--prompt", "-dash", "--prompt", "-5"])["prompt"], ["- item one", "-dash", "-5"]);
  assert.equal(parse(["generate", "m", "--chat", "--system", "-be brief"])["system"], "-be brief");
  // A flag after a bare --prompt is still a flag: the prompt was left out.
  assert.match(refusal(["generate", "m", "--prompt", "--max-tokens", "2"]) ?? "", /--prompt was given without a value/);
});

test("a number flag past 2^53 is refused (it no longer counts exactly), and a spelling hint never suggests one", () => {
  assert.match(refusal(["generate", "stories260K", "--prompt", "hi", "--max-tokens", "100000000000000000000"])!, /^--max-tokens 100000000000000000000 is beyond 2\^53, past what a number counts exactly\n  hint: give --max-tokens a number of at most 9007199254740991/);
  const spelt = refusal(["generate", "stories260K", "--prompt", "hi", "--max-tokens", "1e20"])!;
  assert.match(spelt, /^--max-tokens 1e20 is not a decimal number/);
  assert.doesNotMatch(spelt, /e\.g\. --max-tokens 1000/);
  assert.equal(refusal(["generate", "stories260K", "--prompt", "hi", "--max-tokens", "9007199254740991"]), null);
});
