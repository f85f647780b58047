/**
 * The eval results a report compares, checked field by field before anything is drawn: a JSON file
 * edited by hand, from another tool or an older version (or an object a script built) with a string
 * where a number goes crashed the report ("x.toFixed is not a function"), and one without `dir` or
 * `config_hash` did too, while a missing `tokens` printed "undefined tokens". Each field the report
 * reads must be absent or of its type; absent optional fields show as "–". `null` counts as absent,
 * since JSON writes an infinite perplexity (a task's ppl past 1e308) as null.
 */
import fs from "node:fs";
import { MlaError, ioError } from "../../errors.js";
import type { EvalResult } from "../evaluate.js";
import { decodeText } from "../../io/text.js";
import { resultKindOf } from "../../io/resultKinds.js";

const HINT = "pass JSON files written by `mha2mla eval --json FILE`";

/** What a JSON file that is not an eval result is, where its keys tell (the hint then names it). */
function whatItIs(r: unknown): string {
  const hint = resultKindOf(r)?.hint;
  return hint ? ` (${hint})` : "";
}

type FieldKind = "string" | "number" | "object";
const REQUIRED: Record<string, FieldKind> = { model: "string", attention: "string", backend: "string", kv_elems_per_token: "number", seconds: "number" };
const OPTIONAL: Record<string, FieldKind> = {
  label: "string",
  dir: "string",
  config_hash: "string",
  text: "string",
  text_hash: "string",
  text_bytes: "number",
  bits_per_byte: "number",
  tokenizer: "object",
  conversion: "object",
  kv_cache: "object",
  tasks: "object",
  params: "number",
  kv_bytes_per_token: "number",
  ctx: "number",
  tokens: "number",
  windows: "number",
  nll: "number",
  ppl: "number",
};
const TASK_FIELDS = ["n", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "ppl"] as const;

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === "object" && !Array.isArray(v);

/** What `v` is, for a message: `a string ("0.5")`, `an array`, `null`. */
function described(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "string") return `a string (${JSON.stringify(v.length > 40 ? v.slice(0, 40) + "…" : v)})`;
  return `${typeof v === "object" ? "an" : "a"} ${typeof v}`;
}

function fieldError(where: string, field: string, v: unknown, expected: string): MlaError {
  return new MlaError("BAD_ARGUMENT", `${where}: "${field}" is ${described(v)}, not ${expected}`, "pass eval results as `mha2mla eval --json FILE` writes them (was this one edited, or written by another tool?)");
}

/** Refuses a field the report reads that is present (not null) and not of `kind`. An in-memory Infinity (a perplexity that overflowed) is a number. */
function checkField(where: string, field: string, v: unknown, kind: FieldKind): void {
  if (v === undefined || v === null) return;
  if (kind === "object" ? !isObject(v) : typeof v !== kind) throw fieldError(where, field, v, kind === "object" ? "an object" : `a ${kind}`);
}

/**
 * Refuses `r` (named `where`: its file, or `runs[i]` from a script) unless it has the fields every
 * report needs (`model`, `attention`, `backend`, `kv_elems_per_token`, `seconds`) and each field the
 * report reads is absent or of its type. Returns it with `label` defaulted to `model`.
 */
export function checkEvalResult(r: unknown, where: string): EvalResult {
  // No run's fields (another JSON, inspect's): one message naming each one missing.
  const absent = Object.keys(REQUIRED).filter((k) => !isObject(r) || r[k] === undefined || r[k] === null);
  if (!isObject(r) || absent.length) throw new MlaError("BAD_ARGUMENT", `${where}: not an eval result (no ${absent.map((k) => `"${k}"`).join(", ")})`, HINT + whatItIs(r));
  for (const [k, kind] of Object.entries(REQUIRED)) checkField(where, k, r[k], kind);
  for (const [k, kind] of Object.entries(OPTIONAL)) checkField(where, k, r[k], kind);
  if (isObject(r["kv_cache"])) {
    checkField(where, "kv_cache.dtype", r["kv_cache"]["dtype"], "string");
    checkField(where, "kv_cache.bytes_per_token", r["kv_cache"]["bytes_per_token"], "number");
  }
  if (isObject(r["tokenizer"])) {
    // Both or neither: a report compares tokenizers by the two.
    for (const [f, kind] of [["hash", "string"], ["vocab_size", "number"]] as const) {
      const v = r["tokenizer"][f];
      if (v === undefined || v === null) throw new MlaError("BAD_ARGUMENT", `${where}: "tokenizer" has no "${f}"`, "pass eval results as `mha2mla eval --json FILE` writes them (was this one edited, or written by another tool?)");
      checkField(where, `tokenizer.${f}`, v, kind);
    }
  }
  if (isObject(r["tasks"]))
    for (const [task, score] of Object.entries(r["tasks"])) {
      if (!isObject(score)) throw fieldError(where, `tasks.${task}`, score, "an object of scores");
      for (const f of TASK_FIELDS) checkField(where, `tasks.${task}.${f}`, score[f], "number");
      checkField(where, `tasks.${task}.items_hash`, score["items_hash"], "string");
    }
  const run = r as unknown as EvalResult;
  return typeof run.label === "string" ? run : { ...run, label: run.model };
}

/** Whether text's first line is a JSON object with a step: a training log's first record. */
function looksLikeTrainLog(text: string): boolean {
  try {
    const first = JSON.parse(text.split("\n", 1)[0]!) as unknown;
    return isObject(first) && "step" in first;
  } catch {
    return false;
  }
}

/** An eval JSON file, checked (checkEvalResult). */
export function readEvalJson(file: string): EvalResult {
  let raw: unknown;
  let text = "";
  try {
    // Binary data (a .safetensors or .gz given here) is refused by its first bytes: its parse error quoted them raw into the terminal.
    text = decodeText(fs.readFileSync(file), file, HINT); // a BOM from an editor dropped
    raw = JSON.parse(text);
  } catch (e) {
    // A folder (a run's output, say) read as "EISDIR: illegal operation on a directory".
    if ((e as NodeJS.ErrnoException).code === "EISDIR") throw new MlaError("BAD_ARGUMENT", `${file} is a folder, not an eval JSON file`, HINT);
    if ((e as NodeJS.ErrnoException).code) throw ioError("cannot read", file, e);
    throw new MlaError("BAD_ARGUMENT", `${file}: not valid JSON (${(e as Error).message})`, looksLikeTrainLog(text) ? "this is a fine-tuning run's training log (JSON Lines): pass it with --train-log" : HINT);
  }
  return checkEvalResult(raw, file);
}
