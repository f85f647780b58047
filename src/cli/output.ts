/** How commands hand results to the user: JSON to a file or stdout, tables to stdout. */
import fs from "node:fs";
import path from "node:path";
import { ioError, MlaError } from "../errors.js";
import { writeFileAtomic } from "../io/atomicDir.js";
import { makeDirs } from "../io/makeDirs.js";
import { requireWritableAncestor } from "../io/diskRoom.js";
import { stripBom } from "../io/text.js";
import { isEarlierResult } from "../io/resultKinds.js";

/** The largest existing file `--json` replaces: an earlier result is small; a larger file is something else. */
const EARLIER_RESULT_BYTES = 64 << 20;
/** A model folder's own JSON files (the weights are not JSON, so refused anyway): a result written beside them is fine. */
export const MODEL_FILES = /^(config|generation_config|tokenizer|tokenizer_config|special_tokens_map|added_tokens|chat_template|mla_conversion|preprocessor_config)\.json$|\.index\.json$/;
/** The records a run resumes from, wherever they are (a result over one broke the run's --resume or re-run). */
export const RUN_RECORDS = /^(finetune|pipeline|study-state|study)\.json$/;

/**
 * Refuses a `--json FILE` that cannot be written (a folder, or under a file), or that would replace a
 * file that is not an earlier JSON result (`eval … --json model/model.safetensors` replaced another
 * model's weights; `--json notes.txt` a text), before the command's work. An empty file is replaced
 * (it was refused as "not JSON"), unless its name is a model's or a run's own record.
 */
export function checkJsonTarget(target: string | undefined, beforeFileCheck?: () => void): void {
  if (target === undefined || target === "" || target === "-") return;
  if (fs.existsSync(target) && fs.statSync(target).isDirectory()) throw new MlaError("BAD_ARGUMENT", `--json ${target} is a folder, not a file`, `--json takes the path of the file to write, e.g. --json ${path.join(target, "result.json")} (or - for stdout)`);
  beforeFileCheck?.();
  refuseOverForeignFile(target);
  // A folder the file cannot be written in failed only after the work: an evaluation lost, a conversion's model written and exit 1.
  requireWritableAncestor(
    target,
    `--json ${target}`,
    (e, dir) => ioError(`--json ${target}: cannot write in`, dir, e),
    (dir) => new MlaError("BAD_ARGUMENT", `--json ${target}: ${dir} is a file, not a folder`, "give a path whose folders are folders"),
  );
}

function refuseOverForeignFile(target: string): void {
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(target, { throwIfNoEntry: false });
  } catch {
    return; // under a file (ENOTDIR), unreadable: checkJsonTarget's folder walk, or the write, names it
  }
  if (!st?.isFile()) return;
  const refuse = (what: string) => new MlaError("EXISTS", `--json ${target} exists and ${what}: --json replaces only an earlier result`, "choose a new file name for --json, or move that file away first");
  if (MODEL_FILES.test(path.basename(target)) && fs.existsSync(path.join(path.dirname(path.resolve(target)), "config.json"))) throw refuse("is one of a model folder's own files");
  if (RUN_RECORDS.test(path.basename(target))) throw refuse("is the record a fine-tuning run, pipeline or study resumes from");
  if (path.basename(target) === "state.json" && path.basename(path.dirname(path.resolve(target))) === "checkpoint") throw refuse("is a training checkpoint's state");
  // An empty file holds nothing to lose (`touch result.json`, a result a shell redirection truncated): replaced.
  if (st.size === 0) return;
  if (st.size > EARLIER_RESULT_BYTES) throw refuse(`holds ${st.size} bytes, not a result's JSON`);
  let value: unknown;
  try {
    value = JSON.parse(stripBom(fs.readFileSync(target, "utf8"))); // a result an editor saved with a BOM
  } catch {
    throw refuse("is not JSON");
  }
  // Any JSON is not enough: package.json, tsconfig.json, a task's data or a vocabulary parse too.
  if (!isEarlierResult(value)) throw refuse("is JSON, but not a result this tool wrote (eval, inspect, convert, export, finetune or synth)");
}

export { isEarlierResult };

/** `--json` with no value or `--json -` prints to stdout; `--json FILE` writes FILE atomically. */
export function emitJson(target: string | undefined, value: unknown): void {
  const text = JSON.stringify(value, null, 2) + "\n";
  if (target === undefined) return;
  checkJsonTarget(target);
  if (target === "" || target === "-") process.stdout.write(text);
  else {
    makeDirs(path.dirname(path.resolve(target)), "the --json file's folder");
    writeFileAtomic(target, text);
  }
}

/**
 * Where a command's human summary lines go: stdout, unless `--json` (no value, or -) prints the JSON there,
 * which must then be the only thing on stdout (`… --json | jq` parses it).
 */
export function summaryWriter(json: string | undefined): (line: string) => void {
  const to = json === "" || json === "-" ? process.stderr : process.stdout;
  return (line) => void to.write(line);
}

export function printTable(rows: [string, unknown][]): void {
  const w = Math.max(...rows.map(([k]) => k.length));
  for (const [k, v] of rows) process.stdout.write(`${k.padEnd(w)}  ${typeof v === "object" ? JSON.stringify(v) : String(v)}\n`);
}
