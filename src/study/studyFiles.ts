/**
 * Reading back what a study wrote into its folder (study-state.json, NAME.row.json). They are written
 * whole (temp file + rename), but a folder can still hold a damaged one (a copy cut short, a hand
 * edit): named with what to do, not a JSON SyntaxError from deep inside.
 */
import { MlaError } from "../errors.js";
import type { StudyRow } from "./study.js";
import { readJsonObject } from "../io/jsonFile.js";

/** The JSON object in `file` (`what` it holds, for the message); `hint` says how to go on without it. */
export function readStudyJson<T>(file: string, what: string, hint: string): T {
  return readJsonObject(file, { code: "BAD_ARGUMENT", what, hint }) as T;
}

/** A finished run's row (NAME.row.json), checked for the fields the table, claims and curves read. */
export function readStudyRow(file: string, name: string): StudyRow {
  const hint = `delete it to measure the trained run (${name}-trained) again, or pass --force to start the study over`;
  const row = readStudyJson<Partial<StudyRow>>(file, `the ${name} run's result`, hint);
  const numbers = ["params", "kvElemsPerToken", "kvBytesPerTokenBf16", "valNll", "trainTokensPerS", "decodeTokensPerS"] as const;
  // The curve: [step, validation NLL] pairs of numbers (an entry like [0, null] crashed the report).
  const curveOk = Array.isArray(row.curve) && row.curve.every((p: unknown) => Array.isArray(p) && p.length === 2 && p.every((v) => typeof v === "number" && Number.isFinite(v)));
  const bad = [...(typeof row.label === "string" ? [] : ["label"]), ...numbers.filter((k) => typeof row[k] !== "number"), ...(curveOk ? [] : ["curve (a list of [step, validation NLL] number pairs)"])];
  if (bad.length) throw new MlaError("BAD_ARGUMENT", `${file} (the ${name} run's result) lacks ${bad.join(", ")}`, hint);
  return row as StudyRow;
}
