/**
 * Text as Python's text mode reads it (universal newlines: "\r\n" and a lone "\r" become "\n"),
 * which is how HF scripts and lm-eval read every corpus and task file: keeping the "\r" tokens
 * changes the token ids and the NLL (issue 16).
 */
import fs from "node:fs";

export function normalizeNewlines(text: string): string {
  return text.includes("\r") ? text.replace(/\r\n?/g, "\n") : text;
}

/** A UTF-8 text file with newlines normalized; file-system errors propagate for the caller to name. */
export function readTextFile(file: string): string {
  return normalizeNewlines(fs.readFileSync(file, "utf8"));
}
