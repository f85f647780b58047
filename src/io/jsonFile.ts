/**
 * Reading a JSON object back from a file this project or a model folder holds (config.json, a
 * checkpoint's state.json, a study's rows, an eval result): a damaged one (a copy cut short, a hand
 * edit, a `null`) is named with what to do, not a SyntaxError or a TypeError from deep inside.
 */
import fs from "node:fs";
import { ioError, MlaError, type MlaErrorCode } from "../errors.js";

export interface JsonFileRole {
  /** The error code a damaged file gets (BAD_CONFIG for config.json, BAD_CHECKPOINT for a checkpoint's state, …). */
  code: MlaErrorCode;
  /** What the file holds, for the message ("the study's settings"); omitted where the name says it. */
  what?: string;
  /** How to go on without it. */
  hint: string;
}

/** The JSON object in `file`; unreadable, not JSON, or not an object (null, an array, a number) is an error. */
export function readJsonObject(file: string, role: JsonFileRole): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    throw ioError("cannot read", file, e);
  }
  const named = role.what ? `${file} (${role.what})` : file;
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new MlaError(role.code, `${named}: not valid JSON (${(e as Error).message})`, role.hint);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new MlaError(role.code, `${named}: not a JSON object`, role.hint);
  return v as Record<string, unknown>;
}
