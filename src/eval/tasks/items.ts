/**
 * Benchmark items as parsed from the task files (DESIGN.md, multiple-choice protocol). Parsers keep
 * option texts exactly as written (no trimming) and name the item when a file does not parse.
 */
import fs from "node:fs";
import Bunzip from "seek-bzip";
import { MlaError, ioError } from "../../errors.js";
import { decodeText } from "../../io/text.js";

export interface ChoiceItem {
  /** 0-based index in the file. */
  index: number;
  context: string;
  /** Continuations, each with its leading space. */
  choices: string[];
  gold: number;
}

const CORRUPT = "the task file is corrupt or in another format; copy it again";

function readFile(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw ioError("cannot read task file", file, e);
  }
}

/** The file as text, bzip2 decoded where named .bz2, newlines normalized like Python's text mode. */
function readText(file: string): string {
  const buf = readFile(file);
  if (!file.endsWith(".bz2")) return decodeText(buf, file, CORRUPT);
  let plain: Buffer;
  try {
    plain = Bunzip.decode(buf);
  } catch (e) {
    throw bad(file, null, `is not a complete bzip2 file (${(e as Error).message ?? e})`);
  }
  return decodeText(plain, file, CORRUPT, "bzip2");
}

function bad(file: string, item: number | null, what: string, hint = CORRUPT): MlaError {
  return new MlaError("BAD_TEXT", `${file}${item === null ? "" : ` item ${item}`}: ${what}`, hint);
}

/** A file that holds no items: scored, it would report an accuracy over n = 0. */
function noItems(file: string, expected: string): MlaError {
  return bad(file, null, `holds no items; expected ${expected}`, "the file is empty or cut short: copy it again, or pass --data-dir with the complete task files");
}

/** The text of a task file that holds something besides whitespace (`expected` describes its items). */
function readItemsText(file: string, expected: string): string {
  const text = readText(file);
  if (!text.trim()) throw noItems(file, expected);
  return text;
}

/** The items of a JSON array file, at least one (`expected` describes them). */
function readJsonArray(file: string, expected: string): unknown[] {
  const text = readItemsText(file, expected);
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw bad(file, null, `not valid JSON (${(e as Error).message})`);
  }
  if (!Array.isArray(raw)) throw bad(file, null, "not a JSON array of items");
  if (raw.length === 0) throw noItems(file, expected);
  return raw;
}

/**
 * ARC and PIQA in the LLM-Adapters instruction format: the question and the numbered options sit
 * inside `instruction`; `answer` is "answerN" / "solutionN" (1-based).
 */
export function parseInstructionChoices(file: string, kind: "answer" | "solution", limit?: number): ChoiceItem[] {
  const items = readJsonArray(file, `a JSON array of {"instruction", "answer"} objects`);
  const label = kind === "answer" ? "Answer" : "Solution";
  const head = `Please choose the correct ${kind} to the question: `;
  const sep = kind === "answer" ? " " : "\n\n";
  const out: ChoiceItem[] = [];
  for (let i = 0; i < items.length && (limit === undefined || out.length < limit); i++) {
    const it = items[i] as { instruction?: unknown; answer?: unknown };
    if (typeof it?.instruction !== "string" || typeof it.answer !== "string") throw bad(file, i, 'missing "instruction" or "answer" string');
    const text = it.instruction;
    if (!text.startsWith(head)) throw bad(file, i, `instruction does not start with "${head.trim()}"`);
    const first = text.indexOf(`\n\n${label}1: `);
    const end = text.lastIndexOf("\n\nAnswer format:");
    if (first < 0 || end < first) throw bad(file, i, `no "${label}1:" … "Answer format:" block in the instruction`);
    const question = text.slice(head.length, first);
    const block = text.slice(first + 2, end);
    const choices: string[] = [];
    let rest = block;
    for (let n = 1; ; n++) {
      const tag = `${label}${n}: `;
      if (!rest.startsWith(tag)) throw bad(file, i, `option ${n} is not where "${tag.trim()}" was expected`);
      rest = rest.slice(tag.length);
      const next = rest.indexOf(`${sep}${label}${n + 1}: `);
      if (next < 0) {
        choices.push(" " + rest);
        break;
      }
      choices.push(" " + rest.slice(0, next));
      rest = rest.slice(next + sep.length);
    }
    // An empty option scores as a lone space (far likelier than any answer), and one option is always right.
    const empty = choices.findIndex((c) => !c.trim());
    if (empty >= 0) throw bad(file, i, `option ${empty + 1} is empty`);
    if (choices.length < 2) throw bad(file, i, "has one option: nothing to choose between");
    const m = new RegExp(`^${kind}(\\d+)$`).exec(it.answer);
    const gold = m ? Number(m[1]) - 1 : -1;
    if (gold < 0 || gold >= choices.length) throw bad(file, i, `answer "${it.answer}" does not name one of ${choices.length} options`);
    out.push({ index: i, context: `Question: ${question}\nAnswer:`, choices, gold });
  }
  return out;
}

/** HellaSwag in llama.cpp's text format (bz2 or plain): 6 lines per item: context, gold (0-based), 4 endings. */
export function parseHellaswag(file: string, limit?: number): ChoiceItem[] {
  const lines = readItemsText(file, "6 lines per item (context, gold index 0–3, 4 endings)").split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  if (lines.length % 6 !== 0) throw bad(file, Math.floor(lines.length / 6), `has ${lines.length} lines, not a multiple of 6 (context, gold, 4 endings per item)`);
  const out: ChoiceItem[] = [];
  for (let i = 0; i < lines.length / 6 && (limit === undefined || out.length < limit); i++) {
    const [context, goldLine, ...endings] = lines.slice(i * 6, i * 6 + 6) as [string, string, ...string[]];
    const gold = Number(goldLine);
    if (!/^[0-3]$/.test(goldLine)) throw bad(file, i, `gold line is "${goldLine}", expected 0–3`);
    const empty = endings.findIndex((e) => !e.trim());
    if (empty >= 0) throw bad(file, i, `ending ${empty} is empty`);
    out.push({ index: i, context, choices: endings.map((e) => " " + e), gold });
  }
  return out;
}

export interface LambadaItem {
  index: number;
  context: string;
  /** " " + the last word. */
  target: string;
}

export function parseLambada(file: string, limit?: number): LambadaItem[] {
  const out: LambadaItem[] = [];
  const lines = readItemsText(file, 'one {"text": …} object per line').split("\n");
  for (let i = 0; i < lines.length && (limit === undefined || out.length < limit); i++) {
    if (!lines[i]!.trim()) continue;
    let row: unknown;
    try {
      row = JSON.parse(lines[i]!);
    } catch (e) {
      throw bad(file, i, `line ${i + 1} is not valid JSON (${(e as Error).message})`);
    }
    const text = (row as { text?: unknown })?.text;
    if (typeof text !== "string") throw bad(file, i, 'no string "text" field');
    const cut = text.lastIndexOf(" ");
    if (cut <= 0) throw bad(file, i, "the text has no space before its last word");
    if (!text.slice(cut).trim()) throw bad(file, i, "the text ends in a space: its last word, the target, is empty");
    out.push({ index: out.length, context: text.slice(0, cut), target: text.slice(cut) });
  }
  return out;
}
